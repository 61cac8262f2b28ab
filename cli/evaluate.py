"""`nearline eval candidates|recommend|split`: offline evaluation."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cli.main import positive_int
from evaluation import candidates, recommend
from evaluation.recommend import DEFAULT_KS, fit_recommend_blend, render, with_fusion_file, write_time_split
from nearline.config import NearlineConfig


def _handle_recommend(args: argparse.Namespace, config: NearlineConfig) -> int:
    config = with_fusion_file(config, args.fusion)
    ks = [int(k) for k in args.ks.split(",")]
    report, hit_rates = recommend.evaluate(
        config, args.holdout_data, ks, args.num_candidates, args.max_users, args.period_hours
    )
    report = {"dataset": args.name, **report}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(render(report))
    print(f"wrote {out} ({report['seconds']:.0f} s)")
    if args.fit_fusion:
        blend, rows = fit_recommend_blend(
            config, args.holdout_data, hit_rates, args.num_candidates, args.max_users, args.period_hours
        )
        fitted = {
            "fusion_hit_rates": hit_rates,
            "recommend_blend": blend.to_config().model_dump(),
            "fitted_on": {"store": config.store.root, "holdout_data": args.holdout_data, **report["period"],
                          "users": report["users"], "blend_rows": rows, "versions": report["versions"]},
        }
        Path(args.fit_fusion).parent.mkdir(parents=True, exist_ok=True)
        Path(args.fit_fusion).write_text(json.dumps(fitted, indent=2, default=str))
        print(
            f"wrote this period's hit rates and recommend blend ({rows['rows']:,} candidates, {rows['positives']:,} "
            f"engaged) to {args.fit_fusion} (serve.fusion_hit_rates, serve.recommend_blend)"
        )
    return 0


def _handle_split(args: argparse.Namespace, config: NearlineConfig) -> int:
    counts = write_time_split(args.data or config.data.path, args.until, args.out)
    print(", ".join(f"{name} {rows:,}" for name, rows in counts.items()) + f" -> {args.out}")
    return 0


def _add_recommend_commands(kinds: argparse._SubParsersAction) -> None:
    """`eval recommend` and `eval split`."""
    recommend_kind = kinds.add_parser("recommend", help="recommend (candidates -> rank -> top k) vs baselines on a later period")
    recommend_kind.add_argument("--holdout-data", required=True, help="a later snapshot of the dataset")
    recommend_kind.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="comma list of cut-offs")
    recommend_kind.add_argument("--num-candidates", type=positive_int, default=500, help="candidates ranked per user")
    recommend_kind.add_argument("--max-users", type=positive_int, default=2000)
    recommend_kind.add_argument("--period-hours", type=float, help="evaluate this long after the snapshot (default: all)")
    recommend_kind.add_argument("--fusion", help="a --fit-fusion file whose hit rates replace serve.fusion_hit_rates")
    recommend_kind.add_argument(
        "--fit-fusion", metavar="FILE", help="also fit and write this period's per-source hit rates and recommend blend"
    )
    recommend_kind.add_argument("--name", default="dataset", help="label stored in the report")
    recommend_kind.add_argument("--out", default="reports/recommend.json")
    recommend_kind.set_defaults(handler=_handle_recommend)
    split = kinds.add_parser("split", help="write the part of a dataset before a time (a training snapshot)")
    split.add_argument("--until", required=True, help="ISO-8601 time, UTC unless it has an offset")
    split.add_argument("--data", help="the dataset (default: data.path)")
    split.add_argument("--out", required=True)
    split.set_defaults(handler=_handle_split)


def _handle_candidates(args: argparse.Namespace, config: NearlineConfig) -> int:
    started = time.perf_counter()
    config = with_fusion_file(config, args.fusion)
    ks = [int(k) for k in args.ks.split(",")]
    report = {"dataset": args.name, **candidates.evaluate(config, args.holdout_data, ks, args.max_users, args.period_hours)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"candidate recall over {report['users']:,} users ({report['held_out_engagements']:,} held-out posts), "
          f"fusion: {report['fusion']}")
    print(f"{'source':<15}" + "".join(f"{f'recall@{k}':>11}{'eligible':>9}" for k in report["ks"]))
    for name, values in report["metrics"].items():
        print(f"{name:<15}" + "".join(
            f"{values[f'recall@{k}']:>11.4f}{values.get(f'eligible_recall@{k}', float('nan')):>9.4f}"
            for k in report["ks"]))
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval")
    kinds = parser.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    candidates_kind = kinds.add_parser("candidates", help="recall@K of candidate sources on a later snapshot")
    candidates_kind.add_argument("--ks", "--k", default=",".join(map(str, DEFAULT_KS)), help="comma list of cut-offs")
    candidates_kind.add_argument("--holdout-data", required=True, help="a later snapshot of the dataset")
    candidates_kind.add_argument("--max-users", type=positive_int, default=2000)
    candidates_kind.add_argument("--period-hours", type=float, help="evaluate this long after the snapshot (default: all)")
    candidates_kind.add_argument("--fusion", help="a `eval recommend --fit-fusion` file (replaces serve.fusion_hit_rates)")
    candidates_kind.add_argument("--name", default="dataset", help="label stored in the report")
    candidates_kind.add_argument("--out", default="reports/candidates.json")
    candidates_kind.set_defaults(handler=_handle_candidates)
    _add_recommend_commands(kinds)
