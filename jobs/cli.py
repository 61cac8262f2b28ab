"""The `nearline` command line: one entry point, one config system, one store.

Every command takes `--config FILE` (default: conf/local.yaml when present) and
any number of `--set section.key=value` overrides, before or after the command.
Command modules register themselves through `register(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from jobs.config import ConfigError, NearlineConfig, load_config

COMMAND_MODULES = [
    "jobs.generate_dataset",
    "jobs.import_data",
    "jobs.validate_dataset",
    "jobs.submit",
    "jobs.build_ranking_features",
    "jobs.train_ranker",
    "jobs.train_ranker_distributed",
    "jobs.export",
    "jobs.refresh",
    "jobs.schedule",
    "jobs.eval_candidates",
    "jobs.serve_app",
    "jobs.train_content_model",
    "jobs.build_index",
]

DEFAULT_CONFIG = "conf/local.yaml"


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help=f"YAML config (default: {DEFAULT_CONFIG} if present)")
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. --set generate.num_users=5000 (repeatable)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nearline", description=__doc__, parents=[_common_options()],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def resolve_config(config_path: str | None, overrides: list[str]) -> NearlineConfig:
    return load_config(default_config_path(config_path), overrides)


def default_config_path(config_path: str | None) -> str | None:
    if config_path is None and Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    return config_path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common_args, rest = _common_options().parse_known_args(argv)
    args = build_parser().parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.config_path = default_config_path(common_args.config)
        args.config_overrides = common_args.overrides
        config = resolve_config(common_args.config, common_args.overrides)
        return int(args.handler(args, config) or 0)
    except (ConfigError, ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        # A process boundary: one clear line for the operator; the traceback adds nothing for bad input.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
