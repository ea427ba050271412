"""The quality benchmark's quick mode on real data: the ordering the course claims must hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, shared_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_nq(tmp_path_factory) -> dict:
    """The per-system results of one ``--quick`` run on nq-sample-dlai."""
    shared_file("nq-sample-dlai", "nq_sample.tsv")
    out = tmp_path_factory.mktemp("quality")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "quality.py"),
        "--datasets=nq",
        "--quick",
        "--systems=random_init,untrained,qa_lib,qa_lib_noecho",
        f"--data-dir={SHARED_DATA}",
        f"--out={out}",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=1800)
    assert (out / "nq.md").exists() and (out / "nq.png").exists()
    record = json.loads((out / "nq.json").read_text())
    return record["results"]


@pytest.mark.slow
@pytest.mark.parametrize("fine_tuned", ["qa_lib_noecho", "qa_lib"])
def test_quick_benchmark_orders_fine_tuned_untrained_random(quick_nq, fine_tuned):
    r1 = {name: r["recall@1"] for name, r in quick_nq.items()}
    assert r1[fine_tuned] > r1["untrained"] > r1["random_init"], r1


@pytest.mark.slow
def test_quick_benchmark_default_beats_the_echo(quick_nq):
    """The default's question flag puts the answer above the question's own text."""
    echo = {name: r["question_echo_rate"] for name, r in quick_nq.items()}
    assert echo["qa_lib"] < 0.05 and echo["qa_lib_noecho"] > 0.95, echo


def _quality_module():
    """benchmarks/quality.py as a module, with its folder importable (its ``peers`` module), as
    when it runs as a script."""
    import importlib.util

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


def test_echo_tradeoff_pairs_seeds_and_writes_table_and_plot(tmp_path):
    quality = _quality_module()

    def system(r1s, echoes):
        runs = [
            {k: 0.5 for k in quality.KEYS} | {"recall@1": r, "question_echo_rate": e, "wall_s": 1.0}
            for r, e in zip(r1s, echoes)
        ]
        return quality.summarise(runs) | {"runs": runs}

    results = {
        "bm25": system([0.6], [0.99]),
        "qa_lib": system([0.88, 0.86], [0.01, 0.0]),
        "qa_lib_noecho": system([0.90, 0.86], [1.0, 1.0]),
    }
    info = {"n_questions": 200}
    text = quality.echo_tradeoff("nq", info, results, tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| qa_lib |"))
    assert "| -0.010 |" in row  # paired by seed: (-0.02 + 0.00) / 2
    assert (tmp_path / "nq-echo.md").read_text().strip() == text
    assert (tmp_path / "nq-echo.png").stat().st_size > 1000
    assert quality.echo_tradeoff("nq", info, {"bm25": results["bm25"]}, tmp_path) is None


def test_hybrid_weights_are_tuned_on_pairs_outside_the_training_sample():
    from qa_lib.data import Pairs

    quality = _quality_module()
    pairs = Pairs([f"q{i}" for i in range(1000)], [f"a{i}" for i in range(1000)])
    rows = quality.sample_rows(len(pairs), 300)
    notes: list[str] = []
    val = quality.validation_pairs(pairs, rows, 500, notes)
    train_questions = {pairs.questions[i] for i in rows}
    assert len(rows) == 300 and len(val) == 500 and not train_questions & set(val.questions)
    assert "500 training pairs left out of the sample" in notes[-1]
    # too few pairs left over: the training sample itself, and the note says so
    small = pairs.select(range(350))
    small_rows = quality.sample_rows(len(small), 300)
    assert quality.validation_pairs(small, small_rows, 500, notes).questions == [
        small.questions[i] for i in small_rows
    ]
    assert "tuned on the training pairs" in notes[-1]


@pytest.mark.slow
def test_quick_squad_hybrid_beats_bm25_and_keeps_the_echo_down(tmp_path):
    """SQuAD quick: the fine-tuned towers plus BM25 rank above BM25 and above the dense towers,
    and the question flag still keeps the question's own text below its answer."""
    shared_file("squad-v1.1", "dev-v1.1.json")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "quality.py"),
        "--datasets=squad",
        "--quick",
        "--systems=bm25,qa_lib,qa_lib_hybrid",
        f"--data-dir={SHARED_DATA}",
        f"--out={tmp_path}",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=1800)
    results = json.loads((tmp_path / "squad.json").read_text())["results"]
    r1 = {name: r["recall@1"] for name, r in results.items()}
    assert r1["qa_lib_hybrid"] > r1["bm25"] and r1["qa_lib_hybrid"] > r1["qa_lib"], r1
    assert results["qa_lib_hybrid"]["question_echo_rate"] < 0.05, results["qa_lib_hybrid"]
    assert results["qa_lib_hybrid"]["runs"][0]["lexical_weight"] > 0


def _toy_pairs():
    from qa_lib.data import Pairs

    questions = ["where is paris?", "what is a cat?", "who wrote hamlet?", "what is a cat?"]
    answers = [
        "paris is the capital of france",
        "a cat is a small animal",
        "shakespeare wrote hamlet",
        "cats purr and chase mice",
    ]
    return Pairs(questions, answers)


