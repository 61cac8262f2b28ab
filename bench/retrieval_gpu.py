"""GPU retrieval benchmark: the project's GPU search path against raw faiss-gpu and plain torch.

Writes reports/retrieval_gpu.json (and prints a table). The issue's reference on one H100:
1M x 128 clustered unit vectors, 10,000 queries, k=100: faiss Flat ~70k QPS, torch fp32 matmul+topk
53k, bf16 108k, IVF4096,Flat nprobe 32 ~405k QPS at recall@100 0.993.

Measured side by side in one process, medians of --repeats searches of all queries:
- exact search: project ``Searcher`` on a Flat index vs raw ``index.search`` on the same GPU index,
  torch fp32 and bf16 matmul + topk over the same vectors;
- IVF{nlist},Flat at --nprobe: project vs raw on the same GPU index, recall@10/@100 against exact.

    python -m bench.retrieval_gpu                          # on a GPU machine (see ../shared/gpu/README.md)
    python -m bench.retrieval_gpu --allow-cpu --vectors 50000 --queries 1000 --nlist 256   # smoke run on CPU
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch

from retrieval.config import GpuConfig, IndexConfig, SearchConfig
from retrieval.index import build_index
from retrieval.search import Searcher
from retrieval.synthetic import iter_clustered_vectors, query_vectors
from retrieval.validation import recall_at_k

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def median_qps(search: Callable[[], object], num_queries: int, repeats: int, synchronize: Callable[[], None]) -> float:
    search()  # warm-up: kernels, allocations
    synchronize()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        search()
        synchronize()
        seconds.append(time.perf_counter() - started)
    return round(num_queries / float(np.median(seconds)), 1)


def torch_topk_qps(vectors: np.ndarray, queries: np.ndarray, k: int, dtype: torch.dtype, device: str,
                   repeats: int, chunk: int = 2048) -> float:
    """Exact inner-product top-k as plain torch: one matmul and topk per query chunk."""
    database = torch.from_numpy(vectors).to(device=device, dtype=dtype)
    query_tensor = torch.from_numpy(queries).to(device=device, dtype=dtype)

    def search() -> None:
        for start in range(0, len(query_tensor), chunk):
            torch.topk(query_tensor[start : start + chunk] @ database.T, k, dim=1)

    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return median_qps(search, len(queries), repeats, synchronize)


def project_vs_raw(searcher: Searcher, queries: np.ndarray, k: int, repeats: int) -> dict:
    raw_index = searcher.device_index
    project_ids, _ = searcher.search(queries, k)
    _, raw_ids = raw_index.search(queries, k)
    sync = faiss.synchronize_all_devices if searcher.on_gpu and hasattr(faiss, "synchronize_all_devices") else (lambda: None)
    raw_qps, project_qps = [], []
    for _ in range(3):  # alternate, so drift in clocks or load falls on both sides
        raw_qps.append(median_qps(lambda: raw_index.search(queries, k), len(queries), repeats, sync))
        project_qps.append(median_qps(lambda: searcher.search(queries, k), len(queries), repeats, sync))
    return {
        "on_gpu": searcher.on_gpu,
        "raw_qps": float(np.median(raw_qps)),
        "project_qps": float(np.median(project_qps)),
        "ratio": round(float(np.median(project_qps)) / float(np.median(raw_qps)), 4),
        "same_results": bool(np.array_equal(project_ids, raw_ids)),
        "project_ids": project_ids,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when faiss sees no GPU (smoke run)")
    parser.add_argument("--out", default=str(REPORTS / "retrieval_gpu.json"))
    args = parser.parse_args(argv)
    num_gpus = faiss.get_num_gpus()
    if num_gpus == 0 and not args.allow_cpu:
        parser.error("faiss reports no GPU: run on a GPU machine, or pass --allow-cpu for a smoke run")
    use_gpu = "always" if num_gpus else "never"
    device = "cuda" if torch.cuda.is_available() and num_gpus else "cpu"

    batches = list(iter_clustered_vectors(args.vectors, 128, seed=3))
    ids = np.concatenate([b[0] for b in batches])
    vectors = np.concatenate([b[1] for b in batches])
    queries = query_vectors(args.queries, 128, seed=3)
    print(f"{args.vectors:,} x 128, {args.queries:,} queries, k={args.k}, GPUs {num_gpus}, torch on {device}", flush=True)

    def searcher(spec: str, nprobe: int) -> Searcher:
        config = IndexConfig(factory_string=spec, metric="ip", search=SearchConfig(nprobe=nprobe),
                             gpu=GpuConfig(use_gpu=use_gpu))
        built = build_index(config, 128, [(ids, vectors)], vectors[: min(len(vectors), 256 * args.nlist)],
                            num_vectors=len(ids))
        return Searcher(built, config)

    exact = project_vs_raw(searcher("Flat", 1), queries, args.k, args.repeats)
    truth = exact.pop("project_ids")
    ivf_spec = f"IVF{args.nlist},Flat"
    ivf = project_vs_raw(searcher(ivf_spec, args.nprobe), queries, args.k, args.repeats)
    found = ivf.pop("project_ids")
    ivf.update({"recall@10": round(recall_at_k(found, truth, 10), 4),
                "recall@100": round(recall_at_k(found, truth, 100), 4)})
    report = {
        "environment": {"faiss": faiss.__version__, "torch": torch.__version__, "num_gpus": num_gpus,
                        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"},
        "vectors": args.vectors, "queries": args.queries, "k": args.k,
        "exact_flat": exact,
        "torch_exact_qps": {
            "fp32": torch_topk_qps(vectors, queries, args.k, torch.float32, device, args.repeats),
            "bf16": torch_topk_qps(vectors, queries, args.k, torch.bfloat16, device, args.repeats),
        },
        ivf_spec: {"nprobe": args.nprobe, **ivf},
    }
    print(json.dumps(report, indent=1), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
