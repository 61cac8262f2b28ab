"""`nearline ranker train` and `nearline ranker-distributed`."""

from __future__ import annotations

import argparse

from cli.main import positive_int
from jobs.train_ranker import run
from jobs.train_ranker_distributed import distributed_trainer
from nearline.config import NearlineConfig


def _handle_train(args: argparse.Namespace, config: NearlineConfig) -> int:
    warm = args.warm_start_from or config.ranker.warm_start_from
    fraction = config.ranker.sample_fraction if args.sample_fraction is None else args.sample_fraction
    run(config, warm, fraction, publish=not args.no_publish)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_train(subparsers)
    _register_distributed(subparsers)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ranker")
    actions = parser.add_subparsers(dest="ranker_command", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train", help="read features (Spark), fit discretizer, train, calibrate, publish models/ranker"
    )
    train.add_argument(
        "--warm-start-from",
        default=None,
        metavar="latest|VERSION|none",
        help="parent checkpoint (default: ranker.warm_start_from)",
    )
    train.add_argument("--sample-fraction", type=float, default=None, help="fraction of training rows to use")
    train.add_argument(
        "--no-publish", action="store_true", help="stage the version without making it CURRENT"
    )
    train.set_defaults(handler=_handle_train)


def _handle_distributed(args: argparse.Namespace, config: NearlineConfig) -> int:
    warm = args.warm_start_from or config.ranker.warm_start_from
    fraction = config.ranker.sample_fraction if args.sample_fraction is None else args.sample_fraction
    run(config, warm, fraction, publish=not args.no_publish,
        trainer=distributed_trainer(args.num_workers, args.local_mode))
    return 0


def _register_distributed(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ranker-distributed")
    parser.add_argument("--num-workers", type=positive_int, default=2, help="training processes (default 2)")
    parser.add_argument("--local-mode", action="store_true",
                        help="run the workers on the driver (torchrun) instead of as Spark barrier tasks")
    parser.add_argument("--warm-start-from", default=None, metavar="latest|VERSION|none",
                        help="parent checkpoint (default: ranker.warm_start_from)")
    parser.add_argument("--sample-fraction", type=float, default=None, help="fraction of training rows to use")
    parser.add_argument("--no-publish", action="store_true", help="stage the version without making it CURRENT")
    parser.set_defaults(handler=_handle_distributed)
