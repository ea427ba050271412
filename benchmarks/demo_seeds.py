"""`make demo` for several seeds and both precisions: the gain of training and the lesson's demo.

The original lesson claimed that its towers ranked the answer to "What is the tallest mountain in
the world?" above the question's own text and "Who is Donald Duck?". This script runs ``make
demo``'s job itself (``python -m qa_lib quickstart``: the embedded data, 5 epochs of topic-aware
batches of 32, the towers of the epoch with the best validation MRR@10) once per seed and
precision, and prints the validation split's Recall@1 and MRR@10 of the chosen epoch (where
options are compared: ``--options=--symmetric``), the test split's Recall@1 before and after
training, the echo and mixed-pool rates, the three demo scores and the question flag's
probability for the demo's answer.

    python benchmarks/demo_seeds.py --seeds 0,1,2 --precisions fp32,bf16

bf16 is emulated (and slow) on CPUs without AVX512-BF16 or AMX. Writes one JSON line per run to
``--out`` (default ``runs/bench/demo_seeds.jsonl``), then a Markdown table with the mean and
standard deviation of each column per precision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from qa_lib import DualEncoder
from qa_lib.cli import main as cli_main
from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION
from qa_lib.reporting import markdown_table

COLUMNS = (
    "val R@1",
    "val MRR@10",
    "untrained R@1",
    "trained R@1",
    "gain",
    "echo",
    "mixed",
    "answer",
    "question",
    "Donald Duck",
    "margin",
    "p(answer)",
    "seconds",
)


def run(seed: int, precision: str, extra: list[str]) -> dict:
    """``make demo`` with this seed and precision (and ``extra`` quickstart options), read back
    from its metrics.json."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        argv = ["--quiet", "quickstart", "--seed", str(seed), "--precision", precision, *extra]
        cli_main(argv + ["--out", str(out)])
        record = json.loads((out / "metrics.json").read_text())
        model = DualEncoder.load(out / "best")
        p = model.question_probability([DEMO_QUESTION, DEMO_ANSWER, DEMO_DISTRACTOR]).tolist()
    before, after = record["test"]["untrained"], record["test"]["trained"]
    history = record["history"]
    chosen = history["epochs"][history["best_epoch"] - 1]
    scores = dict(record["demo"]["trained"])
    return {
        "seed": seed,
        "precision": precision,
        "options": extra,
        "best_epoch": history["best_epoch"],
        "validation": {k: chosen[k] for k in ("recall@1", "mrr@10")},
        "untrained": {k: before[k] for k in ("recall@1", "mrr@10")},
        "trained": {
            k: after[k] for k in ("recall@1", "mrr@10", "question_echo_rate", "mixed_pool_rate")
        },
        "scores": {
            "answer": scores[DEMO_ANSWER],
            "question": scores[DEMO_QUESTION],
            "Donald Duck": scores[DEMO_DISTRACTOR],
        },
        "p_question": {"question": p[0], "answer": p[1], "Donald Duck": p[2]},
        "seconds": record["wall_seconds"],
    }


def cells(r: dict) -> tuple:
    s, before, after = r["scores"], r["untrained"], r["trained"]
    return (
        r["validation"]["recall@1"],
        r["validation"]["mrr@10"],
        before["recall@1"],
        after["recall@1"],
        after["recall@1"] - before["recall@1"],
        after["question_echo_rate"],
        after["mixed_pool_rate"],
        s["answer"],
        s["question"],
        s["Donald Duck"],
        s["answer"] - s["question"],
        r["p_question"]["answer"],
        r["seconds"],
    )


def summary(records: list[dict]) -> str:
    rows = {}
    for r in records:
        rows[f"{r['precision']}, seed {r['seed']}"] = {
            c: f"{x:.3f}" if c != "seconds" else f"{x:.0f}" for c, x in zip(COLUMNS, cells(r))
        }
    for precision in dict.fromkeys(r["precision"] for r in records):
        columns = list(zip(*(cells(r) for r in records if r["precision"] == precision)))
        spread = (statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns)
        rows[f"{precision}, mean ± std"] = {
            c: f"{statistics.mean(x):.3f} ± {d:.3f}" for c, x, d in zip(COLUMNS, columns, spread)
        }
    return markdown_table(rows, COLUMNS, "run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--out", default="runs/bench/demo_seeds.jsonl")
    parser.add_argument(
        "--options",
        default="",
        help='more quickstart options, e.g. --options="--symmetric --lr 1e-4"',
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    with out.open("w") as handle:
        for precision in args.precisions.split(","):
            for seed in map(int, args.seeds.split(",")):
                records.append(run(seed, precision, args.options.split()))
                handle.write(json.dumps(records[-1]) + "\n")
                print(json.dumps(records[-1]), flush=True)
    print(summary(records))


if __name__ == "__main__":
    main()
