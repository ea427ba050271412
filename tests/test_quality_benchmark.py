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
    import importlib.util

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
    and the answer prior's flag still keeps the question's own text below its answer."""
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
