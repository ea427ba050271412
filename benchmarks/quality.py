"""Retrieval quality on real held-out data: qa_lib against the systems a practitioner would use.

Every system is measured in one run on the same split and the same candidate pool:

  bm25            BM25 from the ``bm25s`` package (k1=0.9, b=0.4, English stop words), no training
  random_init     the original lesson's towers: a 3-layer BERT of the MiniLM config with random
                  weights, CLS pooling, raw dot product, no echo term, 5 epochs
  untrained       the pretrained MiniLM towers (qa_lib defaults), not trained
  qa_lib          qa_lib fine-tuned, two separate towers, library defaults (the question flag's
                  detector learns from the echoes)
  qa_lib_tied     the same with one shared tower (no question flag: a tied model has no answer side)
  qa_lib_hardneg  qa_lib with one BM25-mined hard negative per pair (qa_lib.negatives)
  qa_lib_noecho   qa_lib without the echo objective: the same towers, the detector untrained
  qa_lib_ungrouped  qa_lib with random batches instead of topic-aware ones (only run where the
                  pairs carry topics: SQuAD articles, MedQuAD diseases)
  echo_negative   no question flag; each question's echo is one extra in-batch negative (weight 1)
                  that trains the towers apart: the first fix tried (issue 6)
  echo_negative_w0.1  the same with weight 0.1
  flag_lr_0.02    qa_lib with the detector's learning rate at 0.02 instead of 0.1 (called
                  prior_lr_0.02 before the answer prior was renamed the question flag)
  flag_v1         the question flag of qa_lib 0.1: its detector reads the middle layer's mean only
                  and learns from echoes and answers alone (no form views)
  exact_filter    the qa_lib_noecho towers; candidates equal to the query (case and punctuation
                  aside) dropped: fixes the echo, not a paraphrase
  rule_filter     the qa_lib_noecho towers; candidates ending in "?" or opening with a wh-word or
                  an auxiliary dropped (qa_lib.evaluate.looks_like_question)
  st_mnrl         sentence-transformers MultipleNegativesRankingLoss from the same base model with
                  the same data, epochs, batch size, learning rate and weight decay
  untrained_hybrid  the untrained towers plus BM25 (qa_lib.hybrid: dense + w * bm25(q, d) /
                  bm25(q, q)), w tuned on validation pairs (below)
  qa_lib_hybrid   the same with the fine-tuned qa_lib towers (the qa_lib run of the same seed is
                  reused when it ran in the same job)

The qa_lib systems from random_init to flag_lr_0.02 are the named variants of
``qa_lib.experiments.VARIANTS`` (notebook 05 trains the same ones); bm25 is
``qa_lib.evaluate.bm25_metrics`` and st_mnrl the adapter of ``benchmarks/peers.py``, all measured
by the same metrics (``qa_lib.metrics``).

The hybrids' BM25 weight is the one with the best MRR@10 on validation pairs: up to 500 training
pairs left out of the training sample (never test pairs; on SQuAD and MedQuAD they share articles
and diseases, often answers, with the sample); where the sample took every training pair (nq), on
the training pairs themselves. Both favour the dense side: the towers have seen those answers.

Metrics (qa_lib.metrics' definitions): Recall@1/5/10, MRR@10, nDCG@10, the question-echo rate
(the question's own text, added as a candidate, ties or beats its best answer), the mixed-pool rate
(every test question added to the pool: some question ties or beats the answer) and the share of
real answers the flag or rule takes for questions. Trained systems:
mean ± std over seeds; the split is fixed (seed 0), the seed changes init, data order and dropout.

    python benchmarks/quality.py --datasets nq --quick            # 1 seed, 10 training steps
    python benchmarks/quality.py --datasets nq,medquad,squad      # full: 3 seeds
    python benchmarks/quality.py --datasets path/to/beir-folder   # train qrels -> test qrels
    python benchmarks/quality.py --datasets nq --echo-curve --systems qa_lib,qa_lib_noecho
    python benchmarks/quality.py --datasets nq,medquad,squad --quick --echo-study   # 500 s
    python benchmarks/quality.py --datasets nq --tune --systems qa_lib,qa_lib_tied  # validation

Quick mode on nq-sample-dlai, the eight main systems: 190 s on 2 quiet CPU cores. Full mode: nq
with all systems 21 min (fp32, before bf16 became the CPU default); MedQuAD and SQuAD with bm25,
random_init, untrained, qa_lib, qa_lib_tied, qa_lib_ungrouped and st_mnrl 75 min together (bf16).
All nine systems on all three datasets: about two hours there, estimated from the per-system times
(not run as one job); choose with ``--systems``. bm25, untrained, qa_lib and the two hybrids on all
three datasets: 50 min on a slower 2-core EPYC without AVX512-BF16 (fp32).

Writes ``<dataset>.md``, ``<dataset>.json`` and ``<dataset>.png`` under ``runs/bench/quality/``;
with two or more of the echo variants (qa_lib, qa_lib_noecho, echo_negative, ...) also
``<dataset>-echo.md`` and ``<dataset>-echo.png`` (the mixed-pool rate against Recall@1, default
marked); with a learned flag, ``<dataset>-flag.md``: its false flags by answer length.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import peers  # benchmarks/peers.py: sentence-transformers as a qa_lib scorer

from qa_lib import TrainConfig, evaluate
from qa_lib.config import default_model_path
from qa_lib.data import read_pairs
from qa_lib.evaluate import (
    LENGTH_BUCKETS,
    QUESTION_ANSWERS,
    STRESS_ROWS,
    bm25_metrics,
    flag_by_length,
)
from qa_lib.experiments import VARIANTS, train_variant
from qa_lib.hybrid import tune_lexical_weight
from qa_lib.metrics import METRIC_KEYS, build_task
from qa_lib.plotting import plot_metric_bars, save_figure
from qa_lib.reporting import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FILES = {
    "nq": "nq-sample-dlai/nq_sample.tsv",
    "medquad": "medquad/medquad_qa_pairs.jsonl.gz",
    "squad": "squad-v1.1/dev-v1.1.json",
}
MAIN_SYSTEMS = (
    "bm25",
    "random_init",
    "untrained",
    "qa_lib",
    "qa_lib_tied",
    "qa_lib_hardneg",
    "qa_lib_noecho",
    "qa_lib_ungrouped",
    "st_mnrl",
    "untrained_hybrid",
    "qa_lib_hybrid",
)
ECHO_EXTRA = ("echo_negative", "echo_negative_w0.1", "flag_lr_0.02")  # with --echo-curve
# with --echo-study: the obvious ways to keep questions out of the answers' places, side by side
ECHO_STUDY = ("qa_lib_noecho", "exact_filter", "rule_filter", "echo_negative", "flag_v1", "qa_lib")
# issue 16's levers for separate towers, each a variant of qa_lib.experiments (with --tune)
LEVERS = (
    "qa_lib_symmetric",
    "qa_lib_lr2e-5",
    "qa_lib_lr1e-4",
    "qa_lib_alr0.3",
    "qa_lib_alr0",
    "qa_lib_attn0",
    "qa_lib_alen256",
    "untrained_alen256",
    "qa_lib_proj",
    "qa_lib_sharedproj",
    "qa_lib_sharedproj_lr20",
    "qa_lib_warmup0",
    "qa_lib_warmup0.3",
)
SYSTEMS = tuple(dict.fromkeys(MAIN_SYSTEMS + ECHO_EXTRA + ECHO_STUDY + LEVERS))
# echo-trade-off systems: the same towers or training, differing in how the echo is pushed down
ECHO_VARIANTS = (
    "qa_lib",
    "flag_v1",
    "qa_lib_noecho",
    "exact_filter",
    "rule_filter",
    "echo_negative",
    "echo_negative_w0.1",
    "flag_lr_0.02",
)
SEEDLESS = ("bm25", "untrained", "untrained_alen256", "untrained_hybrid")  # measured once
HYBRIDS = {"untrained_hybrid": "untrained", "qa_lib_hybrid": "qa_lib"}  # hybrid -> its towers
# a filter on towers trained without the echo objective (qa_lib.evaluate's echo_filter)
FILTERS = {"exact_filter": ("qa_lib_noecho", "exact"), "rule_filter": ("qa_lib_noecho", "rule")}
FILTER_ABOUT = {
    "exact_filter": "no flag; candidates equal to the query (case, punctuation aside) dropped",
    "rule_filter": 'no flag; candidates ending in "?" or opening with a wh-word/auxiliary dropped',
}
FLAGGED = ("qa_lib", "flag_v1")  # learned flags: their false flags by answer length are reported
KEYS = tuple(k for k in METRIC_KEYS if k != "mean_rank")  # the metrics the tables show


@dataclass
class Budget:
    """What every trained system gets (the same for all of them)."""

    num_epochs: int = 1  # passes over the (subsampled) training pairs
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    max_train: int | None = 1600  # training pairs kept (seeded sample); None = all
    max_test: int | None = None  # test questions kept (seeded sample; the pool is unchanged)
    max_val: int = 500  # validation pairs (training pairs not sampled) that tune hybrid weights
    seeds: int = 3
    lesson_epochs: int = 5  # the original lesson trained its random-init towers 5 epochs
    progress: bool = False  # tqdm bars while training
    tune: bool = False  # measure on a validation split carved from the training pairs, not test


QUICK = Budget(num_epochs=1, max_train=320, max_test=500, seeds=1)


@dataclass
class Setup:
    """One dataset's split: the training pairs, the test pairs and how they were made."""

    name: str
    train: object  # qa_lib.data.Pairs
    test: object  # qa_lib.data.Pairs
    val: object  # qa_lib.data.Pairs: tunes the hybrids' weight; never the test pairs
    notes: list[str] = field(default_factory=list)
    models: dict = field(default_factory=dict)  # (system, seed) -> (model, training s), for hybrids
    flags: dict = field(default_factory=dict)  # (system, seed) -> flag_by_length of its model


