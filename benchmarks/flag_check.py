"""Which answers the question flag penalises: train qa_lib's default variant, list its false flags.

Trains the ``qa_lib`` variant of ``benchmarks/quality.py`` on one dataset's training sample
(the same setup and budget as its full or quick mode), then prints
``qa_lib.evaluate.flag_by_length`` on the test answers, the test answers the flag penalises
(p > 0.5) with their token counts, the stress rows' mistakes (answers' first sentences flagged,
questions in the other style or closed by a full stop not flagged), the detector's probabilities
for the lesson's demo answer and question, and the held-out metrics.

    python benchmarks/flag_check.py medquad 0          # full-mode setup, seed 0 (~3 min on 2 cores)
    python benchmarks/flag_check.py squad 0,1 quick    # quick-mode setup
    python benchmarks/flag_check.py nq 0,1,2 --bare-view   # the second view bare, as before v3
"""

from __future__ import annotations

import json
import sys
import time

import quality as Q  # benchmarks/quality.py: the same datasets, splits and budgets

from qa_lib import batching
from qa_lib.config import DEMO_ANSWER, DEMO_QUESTION
from qa_lib.evaluate import evaluate, flag_by_length, stress_texts
from qa_lib.metrics import build_task

SHOWN = ("recall@1", "question_echo_rate", "mixed_pool_rate", "answer_flag_rate")


def check(name: str, seed: int, budget: Q.Budget, setup) -> None:
    """Train one seed and print what its flag penalises."""
    start = time.perf_counter()
    model, _ = Q.trained_model("qa_lib", setup, budget, seed)
    model.eval()
    report = flag_by_length(model, setup.test)
    rounded = {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in report.items()}
    print(f"== {name} seed {seed} ({time.perf_counter() - start:.0f} s) {json.dumps(rounded)}")
    task = build_task(setup.test)
    p = model.question_probability(task.candidates)
    ids = model.tokenizer(task.candidates, truncation=True, max_length=model.config.max_a_len)
    flagged = sorted(
        ((p[i].item(), len(ids["input_ids"][i]), task.candidates[i]) for i in range(len(p))),
        reverse=True,
    )
    for prob, n, text in [f for f in flagged if f[0] > 0.5][:25]:
        print(f"  p={prob:.3f} n={n} {text[:110]!r}")
    for (name, texts), wrong in zip(stress_texts(task).items(), (True, False, False)):
        if texts:  # the stress rows' mistakes: flagged first sentences, unflagged questions
            p_texts = model.question_probability(texts).tolist()
            missed = [x for x in zip(p_texts, texts) if (x[0] > 0.5) == wrong]
            missed.sort(reverse=wrong)
            for prob, text in missed[:10]:
                print(f"  {name} p={prob:.3f} {text[:110]!r}")
    demo = model.question_probability([DEMO_ANSWER, DEMO_QUESTION]).tolist()
    print(f"  p(demo answer) {demo[0]:.3f}, p(demo question) {demo[1]:.3f}")
    metrics = evaluate(model, setup.test, progress=False)
    print("  " + ", ".join(f"{k} {metrics[k]:.3f}" for k in SHOWN))


def bare_view(question: str) -> str:
    """The detector's second view before restyle_question: every question bare (qa_lib 26f63ed)."""
    return question.lower().replace("?", "").strip() or question


def main(argv: list[str]) -> None:
    if "--bare-view" in argv:  # the previous detector, for a side-by-side (its towers are the same)
        argv = [a for a in argv if a != "--bare-view"]
        batching.restyle_question = bare_view  # what tokenize_pairs builds the view with
    name, seeds = argv[0], [int(s) for s in argv[1].split(",")]
    budget = Q.QUICK if len(argv) > 2 and argv[2] == "quick" else Q.Budget()
    setup = Q.make_setup(name, Q.SHARED, budget)
    for seed in seeds:
        check(name, seed, budget, setup)


if __name__ == "__main__":
    main(sys.argv[1:])
