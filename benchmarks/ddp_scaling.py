"""Training throughput on 1 vs 2 processes (torchrun, gloo on the CPU; nccl on GPUs).

Measured in one run, same model (the packaged MiniLM), data (the embedded default training split),
global batch, steps and settings; only the launch differs:

  1 proc x T threads   one process using every core the machine lends (the single-process run)
  1 proc x 1 thread    one process, one thread: the per-process baseline of the 2-process run
  N procs x T/N        torchrun, N processes, each with its share of the global batch and of
                       the threads (OMP_NUM_THREADS = cores / N), embeddings all-gathered

Steady-state pairs/s are timed on rank 0 between step boundaries (``fit``'s ``on_step``) after
warm-up steps; every step ends with the gradient all-reduce, so rank 0's clock is the run's.
Scaling efficiency = pairs/s of N processes / (N x pairs/s of 1 process with 1 thread) when
the processes run on cores of their own; beside it the ratio to the 1-process run on the same
cores (the gain a user sees on this machine).

    python benchmarks/ddp_scaling.py                 # 2 processes on this CPU
    python benchmarks/ddp_scaling.py --device cuda --procs 2 --threads 8   # 2 GPUs

Writes ``benchmarks/results/ddp-<device>-<cores>core.json`` and ``.md`` and prints the table.
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

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def worker(args) -> None:
    """One launch: train ``warmup + steps`` steps, rank 0 writes its steady-state pairs/s."""
    import torch

    from qa_lib import DualEncoder, TrainConfig, fit, load_pairs
    from qa_lib.distributed import current_world

    torch.set_num_threads(args.threads)
    steps = args.warmup + args.steps
    train = load_pairs("default", "train")
    model = DualEncoder.from_config(seed=0)
    config = TrainConfig(
        batch_size=args.batch_size,
        max_steps=steps,
        num_epochs=100,  # max_steps ends the run
        device=args.device,
        precision=args.precision,
    )
    marks: list[float] = []

    def on_step(step: int) -> None:
        marks.append(time.perf_counter())

    fit(model, train, config=config, progress=False, on_step=on_step)
    if current_world().is_main:
        seconds = time.perf_counter() - marks[args.warmup]  # the last step ends here
        record = {"pairs_per_s": args.steps * args.batch_size / seconds, "seconds": seconds}
        Path(args.worker).write_text(json.dumps(record))


def launch(args, procs: int, threads: int) -> dict:
    """Run :func:`worker` under torchrun with ``procs`` processes of ``threads`` threads."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", str(procs), __file__, "--worker", str(result)]
        command += ["--threads", str(threads), "--batch-size", str(args.batch_size)]
        command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
        command += ["--device", args.device, "--precision", args.precision]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        subprocess.run(command, env=env, check=True)
        return {"procs": procs, "threads": threads, **json.loads(result.read_text())}


def table(rows: list[dict], baseline: dict, single: dict) -> str:
    """Markdown: pairs/s, the ratio to one process on the same cores, scaling efficiency."""
    lines = [
        "| launch | pairs/s | vs 1 process, same cores | scaling efficiency |",
        "|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["pairs_per_s"] / single["pairs_per_s"]
        efficiency = row["pairs_per_s"] / (row["procs"] * baseline["pairs_per_s"])
        name = f"{row['procs']} proc x {row['threads']} thread(s)"
        lines.append(f"| {name} | {row['pairs_per_s']:.1f} | {ratio:.2f}x | {efficiency:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="cores in all")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cores = args.threads
    per_proc = max(1, cores // args.procs)
    single = launch(args, 1, cores)
    baseline = single if cores == 1 else launch(args, 1, 1)
    multi = launch(args, args.procs, per_proc)
    rows = [single, baseline, multi] if baseline is not single else [single, multi]
    text = table(rows, baseline, single)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    record = {
        "machine": machine,
        "device": args.device,
        "global_batch": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "precision": args.precision,
        "rows": rows,
        "ratio": multi["pairs_per_s"] / single["pairs_per_s"],
        "scaling_efficiency": multi["pairs_per_s"] / (args.procs * baseline["pairs_per_s"]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"ddp-{args.device}-{os.cpu_count()}core"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    command = "python benchmarks/ddp_scaling.py " + " ".join(sys.argv[1:])
    header = f"Global batch {args.batch_size}, {args.steps} timed steps, {machine}.\n\n"
    stem.with_suffix(".md").write_text(header + text + f"\n\n`{command.strip()}`\n")
    print(header + text)


if __name__ == "__main__":
    main()