# ----------------------------------------------------------------------------- datasets


def split_by(pairs, test_keys: set, keys: list) -> tuple:
    """Rows whose key is in ``test_keys`` are test, the others train."""
    train = pairs.select(i for i, k in enumerate(keys) if k not in test_keys)
    test = pairs.select(i for i, k in enumerate(keys) if k in test_keys)
    return train, test


def load_split(name: str, data_dir: Path):
    """The named dataset's train/test pairs, or a string saying why it is skipped."""
    path = data_dir / FILES[name] if name in FILES else Path(name)
    if not path.exists():
        return f"{path} not found (shared data absent)"
    pairs = read_pairs(path)
    if name == "nq":
        rows = list(range(len(pairs)))
        test_rows = set(random.Random(0).sample(rows, round(0.2 * len(rows))))
        return (*split_by(pairs, test_rows, rows), "seeded 80/20 split of the pairs")
    if name == "squad":
        titles = sorted(set(pairs.groups))
        random.Random(0).shuffle(titles)
        test = set(titles[:10])
        note = f"{len(titles) - 10} train / 10 test articles (seeded)"
        return (*split_by(pairs, test, pairs.groups), note)
    if pairs.splits is None or "test" not in pairs.splits or "train" not in pairs.splits:
        return f"{path}: no train and test split labels"
    train, test = split_by(pairs, {"test"}, pairs.splits)
    return train, test, "the source's own split (MedQuAD: by topic; BEIR: qrels files)"


