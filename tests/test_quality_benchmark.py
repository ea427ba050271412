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
