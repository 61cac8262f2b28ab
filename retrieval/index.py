"""Build, save and load FAISS indexes over (int64 id, float32 vector) batches.

Vectors arrive as an iterable of ``(ids int64 (B,), vectors float32 (B, D))`` batches, typically from
``iter_parquet_vectors`` (Arrow record batches, never a full pandas copy), so memory is bounded by the
index rather than the input. Training uses a uniform sample (``sample_vectors``). The index keeps the
caller's int64 ids: IVF indexes store them natively, every other type is wrapped in ``IndexIDMap``.

A GPU is used automatically when faiss reports one (``IndexConfig.gpu``); the saved index is always
the CPU form, so the same files load on either kind of machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from tqdm import tqdm

from retrieval.config import GpuConfig, IndexConfig, resolve_factory_string

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"
META_FILE = "index_meta.json"

FAISS_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "cosine": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}


@dataclass
class BuiltIndex:
    """A CPU faiss index with what is needed to search and check it.

    Attributes:
        index: the CPU faiss index; search results are the caller's int64 ids.
        ids: int64 array (N,), the ids in the order they were added.
        dim: vector dimension D.
        metric: "ip", "cosine" or "l2" (cosine indexes hold L2-normalised vectors).
        factory_string: the resolved faiss factory spec ('{nlist}' replaced).
        train_s: seconds spent training; add_s: seconds spent adding.
        device: "cpu" or "gpu" (where it was built).
    """

    index: faiss.Index
    ids: np.ndarray
    dim: int
    metric: str
    factory_string: str
    train_s: float = 0.0
    add_s: float = 0.0
    device: str = "cpu"

    @property
    def num_vectors(self) -> int:
        return int(self.index.ntotal)


# ---------------------------------------------------------------- input


def iter_parquet_vectors(
    path: str, id_column: str, vector_column: str, batch_rows: int = 100_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream (ids, vectors) batches from a Parquet file or directory with Arrow, column-pruned.

    Vector columns may be ``fixed_size_list<float>`` or ``list<float>`` of equal lengths (any float
    width; converted to float32). The list values are flattened straight into numpy, not via pandas.

    Args:
        path: Parquet file or directory (any path pyarrow.dataset can read).
        id_column: integer id column.
        vector_column: list-of-float column.
        batch_rows: rows per yielded batch (at most; fragments may yield smaller batches).

    Yields:
        ids int64 (B,), vectors float32 (B, D).
    """
    dataset = ds.dataset(path, format="parquet")
    names = dataset.schema.names
    for column in (id_column, vector_column):
        if column not in names:
            raise ValueError(f"{path}: no column {column!r}; the columns are {names}")
    for batch in dataset.to_batches(columns=[id_column, vector_column], batch_size=batch_rows):
        if batch.num_rows == 0:
            continue
        id_array, vector_array = batch.column(0), batch.column(1)
        if id_array.null_count or vector_array.null_count:
            raise ValueError(f"{path}: null values in {id_column!r} or {vector_column!r}")
        if not pa.types.is_integer(id_array.type):
            raise ValueError(f"{path}: id column {id_column!r} has type {id_array.type}, expected int64")
        yield id_array.to_numpy().astype(np.int64, copy=False), _list_array_to_matrix(vector_array, path)


def _list_array_to_matrix(array: pa.Array, path: str) -> np.ndarray:
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = np.diff(array.offsets.to_numpy())
        dim = int(lengths[0])
        if (lengths != dim).any():
            raise ValueError(
                f"{path}: mixed vector dimensions in one batch: {sorted(set(lengths.tolist()))[:5]}"
            )
    else:
        raise ValueError(f"{path}: vector column has type {array.type}, expected a list of floats")
    # flatten() honours the array's slice offset, unlike .values.
    values = array.flatten()
    if not pa.types.is_floating(values.type):
        raise ValueError(f"{path}: vector values have type {values.type}, expected float")
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(array), dim)