def sample_rows(n: int, limit: int | None) -> list[int]:
    """A seeded sample of ``limit`` of ``range(n)``, sorted; all rows when they are fewer."""
    if limit is None or n <= limit:
        return list(range(n))
    return sorted(random.Random(0).sample(range(n), limit))


def sample(pairs, limit: int | None, what: str, notes: list[str]):
    """A seeded sample of ``limit`` rows (noted), or all rows."""
    rows = sample_rows(len(pairs), limit)
    if len(rows) == len(pairs):
        return pairs
    notes.append(f"{what}: a seeded sample of {limit} of {len(pairs)} pairs")
    return pairs.select(rows)


def validation_pairs(train_all, train_rows: list[int], limit: int, notes: list[str]):
    """Up to ``limit`` training pairs outside the training sample; the sample itself if none."""
    taken = set(train_rows)
    spare = [i for i in range(len(train_all)) if i not in taken]
    if len(spare) < 100:
        notes.append("hybrid weight tuned on the training pairs (none left out of the sample)")
        return train_all.select(train_rows)
    rows = [spare[i] for i in sample_rows(len(spare), limit)]
    notes.append(f"hybrid weight tuned on {len(rows)} training pairs left out of the sample")
    return train_all.select(rows)


def tuning_split(train_all, share: float = 0.2) -> tuple:
    """``(train, validation)`` from the training pairs alone: a seeded ``share`` of the groups
    (articles, topics) where the pairs carry them, else of the pairs. The test pairs stay unseen."""
    keys = train_all.groups or list(range(len(train_all)))
    distinct = sorted(set(keys), key=str)
    held = set(random.Random(0).sample(distinct, max(1, round(share * len(distinct)))))
    what = "groups" if train_all.groups else "pairs"
    train, val = split_by(train_all, held, keys)
    return train, val, f"tuning: validation = {len(held)} of {len(distinct)} training {what}"


