"""The lesson's demo after the course's default training, for several seeds and both precisions.

The original lesson claimed that its towers ranked the answer to "What is the tallest mountain in
the world?" above the question's own text and "Who is Donald Duck?". This script trains qa_lib's
default towers as ``make demo`` does (the embedded data, 5 epochs, batch 32, validation each epoch)
once per seed and precision, and prints the three scores, the question flag's probability for the
answer, and the test split's metrics, all of the towers after the last epoch (``make demo``
reloads the epoch with the best validation MRR@10 instead).

    python benchmarks/demo_seeds.py --seeds 0,1,2 --precisions fp32,bf16

bf16 is emulated (and slow) on CPUs without AVX512-BF16 or AMX. Writes one JSON line per run to
``--out`` (default ``runs/bench/demo_seeds.jsonl``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from qa_lib import DualEncoder, TrainConfig, evaluate, fit, load_pairs
from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION
from qa_lib.evaluate import demo_scores
from qa_lib.reporting import markdown_table

COLUMNS = ("answer", "question", "Donald Duck", "margin", "p(answer)", "recall@1", "echo", "mixed")


def run(seed: int, precision: str, splits) -> dict:
    """Train the default towers with this seed and precision; the demo and the test metrics."""
    train, val, test = splits
    start = time.perf_counter()
    model = DualEncoder.from_config(seed=seed)
    config = TrainConfig(num_epochs=5, seed=seed, precision=precision)
    fit(model, train, val, config, progress=False)
    scores = dict(demo_scores(model))
    p = model.question_probability([DEMO_QUESTION, DEMO_ANSWER, DEMO_DISTRACTOR]).tolist()
    metrics = evaluate(model, test)
    return {
        "seed": seed,
        "precision": precision,
        "scores": {
            "answer": scores[DEMO_ANSWER],
            "question": scores[DEMO_QUESTION],
            "Donald Duck": scores[DEMO_DISTRACTOR],
        },
        "p_question": {"question": p[0], "answer": p[1], "Donald Duck": p[2]},
        "metrics": {k: metrics[k] for k in ("recall@1", "question_echo_rate", "mixed_pool_rate")},
        "seconds": time.perf_counter() - start,
    }


def row(r: dict) -> dict:
    s, m = r["scores"], r["metrics"]
    cells = (
        s["answer"],
        s["question"],
        s["Donald Duck"],
        s["answer"] - s["question"],
        r["p_question"]["answer"],
        m["recall@1"],
        m["question_echo_rate"],
        m["mixed_pool_rate"],
    )
    return dict(zip(COLUMNS, (f"{x:.3f}" for x in cells)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--out", default="runs/bench/demo_seeds.jsonl")
    args = parser.parse_args()
    splits = [load_pairs("default", s) for s in ("train", "validation", "test")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = {}
    with out.open("w") as handle:
        for precision in args.precisions.split(","):
            for seed in map(int, args.seeds.split(",")):
                record = run(seed, precision, splits)
                handle.write(json.dumps(record) + "\n")
                rows[f"{precision}, seed {seed}"] = row(record)
                print(json.dumps(record), flush=True)
    print(markdown_table(rows, COLUMNS, "run"))


if __name__ == "__main__":
    main()
