"""Writing Spark outputs so that readers never see half of them.

Spark's local writers name part files with a per-job UUID and leave .crc side
files; renaming parts by their partition index makes the same input produce the
same bytes under the same names, which is what lets `generate` promise
"same seed, same bytes" and lets refresh compare outputs by checksum.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

if TYPE_CHECKING:  # refresh imports this module before it starts Spark
    from pyspark.sql import DataFrame

_PART = re.compile(r"^part-(\d+)-.*\.parquet$")


def write_parquet_deterministic(frame: DataFrame, path: str) -> int:
    """Write frame as Parquet at a local path with part files named by partition; return the row count."""
    frame.write.mode("overwrite").parquet(path)
    directory = Path(path)
    for entry in directory.iterdir():
        match = _PART.match(entry.name)
        if match:
            entry.rename(directory / f"part-{int(match.group(1)):05d}.parquet")
        elif entry.name.endswith(".crc"):
            entry.unlink()
    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(directory.glob("part-*.parquet")))


def write_dataset(tables: dict[str, DataFrame], out: str, progress: bool = False) -> dict[str, int]:
    """Write named tables under out/<name> as one unit: beside the target first, swapped in at the end.

    A failure part-way leaves whatever was at `out` before untouched. Returns row counts by table.
    """
    target = Path(out)
    staging = target.with_name(f".{target.name}.writing")
    shutil.rmtree(staging, ignore_errors=True)
    counts = {}
    try:
        for name, frame in tables.items():
            started = time.perf_counter()
            counts[name] = write_parquet_deterministic(frame, str(staging / name))
            if progress:
                print(f"  {name:<18} {counts[name]:>12,} rows  {time.perf_counter() - started:6.1f} s", flush=True)
        replace_directory(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def print_import_summary(source: str, out: str, counts: dict[str, int], started: float) -> None:
    for name, count in counts.items():
        print(f"  {name:<12} {count:>10,} rows")
    print(f"imported {source} -> {out} in {time.perf_counter() - started:.1f} s")


def replace_directory(new: Path, target: Path) -> None:
    """Swap a fully written directory into place; the old one is removed only after the swap."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def input_fingerprint(data_path: str) -> str:
    """Hash of every input file's path, size and mtime: cheap, and changes whenever data is appended."""
    root = Path(data_path)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {data_path}")
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith((".", "_")):
            stat = path.stat()
            digest.update(f"{path.relative_to(root).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