def make_setup(name: str, data_dir: Path, budget: Budget) -> Setup | str:
    """Load, split and subsample one dataset; a string when it is skipped.

    With ``budget.tune`` the test pairs are left out: the systems are measured on a validation
    split of the training pairs (:func:`tuning_split`), where settings may be chosen.
    """
    loaded = load_split(name, data_dir)
    if isinstance(loaded, str):
        return loaded
    train_all, test, how = loaded
    if budget.tune:
        train_all, test, tuning = tuning_split(train_all)
        how, name = f"{how}; {tuning} (test pairs unused)", f"{Path(name).name}-tune"
    held = "validation" if budget.tune else "test"
    notes = [f"split: {how}; {len(train_all)} train / {len(test)} {held} pairs"]
    rows = sample_rows(len(train_all), budget.max_train)
    train = sample(train_all, budget.max_train, "training", notes)
    val = validation_pairs(train_all, rows, budget.max_val, notes)
    test = _sample_questions(test, budget.max_test, notes)
    return Setup(Path(name).name, train, test, val, notes)


def _sample_questions(test, limit: int | None, notes: list[str]):
    """Keep ``limit`` test questions but every candidate: the pool is fixed before sampling."""
    if test.corpus is None:
        test = test.select(range(len(test)))
        test.corpus = list(dict.fromkeys(test.answers))
    return sample(test, limit, "test questions (pool kept whole)", notes)


# ----------------------------------------------------------------------------- systems


def train_budget(budget: Budget) -> TrainConfig:
    """The training settings every trained qa_lib variant shares (qa_lib.experiments)."""
    return TrainConfig(
        num_epochs=budget.num_epochs,
        batch_size=budget.batch_size,
        lr=budget.lr,
        weight_decay=budget.weight_decay,
    )


def trained_model(system: str, setup: Setup, budget: Budget, seed: int, keep: bool = False):
    """(model, training seconds) of a qa_lib variant: from ``setup.models`` or trained now.

    With ``keep`` the model and its training time are kept in ``setup.models`` for the hybrids.
    """
    if (system, seed) in setup.models:
        return setup.models[(system, seed)]
    start = time.perf_counter()
    model = train_variant(
        system,
        setup.train,
        train_budget(budget),
        seed=seed,
        lesson_epochs=budget.lesson_epochs,
        progress=budget.progress,
    )
    made = (model, time.perf_counter() - start)
    if keep:
        setup.models[(system, seed)] = made
    return made


def run_hybrid(system: str, setup: Setup, budget: Budget, seed: int) -> dict:
    """A qa_lib model plus BM25, the weight tuned on the validation pairs; wall time includes
    the towers' training even when they were reused."""
    reused = (HYBRIDS[system], seed) in setup.models
    model, train_s = trained_model(HYBRIDS[system], setup, budget, seed)
    weight, _ = tune_lexical_weight(model, setup.val)
    metrics = evaluate(model, setup.test, lexical_weight=weight)
    return metrics | {"lexical_weight": weight, "reused_s": train_s if reused else 0.0}


def run_st(setup: Setup, budget: Budget, seed: int) -> dict:
    """sentence-transformers MNRL fine-tune (one shared tower); evaluated with qa_lib's metrics."""
    model = peers.st_model(default_model_path(), max_seq_length=128, device="cpu")
    peers.train_mnrl(
        model,
        setup.train.questions,
        setup.train.answers,
        num_train_epochs=budget.num_epochs,
        per_device_train_batch_size=budget.batch_size,
        learning_rate=budget.lr,
        weight_decay=budget.weight_decay,
        seed=seed,
        use_cpu=True,
    )
    return evaluate(peers.STEncoder(model), setup.test)


