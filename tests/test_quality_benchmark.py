"""The quality benchmark's quick mode on real data: the ordering the course claims must hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, shared_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_orders_fine_tuned_untrained_random(tmp_path):
    shared_file("nq-sample-dlai", "nq_sample.tsv")
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "quality.py"),
        "--datasets=nq",
        "--quick",
        "--systems=random_init,untrained,qa_lib",
        f"--data-dir={SHARED_DATA}",
        f"--out={tmp_path}",
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=900)
    record = json.loads((tmp_path / "nq.json").read_text())
    recall = {name: r["recall@1"] for name, r in record["results"].items()}
    assert recall["qa_lib"] > recall["untrained"] > recall["random_init"], recall
    assert (tmp_path / "nq.md").exists() and (tmp_path / "nq.png").exists()
