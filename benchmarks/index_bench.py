"""Search at scale: FAISS flat / HNSW / IVF (qa_lib.index) against an exact torch matmul.

Measured in one run, each system in its own subprocess on the same vectors and queries:

  torch  exact top-10 by ``queries @ vectors.T`` in chunks of 65,536 rows (the baseline)
  flat   ``faiss.IndexFlatIP``: exact, what ``qa_lib index --kind flat`` builds
  hnsw   ``faiss.IndexHNSWFlat``, qa_lib's defaults (M 32, efConstruction 40, efSearch 64)
  ivf    ``faiss.IndexIVFFlat``, qa_lib's defaults (sqrt(n) lists, sqrt(nlist) probed,
         k-means on 64 vectors per list)

Two pools: (1) ``--n`` synthetic unit vectors of ``--dim`` (seeded; clustered: 1,000 Gaussian
centres plus noise, because uniformly random vectors have no neighbourhoods for an ANN index to
find), queries = noisy copies of random pool vectors; (2) the largest real pool at hand: SQuAD
dev's paragraphs (or a file given by ``--real``) encoded by the packaged MiniLM's answer tower
(with the question flag column), queried by its questions through the question tower.

Per system: build seconds (index construction from vectors in memory; encoding is timed once,
apart), extra peak memory (VmHWM after build and search minus the RSS with the vectors loaded:
``/proc/self/clear_refs`` resets the peak), queries/s for one batched search of all queries, and
recall@10 against torch's exact top 10. Ratios are to torch in the same run.

    python benchmarks/index_bench.py                 # 1 M x 384 synthetic + SQuAD dev
    python benchmarks/index_bench.py --n 100000      # quicker

Writes ``benchmarks/results/index-<tag>.json`` and ``.md`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("torch", "flat", "hnsw", "ivf")
SQUAD = ROOT.parent / "shared" / "data" / "squad-v1.1" / "dev-v1.1.json"
K = 10


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def synthetic(n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors and noisy copies of some of them as queries, seeded."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # in chunks: no full-size temporaries
        part = vectors[start : start + 65536]
        part[:] = centres[rng.integers(0, len(centres), len(part))]
        part += 0.7 * rng.standard_normal(part.shape, dtype=np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
    queries = vectors[rng.choice(n, n_queries, replace=False)]
    queries = queries + 0.3 / dim**0.5 * rng.standard_normal(queries.shape, dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return vectors, queries.astype(np.float32)


def torch_top_k(vectors: np.ndarray, queries: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The baseline: exact top-K rows by chunked matrix products and a running top-k."""
    import torch

    q = torch.from_numpy(queries)
    best_s, best_i = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.long)
    for start in range(0, len(vectors), chunk):
        scores = torch.cat([best_s, q @ torch.from_numpy(vectors[start : start + chunk]).T], 1)
        rows = torch.arange(start, start + min(chunk, len(vectors) - start)).expand(len(q), -1)
        best_s, pick = scores.topk(min(K, scores.shape[1]), dim=1)
        best_i = torch.cat([best_i, rows], 1).gather(1, pick)
    return best_i.numpy()


def worker(system: str, data: Path) -> dict:
    """Build and search one system on the vectors in ``data``; its measurements."""
    from qa_lib.index import configure_search, default_params, fill_index, new_index

    vectors, queries = np.load(data / "vectors.npy"), np.load(data / "queries.npy")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    params = default_params(system, len(vectors)) if system != "torch" else {}
    if system != "torch":
        index = fill_index(new_index(system, vectors.shape[1], params), vectors, 65536)
        configure_search(index, params)
    build = time.perf_counter() - start
    start = time.perf_counter()
    if system == "torch":
        found = torch_top_k(vectors, queries)
    else:
        found = index.search(queries, K)[1]
    seconds = time.perf_counter() - start
    np.save(data / f"found-{system}.npy", found)
    return {
        "build_seconds": build,
        "search_seconds": seconds,
        "queries_per_second": len(queries) / seconds,
        "extra_peak_mib": (_status_kib("VmHWM") - base) / 1024,
        "params": params,
    }