def run_system(system: str, setup: Setup, budget: Budget, seed: int, keep=()) -> dict:
    """One system, one seed: its metrics and wall time (training + evaluation)."""
    start = time.perf_counter()
    if system == "bm25":
        metrics = bm25_metrics(setup.test)
    elif system == "st_mnrl":
        metrics = run_st(setup, budget, seed)
    elif system in HYBRIDS:
        metrics = run_hybrid(system, setup, budget, seed)
    elif system in FILTERS:
        towers, kind = FILTERS[system]
        model, train_s = trained_model(towers, setup, budget, seed)
        metrics = evaluate(model, setup.test, echo_filter=kind)
        metrics["reused_s"] = train_s
    else:  # a qa_lib variant
        model, _ = trained_model(system, setup, budget, seed, keep=system in keep)
        metrics = evaluate(model, setup.test)
        if system in FLAGGED:
            setup.flags[(system, seed)] = flag_by_length(model, setup.test)
    gc.collect()
    wall = time.perf_counter() - start + metrics.get("reused_s", 0.0)  # reused towers' training
    extra = {"lexical_weight": metrics["lexical_weight"]} if "lexical_weight" in metrics else {}
    return {**{k: metrics[k] for k in KEYS}, **extra, "wall_s": wall}


# ----------------------------------------------------------------------------- reporting


def summarise(runs: list[dict]) -> dict:
    """Mean and (with 2+ runs) standard deviation of each metric over seeds."""
    out = {}
    for key in (*KEYS, "wall_s"):
        values = [r[key] for r in runs]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    out["seeds"] = len(runs)
    return out


def fmt(summary: dict, key: str) -> str:
    std = summary.get(f"{key}_std")
    value = f"{summary[key]:.3f}"
    return value if std is None else f"{value} ± {std:.3f}"


def label(system: str, summary: dict) -> str:
    """The system's name, with the BM25 weights its hybrid runs chose."""
    weights = sorted(
        {r["lexical_weight"] for r in summary.get("runs", []) if "lexical_weight" in r}
    )
    return f"{system} (BM25 weight {', '.join(map(str, weights))})" if weights else system


def table(name: str, setup_info: dict, results: dict) -> str:
    """The Markdown table of one dataset, with its pool size, chance level and notes."""
    columns = ("seeds", *KEYS, "wall s / seed")
    rows = {
        label(system, s): {"seeds": str(s["seeds"]), "wall s / seed": f"{s['wall_s']:.0f}"}
        | {k: fmt(s, k) for k in KEYS}
        for system, s in results.items()
    }
    held = "validation" if name.endswith("-tune") else "test"
    lines = [
        f"### {name}: {setup_info['n_questions']} {held} questions, pool of "
        f"{setup_info['n_candidates']} candidates, chance Recall@1 = {setup_info['chance']:.4f}",
        "",
        *[f"- {note}" for note in setup_info["notes"]],
        "",
        markdown_table(rows, columns, "system"),
    ]
    return "\n".join(lines)


def plot(results: dict, chance: float, path: Path) -> None:
    """Grouped bars of the means, with the chance Recall@1 line."""
    means = {name: {k: s[k] for k in KEYS} for name, s in results.items()}
    fig = plot_metric_bars(means, keys=KEYS, chance=chance)
    if len(means) > 4:  # value labels of many bars overlap: the table has the numbers
        for text in list(fig.axes[0].texts):
            text.remove()
        fig.set_size_inches(8, 3.5)
    save_figure(fig, path)