def parquet_row_count(path: str) -> int:
    """Row count from Parquet metadata (no data read)."""
    return int(ds.dataset(path, format="parquet").count_rows())


def sample_vectors(
    batches: Iterable[tuple[np.ndarray, np.ndarray]], sample_size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A uniform sample without replacement, in one pass with memory bounded by sample_size + one batch.

    Every row gets a random priority; the sample is the rows with the smallest priorities, which is
    uniform whatever the batch sizes (bottom-k sampling).

    Args:
        batches: (ids int64 (B,), vectors float32 (B, D)) batches.
        sample_size: rows wanted; all rows when there are fewer.
        seed: random seed.

    Returns:
        ids int64 (S,), vectors float32 (S, D), in input order.
    """
    rng = np.random.default_rng(seed)
    kept_keys = np.empty(0)
    kept_order = np.empty(0, dtype=np.int64)
    kept_ids: np.ndarray | None = None
    kept_vectors: np.ndarray | None = None
    offset = 0
    for ids, vectors in batches:
        keys = rng.random(len(ids))
        order = np.arange(offset, offset + len(ids))
        offset += len(ids)
        if kept_ids is None:
            all_keys, all_order, all_ids, all_vectors = keys, order, ids, vectors
        else:
            all_keys = np.concatenate([kept_keys, keys])
            all_order = np.concatenate([kept_order, order])
            all_ids = np.concatenate([kept_ids, ids])
            all_vectors = np.concatenate([kept_vectors, vectors])
        if len(all_keys) > sample_size:
            chosen = np.argpartition(all_keys, sample_size - 1)[:sample_size]
        else:
            chosen = np.arange(len(all_keys))
        kept_keys, kept_order = all_keys[chosen], all_order[chosen]
        kept_ids, kept_vectors = all_ids[chosen], all_vectors[chosen]
    if kept_ids is None or kept_vectors is None:
        raise ValueError("no vectors: the input is empty")
    in_input_order = np.argsort(kept_order)
    return kept_ids[in_input_order], np.ascontiguousarray(kept_vectors[in_input_order], dtype=np.float32)


def check_batch(ids: np.ndarray, vectors: np.ndarray, dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one batch and return it as (int64 (B,), C-contiguous float32 (B, D)).

    Raises:
        ValueError: non-integer ids, shape mismatch, wrong dimension, NaN or inf values.
    """
    ids = np.asarray(ids)
    vectors = np.asarray(vectors)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{where}: ids must be a 1-D integer array, got dtype {ids.dtype} shape {ids.shape}")
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(
            f"{where}: vectors must have shape ({len(ids)}, {dim}) to match the ids, got {vectors.shape}"
        )
    if vectors.shape[1] != dim:
        raise ValueError(f"{where}: mixed dimensions: vectors have dimension {vectors.shape[1]}, expected {dim}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{where}: {len(bad)} vector(s) contain NaN or inf values (first id {int(ids[bad[0]])})"
        )
    return ids.astype(np.int64, copy=False), vectors


def prepare_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as the index expects them: float32, C-contiguous, L2-normalised for cosine (a copy then)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        vectors = vectors.copy()
        faiss.normalize_L2(vectors)
    return vectors


# ---------------------------------------------------------------- GPU (kept thin)


def gpu_count(gpu: GpuConfig) -> int:
    """GPUs to use under this config: 0 for CPU.

    Raises:
        ValueError: use_gpu='always' on a machine where faiss sees no GPU.
    """
    available = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpu.use_gpu == "never":
        return 0
    if gpu.use_gpu == "always" and available == 0:
        raise ValueError("gpu.use_gpu is 'always' but faiss reports no GPU (faiss-cpu installed, or no device)")
    return available


def index_to_gpu(index: faiss.Index, gpu: GpuConfig, num_gpus: int) -> faiss.Index:
    """Clone a CPU index onto num_gpus GPUs (sharded or replicated across several)."""
    resources = [faiss.StandardGpuResources() for _ in range(num_gpus)]
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = gpu.float16
    options.shard = gpu.multi_gpu == "shard"
    gpu_index = faiss.index_cpu_to_gpu_multiple_py(resources, index, options)
    # The GPU index must not outlive its resources.
    # (faiss's own keep-alive idiom: a plain Python attribute, which faiss's stubs do not declare.)
    gpu_index.referenced_objects = resources  # type: ignore[attr-defined]
    return gpu_index


def gpu_clone_or_none(index: faiss.Index, gpu: GpuConfig, num_gpus: int) -> faiss.Index | None:
    """index_to_gpu, or None (CPU) when the index type has no GPU version and use_gpu is 'auto'."""
    try:
        return index_to_gpu(index, gpu, num_gpus)
    except RuntimeError as exc:
        if gpu.use_gpu == "always":
            raise ValueError(f"gpu.use_gpu is 'always' but this index cannot go to the GPU: {exc}") from None
        log.warning("index type has no GPU version, using the CPU: %s", str(exc).splitlines()[0])
        return None


# ---------------------------------------------------------------- build


def _supports_add_with_ids(index: faiss.Index) -> bool:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return _supports_add_with_ids(index.index)
    return isinstance(index, faiss.IndexIVF)


def new_index(factory_string: str, dim: int, metric: str) -> faiss.Index:
    """An empty CPU index for the spec that accepts int64 ids (IndexIDMap where the type lacks them)."""
    try:
        index = faiss.index_factory(dim, factory_string, FAISS_METRICS[metric])
    except RuntimeError as exc:
        raise ValueError(f"invalid factory_string {factory_string!r} for dimension {dim}: {exc}") from None
    return index if _supports_add_with_ids(index) else faiss.IndexIDMap(index)


def build_index(
    config: IndexConfig,
    dim: int,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    train_sample: np.ndarray | None,
    num_vectors: int | None = None,
) -> BuiltIndex:
    """Train on a sample, then add the batches with their ids (GPU when available, else CPU).

    Args:
        config: the index spec.
        dim: vector dimension D every batch must have.
        batches: (ids int64 (B,), vectors float32 (B, D)) batches; read once.
        train_sample: float32 (S, D) training vectors; unused (may be None) for indexes without training.
        num_vectors: total vectors, when known: sizes '{nlist}' (required then) and the progress bar.

    Returns:
        The BuiltIndex (CPU form).

    Raises:
        ValueError: empty input, mixed dimensions, duplicate ids, NaN/inf vectors, bad spec.
    """
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    factory_string = resolve_factory_string(config.factory_string, num_vectors)
    index = new_index(factory_string, dim, config.metric)
    num_gpus = gpu_count(config.gpu)

    start = time.perf_counter()
    if not index.is_trained:
        if train_sample is None or len(train_sample) == 0:
            raise ValueError(f"index {factory_string!r} needs training vectors: train_sample is empty")
        _, train_vectors = check_batch(np.arange(len(train_sample)), train_sample, dim, "train_sample")
        train_vectors = prepare_vectors(train_vectors, config.metric)
        # Train once on one GPU so that every shard shares the same quantizer.
        on_gpu = gpu_clone_or_none(index, config.gpu, 1) if num_gpus else None
        num_gpus = num_gpus if on_gpu is not None else 0
        try:
            if on_gpu is not None:
                on_gpu.train(train_vectors)
                index = faiss.index_gpu_to_cpu(on_gpu)
            else:
                index.train(train_vectors)
        except RuntimeError as exc:
            raise ValueError(f"training {factory_string!r} on {len(train_vectors)} vectors failed: {exc}") from None
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    on_gpu = gpu_clone_or_none(index, config.gpu, num_gpus) if num_gpus else None
    num_gpus = num_gpus if on_gpu is not None else 0
    target = on_gpu if on_gpu is not None else index
    all_ids = []
    with tqdm(total=num_vectors, unit="vec", desc=f"add {factory_string}", mininterval=2.0) as progress:
        for batch_no, (ids, vectors) in enumerate(batches):
            ids, vectors = check_batch(ids, vectors, dim, f"batch {batch_no}")
            if len(ids) == 0:
                continue
            target.add_with_ids(prepare_vectors(vectors, config.metric), ids)
            all_ids.append(ids)
            progress.update(len(ids))
    if not all_ids:
        raise ValueError("no vectors: the embedding input is empty")
    ids = np.concatenate(all_ids)
    _check_unique(ids)
    index = faiss.index_gpu_to_cpu(target) if num_gpus else target
    add_s = time.perf_counter() - start
    device = "gpu" if num_gpus else "cpu"

    built = BuiltIndex(index, ids, dim, config.metric, factory_string, train_s, add_s, device)
    log.info(
        "built %s (%s): %d vectors of dim %d in %.1f s (train %.1f s, add %.1f s) on %s",
        factory_string, config.metric, built.num_vectors, dim, train_s + add_s, train_s, add_s, device,
    )
    return built


def _check_unique(ids: np.ndarray) -> None:
    sorted_ids = np.sort(ids)
    repeated = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if len(repeated):
        examples = np.unique(repeated)[:5].tolist()
        raise ValueError(f"duplicate ids: {len(np.unique(repeated))} id(s) appear more than once, e.g. {examples}")


# ---------------------------------------------------------------- save / load


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def save_index(built: BuiltIndex, directory: str) -> dict:
    """Write index.faiss, ids.npy and index_meta.json (with both files' sha256) into directory.

    Returns:
        The metadata written to index_meta.json.
    """
    os.makedirs(directory, exist_ok=True)
    index_path = os.path.join(directory, INDEX_FILE)
    ids_path = os.path.join(directory, IDS_FILE)
    faiss.write_index(built.index, index_path)
    np.save(ids_path, built.ids)
    meta = {
        "factory_string": built.factory_string,
        "metric": built.metric,
        "dim": built.dim,
        "num_vectors": built.num_vectors,
        "device": built.device,
        "train_s": round(built.train_s, 3),
        "add_s": round(built.add_s, 3),
        "faiss_version": faiss.__version__,
        "sha256": {INDEX_FILE: _sha256(index_path), IDS_FILE: _sha256(ids_path)},
    }
    # The metadata goes last: a directory without it is an unfinished save.
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def load_index(directory: str, mmap: bool = False, verify: bool = True) -> BuiltIndex:
    """Read an index saved by save_index, checking the files against their recorded checksums.

    Args:
        directory: the directory save_index wrote.
        mmap: map flat code arrays from the file instead of reading them (IO_FLAG_MMAP_IFC): the OS pages
            them in on use, so a large index loads at once and is shared between processes.
        verify: compare sha256 checksums before reading (reads each file once).

    Raises:
        ValueError: missing files, checksum mismatch, or a file faiss cannot read.
    """
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(f"{directory}: no {META_FILE}; not an index directory or the save did not finish")
    with open(meta_path) as f:
        meta = json.load(f)
    for name, expected in meta["sha256"].items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: missing from the index directory")
        if verify:
            actual = _sha256(path)
            if actual != expected:
                raise ValueError(
                    f"{path}: checksum mismatch (sha256 {actual[:12]}..., recorded {expected[:12]}...): "
                    "the file is corrupted or was modified after saving"
                )
    index_path = os.path.join(directory, INDEX_FILE)
    try:
        index = faiss.read_index(index_path, faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    except RuntimeError as exc:
        raise ValueError(f"{index_path}: faiss cannot read the index file: {str(exc).splitlines()[0]}") from None
    ids = np.load(os.path.join(directory, IDS_FILE))
    if index.ntotal != len(ids) or index.d != meta["dim"]:
        raise ValueError(
            f"{directory}: index holds {index.ntotal} vectors of dim {index.d}, "
            f"but the id map has {len(ids)} ids and the metadata says dim {meta['dim']}"
        )
    return BuiltIndex(
        index, ids, int(meta["dim"]), meta["metric"], meta["factory_string"],
        float(meta["train_s"]), float(meta["add_s"]), meta["device"],
    )