def run_pool(name: str, data: Path) -> dict:
    """Every system on one pool, each in a fresh subprocess; recall against torch's top 10."""
    rows = {}
    for system in SYSTEMS:
        cmd = [sys.executable, __file__, "--worker", system, "--data", str(data)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{system} failed:\n{done.stderr}")
        rows[system] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {name} {system}: {rows[system]}", file=sys.stderr)
    exact = np.load(data / "found-torch.npy")
    for system, row in rows.items():
        found = np.load(data / f"found-{system}.npy")
        hits = sum(len(set(f) & set(e)) for f, e in zip(found.tolist(), exact.tolist()))
        row["recall@10"] = hits / exact.size
    return rows


def real_pool(source: str, cap: int | None, n_queries: int, seed: int, data: Path) -> dict:
    """Encode a real pool with the packaged MiniLM into ``data``; what was encoded and how fast."""
    import torch

    from qa_lib import DualEncoder, load_pairs
    from qa_lib.metrics import build_task

    task = build_task(load_pairs(source))
    texts = task.candidates[:cap] if cap else task.candidates
    questions = [q for q, rel in zip(task.questions, task.relevant) if min(rel) < len(texts)]
    rng = np.random.default_rng(seed)
    questions = [
        questions[i]
        for i in sorted(rng.choice(len(questions), min(n_queries, len(questions)), replace=False))
    ]
    model = DualEncoder.from_config()
    start = time.perf_counter()
    vectors = model.encode_answers(texts).numpy()
    seconds = time.perf_counter() - start
    np.save(data / "vectors.npy", vectors)
    np.save(data / "queries.npy", model.encode_questions(questions).numpy())
    return {
        "source": source,
        "passages": len(texts),
        "pool_size": len(task.candidates),
        "queries": len(questions),
        "dim": int(vectors.shape[1]),
        "encode_passages_per_second": len(texts) / seconds,
        "torch_threads": torch.get_num_threads(),
    }


def table(rows: dict) -> str:
    base = rows["torch"]
    lines = [
        "| system | build s | extra peak MiB | queries/s | × torch queries/s | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for system, r in rows.items():
        lines.append(
            f"| {system} | {r['build_seconds']:.2f} | {r['extra_peak_mib']:.0f} | "
            f"{r['queries_per_second']:.0f} | "
            f"{r['queries_per_second'] / base['queries_per_second']:.2f} | {r['recall@10']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", default=str(SQUAD), help="a pairs source; 'none' to skip")
    p.add_argument("--real-cap", type=int, default=None, help="index only this many passages")
    p.add_argument("--tag", default="cpu-2core", help="results file: index-<tag>.json/.md")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, Path(args.data))))
        return
    import faiss
    import torch

    record = {
        "command": "python benchmarks/index_bench.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "versions": {"faiss": faiss.__version__, "torch": torch.__version__},
        "faiss_threads": faiss.omp_get_max_threads(),
        "pools": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        synth = Path(tmp) / "synthetic"
        synth.mkdir()
        vectors, queries = synthetic(args.n, args.dim, args.queries, args.seed)
        np.save(synth / "vectors.npy", vectors)
        np.save(synth / "queries.npy", queries)
        del vectors
        name = f"synthetic {args.n:,} x {args.dim}"
        record["pools"][name] = {"systems": run_pool(name, synth)}
        if args.real != "none" and Path(args.real).exists():
            real = Path(tmp) / "real"
            real.mkdir()
            about = real_pool(args.real, args.real_cap, args.queries, args.seed, real)
            name = f"{Path(args.real).name}: {about['passages']:,} passages x {about['dim']}"
            record["pools"][name] = {**about, "systems": run_pool(name, real)}
    write(record, ROOT / "benchmarks" / "results" / f"index-{args.tag}")


def write(record: dict, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    parts = [
        f"# FAISS indexes against exact torch search\n\n`{record['command']}` on "
        f"{record['machine']} (faiss {record['versions']['faiss']}, "
        f"{record['faiss_threads']} threads).\n"
    ]
    for name, pool in record["pools"].items():
        extra = ""
        if "encode_passages_per_second" in pool:
            extra = (
                f" {pool['queries']} of its questions as queries; MiniLM encoded "
                f"{pool['encode_passages_per_second']:.1f} passages/s."
            )
        parts.append(f"## {name}\n{extra}\n\n{table(pool['systems'])}\n")
    text = "\n".join(parts)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