def plot_echo_tradeoff(results: dict, marked: str | None = None, title: str = ""):
    """Recall@1 against the mixed-pool rate, one point per system (up and left is better).

    The mixed-pool rate (every test question added to the pool, how often one outranks the
    answer) includes the echo and its paraphrases, so it separates an exact-duplicate filter
    from a flag. Labels are listed beside the points, so points that coincide stay readable.

    Args:
        results: per system, ``recall@1`` and ``mixed_pool_rate`` (optionally with ``_std``
            values, drawn as error bars).
        marked: the system to mark as the chosen default (a star).
        title: the figure's title.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    x_key = (
        "mixed_pool_rate"
        if all("mixed_pool_rate" in m for m in results.values())
        else ("question_echo_rate")
    )
    for i, (name, m) in enumerate(results.items()):
        star = name == marked
        ax.errorbar(
            m[x_key],
            m["recall@1"],
            xerr=m.get(f"{x_key}_std") or None,
            yerr=m.get("recall@1_std") or None,
            fmt="*" if star else "o",
            ms=12 if star else 6,
            color="black" if star else f"C{i % 10}",
            capsize=2,
            label=f"{name} (default)" if star else name,
        )
    what = "questions outrank the answer, with every test question in the pool"
    if x_key == "question_echo_rate":
        what = "the question's own text outranks its answer"
    ax.set(
        xlabel=f"share of questions where {what}\n(lower is better)",
        ylabel="recall@1",
        xlim=(-0.05, 1.05),
        title=title or "Keeping questions out of the answers' places",
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


ECHO_COLUMNS = (
    "how the echo is pushed down",
    "seeds",
    "echo rate",
    "mixed-pool rate",
    "answers flagged",
    "recall@1",
    "Δ recall@1 vs no echo",
    "recall@1 with echo",
)


def echo_row(variant: str, results: dict) -> dict:
    """One echo variant's cells; its Δ recall@1 is paired by seed against ``qa_lib_noecho``."""
    r, base = results[variant], results.get("qa_lib_noecho")
    delta = "–"
    if base is not None and variant != "qa_lib_noecho":
        pairs = [a["recall@1"] - b["recall@1"] for a, b in zip(r["runs"], base["runs"])]
        delta = f"{statistics.fmean(pairs):+.3f}"
    cells = (
        FILTER_ABOUT[variant] if variant in FILTERS else VARIANTS[variant].about,
        str(r["seeds"]),
        fmt(r, "question_echo_rate"),
        fmt(r, "mixed_pool_rate"),
        fmt(r, "answer_flag_rate"),
        fmt(r, "recall@1"),
        delta,
        fmt(r, "recall@1_with_echo"),
    )
    return dict(zip(ECHO_COLUMNS, cells))


def echo_tradeoff(name: str, info: dict, results: dict, out: Path) -> str | None:
    """The echo variants' table and plot (echo rate vs Recall@1); None if fewer than two ran.

    ``Δ recall@1`` is paired by seed against ``qa_lib_noecho``: the same seeds, so the same data
    order; with the question flag the towers are even the same (only the flag differs).
    """
    variants = [v for v in ECHO_VARIANTS if v in results]
    if len(variants) < 2:
        return None
    rows = {v: echo_row(v, results) for v in variants}
    text = "\n".join(
        [
            f"#### {name}: the echo trade-off ({info['n_questions']} test questions)",
            "",
            markdown_table(rows, ECHO_COLUMNS, "system"),
        ]
    )
    (out / f"{name}-echo.md").write_text(text + "\n")
    points = {s: r for s, r in results.items() if s not in ("random_init",)}
    title = f"{name}: keeping questions out of the answers' places"
    fig = plot_echo_tradeoff(points, marked="qa_lib" if "qa_lib" in results else None, title=title)
    save_figure(fig, out / f"{name}-echo.png")
    return text


def flag_table(setup: Setup, out: Path) -> str | None:
    """The learned flags' false flags by answer length (qa_lib.evaluate.flag_by_length), per
    system, the worst seed shown: for answers, the most penalised at all (p > 0.5) and the largest
    p; for questions (and answers that are questions), the fewest flagged."""
    if not setup.flags:
        return None
    systems = list(dict.fromkeys(system for system, _ in setup.flags))
    rows = {}
    buckets = [f"answers {b}" for b in LENGTH_BUCKETS] + [QUESTION_ANSWERS, "questions (echoes)"]
    buckets += STRESS_ROWS
    for bucket in buckets:
        cells = {}
        for system in systems:
            stats = [v[bucket] for (s, _), v in setup.flags.items() if s == system]
            n = int(stats[0]["n"])
            if not n:
                cells[system] = "-"
            elif bucket.startswith("questions") or bucket == QUESTION_ANSWERS:  # to be flagged
                cells[system] = f"{min(x['flag_rate'] for x in stats):.3f}"
            else:
                rate, top = max(x["flag_rate"] for x in stats), max(x["max_p"] for x in stats)
                cells[system] = f"{rate:.3f} (max p {top:.2f})"
        rows[f"{bucket} (n = {n})"] = cells
    median = int(next(iter(setup.flags.values()))["median question tokens"]["n"])
    text = "\n".join(
        [
            f"#### {setup.name}: share flagged by length (median question: {median} tokens; "
            "shorter: < 0.75x, as long: up to 1.5x; worst seed: answers the most flagged, "
            "questions the fewest; an answer that is a single question is counted apart)",
            "",
            markdown_table(rows, systems, "texts"),
        ]
    )
    (out / f"{setup.name}-flag.md").write_text(text + "\n")
    return text


