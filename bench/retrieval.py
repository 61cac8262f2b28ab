"""Retrieval benchmark: the project's search path against raw faiss, and recall/QPS curves.

Reads:  ../shared/data/bigann10k (base[100:] as the database, heldout_db9900_groundtruth.ivecs as truth)
Writes: reports/retrieval.json, reports/retrieval_recall_qps.png, reports/retrieval.md

For each dataset (bigann10k, L2; synthetic clustered 128-d unit vectors, inner product) and each index
type (Flat, IVF-Flat, IVF-PQ with refinement, HNSW) it measures, in one process and on the same index
object with the same parameters:
- throughput of ``Searcher.search`` and of raw ``index.search``, interleaved round by round, medians
  of several rounds; the ratio project / raw (target >= 0.95);
- recall@10/@100 against exact search and QPS across nprobe / efSearch values.
``--big`` builds a 10M x 128 IVF-PQ index from vectors generated in batches and reports peak RSS
(``--big-vectors`` sets another size); its result is merged into reports/retrieval.json.

    .venv/bin/python bench/retrieval.py [--synthetic-vectors 200000] [--threads 2]
    .venv/bin/python bench/retrieval.py --big
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

# This script is named like the package it measures: keep its own directory off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
# The cores are shared: idle OpenMP threads that spin steal them from the working ones (3x slower
# PQ training measured at load 18 on 2 cores). Must be set before faiss loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from retrieval.config import IndexConfig, SearchConfig  # noqa: E402
from retrieval.evaluation import plot_recall_qps, sweep_index  # noqa: E402
from retrieval.index import build_index, sample_vectors  # noqa: E402
from retrieval.search import Searcher  # noqa: E402
from retrieval.synthetic import iter_clustered_vectors, query_vectors  # noqa: E402
from retrieval.validation import exact_search, recall_at_k  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BIGANN = REPO.parent / "shared" / "data" / "bigann10k"
REPORTS = REPO / "reports"
K = 100


def read_vecs(path: Path, dtype: type) -> np.ndarray:
    """.bvecs / .ivecs: per vector an int32 dimension, then the components (uint8 or int32)."""
    raw = np.fromfile(path, dtype=np.uint8)
    dim = int(raw[:4].view(np.int32)[0])
    width = np.dtype(dtype).itemsize
    rows = raw.reshape(-1, 4 + dim * width)
    return rows[:, 4:].copy().view(dtype).reshape(len(rows), dim)


def bigann_dataset() -> dict:
    base = read_vecs(BIGANN / "bigann10k_base.bvecs", np.uint8).astype(np.float32)
    queries = read_vecs(BIGANN / "bigann10k_query.bvecs", np.uint8).astype(np.float32)
    truth_positions = read_vecs(BIGANN / "heldout_db9900_groundtruth.ivecs", np.int32).astype(np.int64)
    ids = np.arange(100, len(base), dtype=np.int64)
    return {
        "name": "bigann10k", "metric": "l2", "ids": ids, "vectors": base[100:], "queries": queries,
        "truth": ids[truth_positions], "specs": {
            "Flat": ("Flat", {}),
            "IVF-Flat": ("IVF128,Flat", {"nprobe": 8}),
            "IVF-PQ+refine": ("IVF128,PQ32,RFlat", {"nprobe": 8, "k_factor": 4}),
            "HNSW": ("HNSW32", {"ef_search": 128}),
        },
    }


def synthetic_dataset(num_vectors: int, num_queries: int) -> dict:
    batches = list(iter_clustered_vectors(num_vectors, 128, seed=42))
    ids = np.concatenate([b[0] for b in batches])
    vectors = np.concatenate([b[1] for b in batches])
    queries = query_vectors(num_queries, 128, seed=42)
    truth, _ = exact_search(batches, queries, K, "ip")
    return {
        "name": f"synthetic{num_vectors // 1000}k", "metric": "ip", "ids": ids, "vectors": vectors,
        "queries": queries, "truth": truth, "specs": {
            "Flat": ("Flat", {}),
            "IVF-Flat": ("IVF{nlist},Flat", {"nprobe": 16}),
            "IVF-PQ+refine": ("IVF{nlist},PQ32,RFlat", {"nprobe": 16, "k_factor": 4}),
            "HNSW": ("HNSW32", {"ef_search": 128}),
        },
    }


def compare_with_raw(built, config: IndexConfig, queries: np.ndarray, rounds: int, min_round_s: float) -> dict:
    """Raw index.search against Searcher.search on the same index object and parameters.

    Each round alternates single searches (raw, project, project, raw, ...) and sums each side's time,
    so load from other processes on a shared machine falls on both sides alike; the reported ratio is
    the median over rounds of raw time / project time (= project QPS / raw QPS).
    """
    searcher = Searcher(built, config)
    index = built.index  # its search parameters were just set by the Searcher
    _, raw_ids = index.search(queries, K)
    project_ids, _ = searcher.search(queries, K)
    start = time.perf_counter()
    index.search(queries, K)
    pairs = max(2, int(min_round_s / 2 / max(time.perf_counter() - start, 1e-6)))

    def raw() -> None:
        index.search(queries, K)

    def project() -> None:
        searcher.search(queries, K)

    ratios, raw_total, project_total = [], 0.0, 0.0
    for _ in range(rounds):
        seconds = {raw: 0.0, project: 0.0}
        for pair in range(pairs):
            for call in (raw, project) if pair % 2 == 0 else (project, raw):
                start = time.perf_counter()
                call()
                seconds[call] += time.perf_counter() - start
        ratios.append(seconds[raw] / seconds[project])
        raw_total += seconds[raw]
        project_total += seconds[project]
    searches = rounds * pairs * len(queries)
    return {
        "raw_qps": round(searches / raw_total, 1),
        "project_qps": round(searches / project_total, 1),
        "ratio": round(float(np.median(ratios)), 4),
        "ratio_min_round": round(float(np.min(ratios)), 4),
        "rounds": rounds,
        "searches_per_round_per_side": pairs,
        "same_results": bool(np.array_equal(raw_ids, project_ids)),
    }


def bench_dataset(data: dict, rounds: int, min_round_s: float, sweep_repeats: int) -> dict:
    print(f"== {data['name']}: {len(data['ids']):,} x {data['vectors'].shape[1]} ({data['metric']}), "
          f"{len(data['queries'])} queries, k={K}", flush=True)
    results = {"num_vectors": len(data["ids"]), "dim": int(data["vectors"].shape[1]), "metric": data["metric"],
               "num_queries": len(data["queries"]), "k": K, "rounds": rounds, "indexes": {}}
    batches = [(data["ids"][i : i + 50_000], data["vectors"][i : i + 50_000]) for i in range(0, len(data["ids"]), 50_000)]
    _, train = sample_vectors(batches, 50_000, seed=0)
    for label, (spec, search) in data["specs"].items():
        config = IndexConfig(factory_string=spec, metric=data["metric"], search=SearchConfig(**search))
        started = time.perf_counter()
        built = build_index(config, results["dim"], batches, train, num_vectors=len(data["ids"]))
        build_s = time.perf_counter() - started
        comparison = compare_with_raw(built, config, data["queries"], rounds, min_round_s)
        found, _ = Searcher(built, config).search(data["queries"], K)
        sweep = sweep_index(built, config, data["queries"], data["truth"], repeats=sweep_repeats)
        entry = {
            "factory_string": built.factory_string, "build_s": round(build_s, 2), "search_params": search,
            "recall@10": round(recall_at_k(found, data["truth"], 10), 4),
            "recall@100": round(recall_at_k(found, data["truth"], 100), 4),
            "vs_raw_faiss": comparison, "sweep": sweep,
        }
        results["indexes"][label] = entry
        print(f"  {label:<14} {built.factory_string:<22} build {build_s:6.1f} s  recall@100 {entry['recall@100']:.3f}  "
              f"raw {comparison['raw_qps']:>9,.0f} QPS  project {comparison['project_qps']:>9,.0f} QPS  "
              f"ratio {comparison['ratio']:.3f}", flush=True)
    return results


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_big(num_vectors: int, spec: str, nprobe: int, train_size: int) -> dict:
    """Build an IVF-PQ index over num_vectors generated 128-d vectors in batches; report memory and search."""
    print(f"== big: {num_vectors:,} x 128, {spec}", flush=True)
    batch_rows = 500_000
    rss_start = rss_mb()
    config = IndexConfig(factory_string=spec, metric="ip", train_sample_size=train_size,
                         search=SearchConfig(nprobe=nprobe))
    started = time.perf_counter()
    # The training sample comes from the first batches: the generator is i.i.d., so it is uniform.
    _, train = sample_vectors(iter_clustered_vectors(train_size, 128, batch_rows=100_000, seed=7), train_size)
    checkpoints = []

    def batches():
        for ids, vectors in iter_clustered_vectors(num_vectors, 128, batch_rows=batch_rows, seed=7):
            yield ids, vectors
            checkpoints.append({"vectors": int(ids[-1]) + 1, "rss_mb": round(rss_mb(), 1),
                                "s": round(time.perf_counter() - started, 1)})

    built = build_index(config, 128, batches(), train, num_vectors=num_vectors)
    build_s = time.perf_counter() - started
    rss_after_build = rss_mb()
    queries = query_vectors(1000, 128, seed=7)
    searcher = Searcher(built, config)
    searcher.search(queries[:10], K)
    start = time.perf_counter()
    found, _ = searcher.search(queries, K)
    qps = len(queries) / (time.perf_counter() - start)
    truth, _ = exact_search(iter_clustered_vectors(num_vectors, 128, batch_rows=batch_rows, seed=7),
                            queries[:100], K, "ip")
    # PQ32 codes alone cap recall; a wider probe shows what the same 10M index gives for more search time.
    nprobe_sweep = sweep_index(built, config, queries[:100], truth, values=[16, 64, 256], repeats=1)["points"]
    slope = None
    if len(checkpoints) >= 4:
        xs = np.array([c["vectors"] for c in checkpoints[1:]], dtype=np.float64)
        ys = np.array([c["rss_mb"] for c in checkpoints[1:]])
        slope = round(float(np.polyfit(xs, ys, 1)[0]) * 1024 * 1024, 1)
    result = {
        "num_vectors": num_vectors, "dim": 128, "factory_string": built.factory_string, "nprobe": nprobe,
        "train_size": train_size,
        "build_s": round(build_s, 1), "train_s": round(built.train_s, 1), "add_s": round(built.add_s, 1),
        "search_qps_1000_queries_k100": round(qps, 1),
        "recall@10": round(recall_at_k(found[:100], truth, 10), 4),
        "recall@100": round(recall_at_k(found[:100], truth, 100), 4),
        "rss_start_mb": round(rss_start, 1), "rss_after_build_mb": round(rss_after_build, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "index_bytes_per_vector_measured": slope, "nprobe_sweep_100_queries": nprobe_sweep, "checkpoints": checkpoints[:: max(1, len(checkpoints) // 10)],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "checkpoints"}), flush=True)
    return result


def write_markdown(report: dict, path: Path) -> None:
    lines = [
        "| dataset | index | spec | params | recall@10 | recall@100 | project QPS | raw faiss QPS | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, results in report["datasets"].items():
        for label, entry in results["indexes"].items():
            cmp = entry["vs_raw_faiss"]
            params = ", ".join(f"{k}={v}" for k, v in entry["search_params"].items()) or "-"
            lines.append(
                f"| {dataset} | {label} | `{entry['factory_string']}` | {params} | {entry['recall@10']:.3f} | "
                f"{entry['recall@100']:.3f} | {cmp['project_qps']:,.0f} | {cmp['raw_qps']:,.0f} | {cmp['ratio']:.3f} |"
            )
    lines += ["", "Recall / QPS across search parameters (project path):", "",
              "| dataset | index | parameter | value | recall@10 | recall@100 | QPS |", "|---|---|---|---|---|---|---|"]
    for dataset, results in report["datasets"].items():
        for label, entry in results["indexes"].items():
            sweep = entry["sweep"]
            for point in sweep["points"]:
                lines.append(f"| {dataset} | {label} | {sweep['parameter'] or '-'} | {point['value']} | "
                             f"{point['recall@10']:.3f} | {point['recall@100']:.3f} | {point['qps']:,.0f} |")
    for big in report.get("big", {}).values():
        lines += ["", f"Large build ({big['num_vectors']:,} x 128, `{big['factory_string']}`, nprobe {big['nprobe']}): "
                  f"built in {big['build_s']:.0f} s, peak RSS {big['peak_rss_mb']:,.0f} MB, "
                  f"{big['search_qps_1000_queries_k100']:,.0f} QPS at recall@100 {big['recall@100']:.3f} "
                  f"(recall@10 {big['recall@10']:.3f}). Resident memory after the build: "
                  f"{big['rss_after_build_mb']:,.0f} MB; it grew by {big['index_bytes_per_vector_measured']} bytes per "
                  "added vector (32 B of PQ code, 8 B of id, 128 B of SQ8 refinement code where used, list "
                  "over-allocation). "
                  f"Reproduce: `.venv/bin/python -m bench.retrieval --big --big-vectors {big['num_vectors']} "
                  f"--big-spec '{big['factory_string']}' --big-train {big['train_size']}`.", ""]
        if big.get("nprobe_sweep_100_queries"):
            lines += ["| nprobe (10M index) | recall@10 | recall@100 | QPS (100 queries) |", "|---:|---:|---:|---:|"]
            lines += [f"| {p['value']} | {p['recall@10']:.3f} | {p['recall@100']:.3f} | {p['qps']:,.0f} |"
                      for p in big["nprobe_sweep_100_queries"]]
    env = report["environment"]
    lines += ["", f"Machine: {env['cpu_count']} CPU cores ({env['omp_threads']} OpenMP threads), faiss {env['faiss']}, "
              f"k={K}; ratio = median over {next(iter(report['datasets'].values()))['rounds']} interleaved rounds of raw time / project time, on the same "
              "index object and parameters (identical results checked). On a machine shared with other jobs the "
              "per-round ratios scatter widely, so read differences of a few percent as noise. "
              "Reproduce: `.venv/bin/python -m bench.retrieval`."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic-vectors", type=int, default=100_000)
    parser.add_argument("--synthetic-queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved raw/project rounds per index")
    parser.add_argument("--min-round-s", type=float, default=0.4, help="least seconds of searching per round")
    parser.add_argument("--big", action="store_true", help="only the large build (merged into the JSON)")
    parser.add_argument("--big-vectors", type=int, default=10_000_000)
    parser.add_argument("--big-spec", default="IVF4096_HNSW32,PQ32")
    parser.add_argument("--big-train", type=int, default=200_000, help="training sample of the large build")
    parser.add_argument("--out", default=str(REPORTS))
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "retrieval.json"
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    report["environment"] = {
        "cpu_count": os.cpu_count(), "omp_threads": args.threads, "faiss": faiss.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
    }
    if args.big:
        # One entry per spec, so a codes-only and a refined build can be reported side by side.
        big = report.get("big") if isinstance(report.get("big"), dict) and "num_vectors" not in report["big"] else {}
        big[args.big_spec] = bench_big(args.big_vectors, args.big_spec, 16, args.big_train)
        report["big"] = big
    else:
        report["datasets"] = {}
        curves = {}
        for data in (bigann_dataset(), synthetic_dataset(args.synthetic_vectors, args.synthetic_queries)):
            results = bench_dataset(data, args.rounds, args.min_round_s, sweep_repeats=7 if data["name"] == "bigann10k" else 3)
            report["datasets"][data["name"]] = results
            curves.update({f"{data['name']} {label}": e["sweep"] for label, e in results["indexes"].items()})
        plot_recall_qps(curves, str(out / "retrieval_recall_qps.png"),
                        f"recall@100 vs QPS, k={K}, {args.threads} threads")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    if "datasets" in report:
        write_markdown(report, out / "retrieval.md")
    print(f"wrote {json_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
