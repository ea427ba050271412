"""Search a large passage pool with a FAISS index built from the answer tower (notebook 06).

An index is a folder: ``vectors.npy`` (the answer embeddings, memory-mapped, written chunk by
chunk), ``index.faiss`` (flat, HNSW or IVF, inner product), ``passages.jsonl`` with
``offsets.npy`` (each row's text and id, read back only for the hits) and ``manifest.json``
(kind, size, dtype, and the model: its folder and a fingerprint of its weights and options, so
searching with another model is one clear error), written last. Built in a temporary sibling
folder, it replaces the target in one rename.

The question flag needs nothing special: it is the answer embeddings' last column and the
questions carry 1 there, so ``score = q_emb · a_emb`` is one inner product, as in
:func:`qa_lib.evaluate.evaluate`. Passages are encoded in exactly the batches ``evaluate``
uses (longest first, ``batch_size`` at a time), so a flat float32 index ranks the pool as
``evaluate`` does, ties aside. HNSW and IVF are approximate: their recall@10 against the exact
ranking is measured at build time on the data's own questions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from qa_lib.batching import sorted_chunks
from qa_lib.config import EncoderConfig
from qa_lib.encoders import DualEncoder
from qa_lib.errors import QAError
from qa_lib.files import write_json
from qa_lib.inference import TOKENIZE_BLOCK
from qa_lib.metrics import build_task
from qa_lib.saving import model_folder, replace_dir

KINDS = ("flat", "hnsw", "ivf")  # exact; graph (approximate); inverted lists (approximate)
DTYPES = ("float32", "float16")  # of vectors.npy; float16 halves it but flat is then not exact
MANIFEST = "manifest.json"  # written last: its presence marks a complete index
CHUNK_SIZE = 4096  # passages encoded and added at a time: memory for one chunk, not the pool
RECALL_QUERIES = 1000  # questions of the data on which approximate kinds measure recall@10
HNSW_M = 32  # graph neighbours per node
HNSW_EF_CONSTRUCTION = 40  # candidates kept while inserting (faiss's default: build time)
HNSW_EF_SEARCH = 64  # candidates kept while searching (speed vs recall)
IVF_TRAIN_PER_LIST = 64  # k-means training vectors per inverted list


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise QAError("faiss is not installed: pip install faiss-cpu (or faiss-gpu)") from exc
    return faiss


# ----------------------------------------------------------------------------- the model


def model_fingerprint(model) -> str:
    """A short sha256 of a dual encoder's options and weights: which model made an index."""
    digest = hashlib.sha256(json.dumps(asdict(model.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())  # the bytes, without a copy
    return digest.hexdigest()[:16]


def open_model(spec: str | os.PathLike | None, seed: int = 0) -> DualEncoder:
    """A saved dual encoder folder, else untrained towers from a model name or folder."""
    folder = model_folder(spec) if spec is not None else None  # a model, or a run's best/
    if folder is not None:
        return DualEncoder.load(folder)
    return DualEncoder.from_config(EncoderConfig(model=None if spec is None else str(spec)), seed)


def _model_record(model, spec, seed: int) -> dict:
    folder = model_folder(spec) if spec is not None else None
    saved = folder is not None
    where = str(folder.resolve()) if saved else (None if spec is None else str(spec))
    return {"spec": where, "saved": saved, "seed": seed, "fingerprint": model_fingerprint(model)}


# ----------------------------------------------------------------------------- building


def encode_pool(
    model, texts: Sequence[str], path: Path, dtype: str, chunk_size: int, batch_size: int, progress
) -> np.memmap:
    """Answer embeddings of ``texts`` into a memory-mapped ``.npy``, one chunk at a time.

    The chunks are runs of ``evaluate``'s own batches (longest first, ``batch_size`` each) in
    whole tokenisation blocks (``chunk_size`` rounded up to :data:`~qa_lib.inference.TOKENIZE_BLOCK`
    batches), so every passage is embedded in the same batch, with the same padding, as
    ``evaluate`` does.

    Returns:
        The memory map, row i = ``texts[i]``. Shape (len(texts), model.dim).
    """
    from tqdm.auto import tqdm

    vectors = np.lib.format.open_memmap(path, "w+", dtype, (len(texts), model.dim))
    batches = sorted_chunks([len(t) for t in texts], batch_size, longest_first=True)
    step = -(-max(1, chunk_size // batch_size) // TOKENIZE_BLOCK) * TOKENIZE_BLOCK
    runs = range(0, len(batches), step)
    for start in tqdm(runs, desc="encode passages", disable=not progress):
        rows = [i for batch in batches[start : start + step] for i in batch]
        emb = model.encode_answers([texts[i] for i in rows], batch_size)
        vectors[np.asarray(rows)] = emb.numpy().astype(dtype)
    vectors.flush()
    return vectors


def default_params(kind: str, n: int) -> dict:
    """The build and search settings of ``kind`` for ``n`` passages (HNSW: graph; IVF: lists)."""
    if kind == "hnsw":
        return {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
    if kind == "ivf":
        nlist = max(1, min(round(math.sqrt(n)), n // 39))  # faiss wants 39 points per list
        return {"nlist": nlist, "nprobe": max(1, math.ceil(math.sqrt(nlist)))}
    return {}


def new_index(kind: str, dim: int, params: dict):
    """An empty inner-product FAISS index of ``kind`` (see :data:`KINDS`)."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        return index
    if kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        # faiss's Python wrapper keeps a reference to the quantizer for the index's lifetime
        return faiss.IndexIVFFlat(quantizer, dim, params["nlist"], faiss.METRIC_INNER_PRODUCT)
    raise QAError(f"unknown index kind {kind!r}: use one of {KINDS}")


def fill_index(index, vectors: np.ndarray, chunk_size: int = CHUNK_SIZE, seed: int = 0):
    """Train ``index`` if it needs it (IVF: k-means on a seeded sample), then add ``vectors``.

    Args:
        index: from :func:`new_index`.
        vectors: the rows to add, e.g. a memory map, read ``chunk_size`` rows at a time.
        chunk_size: rows converted to float32 at once.
        seed: seeds the training sample.

    Returns:
        The index.
    """
    if not index.is_trained:
        n_train = min(len(vectors), IVF_TRAIN_PER_LIST * index.nlist)
        rows = np.sort(np.random.default_rng(seed).choice(len(vectors), n_train, replace=False))
        index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    for start in range(0, len(vectors), chunk_size):
        index.add(np.ascontiguousarray(vectors[start : start + chunk_size], dtype=np.float32))
    return index


def exact_top_k(vectors: np.ndarray, q_emb: np.ndarray, k: int, chunk_size: int = CHUNK_SIZE):
    """The exact top ``k`` rows for each query, reading ``vectors`` a chunk at a time.

    Returns:
        ``(scores, rows)``, best first. Shapes (n_queries, k) each.
    """
    q = torch.from_numpy(np.array(q_emb, dtype=np.float32))
    best_s = torch.full((len(q), 0), float("-inf"))
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(0, len(vectors), chunk_size):
        part = torch.from_numpy(np.array(vectors[start : start + chunk_size], dtype=np.float32))
        scores = torch.cat([best_s, q @ part.T], dim=1)  # (n_queries, kept + chunk)
        rows = torch.arange(start, start + len(part)).expand(len(q), -1)
        best_s, pick = scores.topk(min(k, scores.shape[1]), dim=1)
        best_i = torch.cat([best_i, rows], dim=1).gather(1, pick)
    return best_s.numpy(), best_i.numpy()


def recall_against_exact(found: np.ndarray, exact: np.ndarray) -> float:
    """The share of the exact top-k rows that an approximate search found (its recall@k)."""
    hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact)]
    return float(sum(hits) / exact.size) if exact.size else float("nan")


def _measure_recall(index, vectors, model, queries, params, k: int = 10) -> dict:
    """recall@k of an approximate index against the exact ranking, on up to 1000 queries."""
    queries = list(queries)[:RECALL_QUERIES]
    if not queries:
        return {}
    q_emb = model.encode_questions(queries).numpy()
    k = min(k, len(vectors))
    configure_search(index, params)
    found = index.search(np.ascontiguousarray(q_emb, dtype=np.float32), k)[1]
    exact = exact_top_k(vectors, q_emb, k)[1]
    return {f"recall@{k}_vs_flat": recall_against_exact(found, exact), "recall_queries": len(q_emb)}


def write_passages(folder: Path, texts: Sequence[str], ids: Sequence | None) -> None:
    """``passages.jsonl`` (one ``{"id", "text"}`` per row) and the byte offset of each line."""
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    with open(folder / "passages.jsonl", "wb") as handle:
        for i, text in enumerate(texts):
            row = {"id": i if ids is None else ids[i], "text": text}
            offsets[i + 1] = offsets[i] + handle.write((json.dumps(row) + "\n").encode())
    np.save(folder / "offsets.npy", offsets)


def _check_build(texts, ids, kind: str, dtype: str, out: Path, overwrite: bool) -> None:
    if kind not in KINDS:
        raise QAError(f"unknown index kind {kind!r}: use one of {KINDS}")
    if dtype not in DTYPES:
        raise QAError(f"unknown vector dtype {dtype!r}: use one of {DTYPES}")
    if not len(texts):
        raise QAError("no passages to index: the pool is empty; check --data and --split")
    if ids is not None and len(ids) != len(texts):
        raise QAError(f"{len(ids)} ids for {len(texts)} passages: give one id per passage")
    if out.exists() and not out.is_dir():
        raise QAError(f"--out {out}: is a file; give a folder for the index")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise QAError(f"--out {out}: folder is not empty; choose a new folder or pass --overwrite")


def build_index(
    model,
    texts: Sequence[str],
    out: str | os.PathLike,
    *,
    ids: Sequence | None = None,
    kind: str = "flat",
    dtype: str = "float32",
    queries: Sequence[str] = (),
    chunk_size: int = CHUNK_SIZE,
    batch_size: int = 64,
    model_spec: str | os.PathLike | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Encode a passage pool chunk by chunk and write a FAISS index folder (module docstring).

    Args:
        model: the dual encoder whose answer tower embeds the passages.
        texts: the passages.
        out: the index folder.
        ids: one id per passage (any JSON value); None = its row number.
        kind: "flat" (exact), "hnsw" or "ivf" (approximate).
        dtype: of the stored vectors; "float16" halves ``vectors.npy`` (flat is then not exact).
        queries: questions on which an approximate kind measures its recall@10 against flat.
        chunk_size: passages encoded and added at a time (encoded in whole tokenisation blocks:
            at least ``TOKENIZE_BLOCK * batch_size``).
        batch_size: texts per forward pass (as in ``evaluate``).
        model_spec: the folder or name ``model`` was loaded from (:func:`open_model`), recorded
            so that :func:`open_index` can load it again; None = the packaged MiniLM.
        seed: the seed of untrained towers, and of IVF's training sample.
        overwrite: replace a non-empty ``out``.
        progress: show a progress bar.

    Returns:
        The manifest written to ``out/manifest.json``.
    """
    out = Path(out)
    _check_build(texts, ids, kind, dtype, out, overwrite)
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        vectors = encode_pool(
            model, texts, tmp / "vectors.npy", dtype, chunk_size, batch_size, progress
        )
        params = default_params(kind, len(texts))
        index = fill_index(new_index(kind, model.dim, params), vectors, chunk_size, seed)
        _faiss().write_index(index, str(tmp / "index.faiss"))
        write_passages(tmp, texts, ids)
        manifest = _manifest(model, model_spec, seed, kind, dtype, params, len(texts))
        if kind != "flat":
            manifest.update(_measure_recall(index, vectors, model, queries, params))
        manifest["build_seconds"] = time.perf_counter() - start
        del vectors
        write_json(tmp / MANIFEST, manifest)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _manifest(model, spec, seed: int, kind: str, dtype: str, params: dict, count: int) -> dict:
    import qa_lib

    return {
        "qa_lib_version": qa_lib.__version__,
        "faiss_version": _faiss().__version__,
        "kind": kind,
        "metric": "inner_product",
        "dim": model.dim,
        "count": count,
        "dtype": dtype,
        "question_flag": bool(model.has_question_flag),
        "precision": str(model.precision),
        "params": params,
        "model": _model_record(model, spec, seed),
    }


def index_pairs(model, pairs, out: str | os.PathLike, **options) -> dict:
    """:func:`build_index` over ``evaluate``'s candidate pool of ``pairs`` (row i = candidate i).

    The pairs' questions serve as the queries on which an approximate kind measures recall.
    """
    task = build_task(pairs)
    return build_index(model, task.candidates, out, queries=task.questions, **options)


# ----------------------------------------------------------------------------- searching


def read_manifest(index_dir: str | os.PathLike) -> dict:
    """The manifest of an index folder.

    Raises:
        QAError: the folder is missing or holds no complete index.
    """
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise QAError(
            f"{index_dir}: no index here (missing {MANIFEST}); build one with "
            f"'python -m qa_lib index --data SOURCE --out {index_dir}'"
        )
    return json.loads(path.read_text())


def configure_search(index, params: dict) -> None:
    """Set an index's search-time knobs from ``params`` (HNSW ``ef_search``, IVF ``nprobe``)."""
    if "ef_search" in params:
        index.hnsw.efSearch = params["ef_search"]
    if "nprobe" in params:
        index.nprobe = params["nprobe"]


def _on_gpu(index, kind: str):
    """The index on every GPU where faiss-gpu sees one (HNSW stays on the CPU)."""
    faiss = _faiss()
    if kind == "hnsw" or not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() < 1:
        return index
    return faiss.index_cpu_to_all_gpus(index)


class SearchIndex:
    """An index folder opened for search, with the model that built it.

    Open one with :func:`open_index`; :meth:`search` ranks passages for many query batches.
    """

    def __init__(self, folder: Path, manifest: dict, index, model):
        self.folder, self.manifest, self.index, self.model = folder, manifest, index, model
        self.offsets = np.load(folder / "offsets.npy")

    def __len__(self) -> int:
        return self.manifest["count"]

    def passages(self, rows: Sequence[int]) -> list[dict]:
        """The ``{"id", "text"}`` of the given rows, read from disk."""
        out = []
        with open(self.folder / "passages.jsonl", "rb") as handle:
            for row in rows:
                handle.seek(int(self.offsets[row]))
                out.append(json.loads(handle.readline()))
        return out

    def search(self, queries: Sequence[str], k: int = 10, batch_size: int = 64) -> list[dict]:
        """Rank the passages for each query.

        Args:
            queries: the questions.
            k: results per query (at most the pool's size).
            batch_size: questions per forward pass.

        Returns:
            ``{"query", "results": [{"rank", "score", "text", "id"}, ...]}`` per query, best first.
        """
        queries = _checked_queries(queries, k)
        q_emb = self.model.encode_questions(queries, batch_size).numpy()
        scores, rows = self.index.search(np.ascontiguousarray(q_emb), min(k, len(self)))
        return [self._results(q, s, r) for q, s, r in zip(queries, scores, rows)]

    def _results(self, query: str, scores: np.ndarray, rows: np.ndarray) -> dict:
        keep = rows >= 0  # IVF returns -1 when its probed lists hold fewer than k passages
        hits = self.passages(rows[keep].tolist())
        results = [
            {"rank": rank, "score": float(score), "text": hit["text"], "id": hit["id"]}
            for rank, (score, hit) in enumerate(zip(scores[keep], hits), start=1)
        ]
        return {"query": query, "results": results}


def _checked_queries(queries: Sequence[str], k: int) -> list[str]:
    if isinstance(queries, str):
        queries = [queries]
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise QAError(f"k = {k!r}: give a whole number of results per query, 1 or more")
    queries = list(queries)
    if not queries:
        raise QAError("no queries to search: give at least one question")
    return queries


def open_index(
    index_dir: str | os.PathLike,
    model=None,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> SearchIndex:
    """Open an index folder for search.

    Args:
        index_dir: a folder written by :func:`build_index` (``python -m qa_lib index``).
        model: the dual encoder that built it; None = load it from where the manifest says.
        nprobe: IVF: inverted lists visited per query (default: the manifest's).
        ef_search: HNSW: candidates kept while searching (default: the manifest's).

    Raises:
        QAError: no index there, or ``model`` is not the model that built it.
    """
    folder = Path(index_dir)
    manifest = read_manifest(folder)
    record = manifest["model"]
    if model is None:
        model = open_model(record["spec"], record["seed"])
    if model_fingerprint(model) != record["fingerprint"]:
        source = record["spec"] or "the packaged MiniLM, or a model passed in memory"
        raise QAError(
            f"{folder}: this index was built with another model (fingerprint "
            f"{record['fingerprint']}, from {source}); search with that model, or rebuild the "
            f"index with 'python -m qa_lib index --model ...'"
        )
    index = _faiss().read_index(str(folder / "index.faiss"))
    params = dict(manifest["params"])
    params.update({k: v for k, v in (("nprobe", nprobe), ("ef_search", ef_search)) if v})
    configure_search(index, params)
    return SearchIndex(
        folder, {**manifest, "params": params}, _on_gpu(index, manifest["kind"]), model
    )


def search(
    index_dir: str | os.PathLike, queries: Sequence[str] | str, k: int = 10, model=None
) -> list[dict]:
    """Rank an index's passages for each query (:meth:`SearchIndex.search`).

    Args:
        index_dir: a folder written by :func:`build_index`.
        queries: one question or several.
        k: results per query.
        model: the dual encoder that built the index; None = load it from the manifest.

    Returns:
        ``{"query", "results": [{"rank", "score", "text", "id"}, ...]}`` per query.
    """
    _checked_queries(queries, k)  # before loading anything
    return open_index(index_dir, model).search(queries, k)