# ----------------------------------------------------------------------------- main


def run_dataset(name: str, data_dir: Path, budget: Budget, systems, out: Path) -> str | None:
    """Every system on one dataset; writes .md, .json and .png; returns the table."""
    setup = make_setup(name, data_dir, budget)
    if isinstance(setup, str):
        print(f"skipping {name}: {setup}", file=sys.stderr)
        return None
    task = build_task(setup.test)
    info = {
        "n_train": len(setup.train),
        "n_questions": len(task.questions),
        "n_candidates": len(task.candidates),
        "chance": task.chance_recall_at_1,
        "notes": setup.notes,
    }
    results = {}
    if setup.train.groups is None and "qa_lib_ungrouped" in systems:
        systems = [s for s in systems if s != "qa_lib_ungrouped"]  # the same as qa_lib here
        setup.notes.append("no topic labels: batches are random, qa_lib_ungrouped not run")
    keep = {HYBRIDS[s] for s in systems if s in HYBRIDS}  # towers the hybrids reuse
    keep |= {FILTERS[s][0] for s in systems if s in FILTERS}  # ... and the filters
    for system in systems:
        seeds = [0] if system in SEEDLESS else list(range(budget.seeds))
        runs = []
        for seed in seeds:
            runs.append(run_system(system, setup, budget, seed, keep))
            print(f"{setup.name} {system} seed {seed}: {runs[-1]}", file=sys.stderr, flush=True)
        results[system] = summarise(runs) | {"runs": runs}
    text = table(setup.name, info, results)
    out.mkdir(parents=True, exist_ok=True)
    record = {"dataset": setup.name, "setup": info, "budget": asdict(budget), "results": results}
    (out / f"{setup.name}.json").write_text(json.dumps(record, indent=2))
    (out / f"{setup.name}.md").write_text(text + "\n")
    plot(results, info["chance"], out / f"{setup.name}.png")
    tradeoff = echo_tradeoff(setup.name, info, results, out)
    flags = flag_table(setup, out)
    return "\n\n".join(t for t in (text, tradeoff, flags) if t)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="nq,medquad,squad", help="names or BEIR folders")
    parser.add_argument("--quick", action="store_true", help="subsampled, 1 seed (<= 5 min)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per trained system")
    parser.add_argument("--systems", default=",".join(MAIN_SYSTEMS), help=f"from {SYSTEMS}")
    parser.add_argument(
        "--echo-study",
        action="store_true",
        help=f"run {ECHO_STUDY} only: how each keeps questions out of the answers' places",
    )
    parser.add_argument(
        "--echo-curve",
        action="store_true",
        help=f"also run {ECHO_EXTRA}: more points on the echo trade-off curve",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="measure on a validation split of the training pairs (where settings are chosen)",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-train", type=int, default=None, help="training pairs kept")
    parser.add_argument("--data-dir", default=str(SHARED))
    parser.add_argument("--out", default="runs/bench/quality")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    budget = QUICK if args.quick else Budget()
    changes = {"seeds": args.seeds, "num_epochs": args.epochs, "max_train": args.max_train}
    changes["progress"] = args.progress or None
    changes["tune"] = args.tune or None
    budget = replace(budget, **{k: v for k, v in changes.items() if v is not None})
    systems = [s for s in args.systems.split(",") if s]
    if args.echo_study:
        systems = list(ECHO_STUDY)
    if args.echo_curve:
        systems += [s for s in ECHO_EXTRA if s not in systems]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        sys.exit(f"unknown systems {sorted(unknown)}; choose from {list(SYSTEMS)}")
    start = time.perf_counter()
    for name in args.datasets.split(","):
        text = run_dataset(name, Path(args.data_dir), budget, systems, Path(args.out))
        if text:
            print(text + "\n", flush=True)
    print(f"total wall time: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