def test_st_adapter_measures_cosines_with_the_question_as_its_own_echo():
    """evaluate(STEncoder(m)): cosine scores, each question's echo its text read as a document."""
    import torch

    from qa_lib import evaluate
    from qa_lib.metrics import build_task, metrics_from_scores

    _quality_module()  # puts benchmarks/ on the path
    import peers

    class Letters:  # a stand-in sentence-transformers model: letter counts, normalised
        def encode(self, texts, convert_to_tensor, normalize_embeddings, batch_size, **_):
            emb = torch.tensor([[t.count(c) + 0.1 for c in "acehimorstw?"] for t in texts])
            return torch.nn.functional.normalize(emb, dim=-1)

    pairs = _toy_pairs()
    task = build_task(pairs)
    model = Letters()
    kwargs = dict(convert_to_tensor=True, normalize_embeddings=True, batch_size=64)
    q_emb = model.encode(task.questions, **kwargs)
    a_emb = model.encode(task.candidates, **kwargs)
    expected = metrics_from_scores(q_emb @ a_emb.T, (q_emb * q_emb).sum(-1), task.relevant)
    got = evaluate(peers.STEncoder(model), pairs)
    assert {k: got[k] for k in expected} == pytest.approx(expected)


def test_bm25_adapter_takes_the_echo_from_lexical_scores():
    from qa_lib.bm25 import lexical_scores
    from qa_lib.evaluate import bm25_metrics
    from qa_lib.metrics import build_task, metrics_from_scores

    quality = _quality_module()
    pairs = _toy_pairs()
    metrics = bm25_metrics(pairs)
    task = build_task(pairs)
    with_echo = metrics_from_scores(*lexical_scores(task.candidates, task.questions), task.relevant)
    assert set(quality.KEYS) <= set(metrics)
    assert metrics["question_echo_rate"] == with_echo["question_echo_rate"]
    assert metrics["recall@1_with_echo"] == with_echo["recall@1_with_echo"]


def test_echo_study_filters_reuse_the_untrained_flag_towers_and_the_flag_table(
    tmp_path, tiny_config, tiny_splits, monkeypatch
):
    """The filter rows evaluate the qa_lib_noecho towers with a rule; the learned flags' false
    flags by answer length land in <dataset>-flag.md."""
    quality = _quality_module()
    from qa_lib import DualEncoder

    train, test = tiny_splits
    setup = quality.Setup("tiny", train, test, test)
    built = []

    def stand_in(system, *args, **kwargs):  # no training: a tiny random model per system
        built.append(system)
        return DualEncoder.from_config(tiny_config, seed=0)

    monkeypatch.setattr(quality, "train_variant", stand_in)
    budget = quality.Budget(seeds=1)
    for system in ("qa_lib_noecho", "rule_filter", "exact_filter", "qa_lib"):
        run = quality.run_system(system, setup, budget, 0, keep={"qa_lib_noecho"})
        assert {"mixed_pool_rate", "answer_flag_rate"} <= set(run)
    assert built == ["qa_lib_noecho", "qa_lib"]  # the filters reused the kept towers
    rule = quality.run_system("rule_filter", setup, budget, 0, keep={"qa_lib_noecho"})
    assert rule["question_echo_rate"] == 0.0  # every test question ends with "?"
    text = quality.flag_table(setup, tmp_path)
    assert "answers longer" in text and "| qa_lib |" in text.splitlines()[2]
    assert (tmp_path / "tiny-flag.md").read_text().strip() == text


def test_flag_table_shows_each_rows_worst_seed(tmp_path, tiny_splits):
    """Answers: the most flagged seed and the largest p; questions: the fewest flagged seed."""
    quality = _quality_module()
    train, test = tiny_splits
    setup = quality.Setup("tiny", train, test, test)
    rows = [f"answers {b}" for b in quality.LENGTH_BUCKETS]
    rows += [quality.QUESTION_ANSWERS, "questions (echoes)", *quality.STRESS_ROWS]
    for seed, rate in ((0, 0.1), (1, 0.9)):
        stats = {"n": 10.0, "flag_rate": rate, "max_p": rate}
        median = {"median question tokens": {"n": 8}}
        setup.flags[("qa_lib", seed)] = {r: stats for r in rows} | median
    lines = quality.flag_table(setup, tmp_path).splitlines()
    assert "| answers longer (n = 10) | 0.900 (max p 0.90) |" in lines
    assert "| questions (echoes) (n = 10) | 0.100 |" in lines
    assert "| questions restyled (n = 10) | 0.100 |" in lines
    assert "| answers that are questions (n = 10) | 0.100 |" in lines  # these should be flagged
    assert "| first sentences of answers (n = 10) | 0.900 (max p 0.90) |" in lines


def test_tune_mode_measures_on_training_pairs_held_out_by_group_never_the_test_pairs():
    from qa_lib.data import Pairs

    quality = _quality_module()
    groups = [f"g{i // 3}" for i in range(30)]  # 10 groups of 3 pairs
    pairs = Pairs([f"q{i}" for i in range(30)], [f"a{i}" for i in range(30)], groups=groups)
    train, val, note = quality.tuning_split(pairs)
    assert (len(train), len(val)) == (24, 6) and "2 of 10 training groups" in note
    assert not set(train.groups) & set(val.groups)  # whole groups on one side
    assert sorted(train.questions + val.questions) == sorted(pairs.questions)
    again = quality.tuning_split(pairs)[1]
    assert again.questions == val.questions  # seeded
    ungrouped = Pairs(pairs.questions, pairs.answers)
    assert len(quality.tuning_split(ungrouped)[1]) == 6
