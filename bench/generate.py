"""Rows/s of `nearline generate` at several sizes, to show how its cost grows.

One Spark session is shared by all sizes (JVM start-up is reported once, not per
size); each size runs --repeats times and the median is kept.

    python -m bench.generate [--sizes 1000 10000 50000] [--repeats 3]

Writes reports/generate.json and reports/generate.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from jobs.generate_dataset import run
from jobs.spark import build_spark_session
from nearline.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", default="reports")
    args = parser.parse_args()

    started = time.perf_counter()
    base = load_config(None, [f"spark.master={args.master}"])
    spark = build_spark_session(base.spark, expected_rows=max(args.sizes) * 100, app_suffix="bench-generate")
    startup_s = time.perf_counter() - started
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for num_users in args.sizes:
            config = load_config(None, [f"spark.master={args.master}", f"generate.num_users={num_users}",
                                        f"generate.users_per_block={max(1000, num_users // 8)}",
                                        f"data.path={tmp}/data"])
            timings, rows = [], 0
            for repeat in range(args.repeats):
                t0 = time.perf_counter()
                counts = run(spark, config)
                timings.append(time.perf_counter() - t0)
                rows = sum(counts.values())
                print(f"{num_users:>9,} users  run {repeat + 1}/{args.repeats}: {rows:>11,} rows in {timings[-1]:6.1f} s")
            median_s = statistics.median(timings)
            results.append({"num_users": num_users, "rows": rows, "median_s": round(median_s, 2),
                            "rows_per_s": round(rows / median_s), "runs_s": [round(t, 2) for t in timings]})
    spark.stop()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"spark_master": args.master, "spark_startup_s": round(startup_s, 2), "sizes": results}
    (out / "generate.json").write_text(json.dumps(report, indent=2))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog([r["rows"] for r in results], [r["median_s"] for r in results], "o-", label="nearline generate")
    ax.set_xlabel("rows written")
    ax.set_ylabel("median wall time (s)")
    ax.set_title(f"generate on {args.master}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "generate.png", dpi=120)
    print(f"\n{'users':>10} {'rows':>12} {'median s':>9} {'rows/s':>10}")
    for r in results:
        print(f"{r['num_users']:>10,} {r['rows']:>12,} {r['median_s']:>9.1f} {r['rows_per_s']:>10,}")
    print(f"Spark start-up {startup_s:.1f} s; wrote {out / 'generate.json'} and {out / 'generate.png'}")


if __name__ == "__main__":
    main()
