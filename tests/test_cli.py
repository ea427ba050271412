from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qa_lib.cli import main
from qa_lib.evaluate import METRIC_KEYS


@pytest.fixture
def small_tsv(tmp_path, tiny_splits):
    train, test = tiny_splits
    path = tmp_path / "pairs.tsv"
    rows = [
        f"{q}\t{a}" for q, a in zip(train.questions + test.questions, train.answers + test.answers)
    ]
    path.write_text("questions\tanswers\n" + "\n".join(rows) + "\n")
    return path


def test_train_evaluate_demo(tmp_path, small_tsv, tiny_bert_dir, capsys):
    out = tmp_path / "run"
    args = [
        "--quiet",
        "train",
        "--data",
        str(small_tsv),
        "--out",
        str(out),
        "--model",
        str(tiny_bert_dir),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-steps",
        "3",
    ]
    assert main(args) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert len(record["history"]["step_loss"]) == 3 and record["seed"] == 0
    assert len(record["data_fingerprint"]) == 16 and record["versions"]["torch"]
    assert {"loss.png", "validation.png"} <= {p.name for p in out.iterdir()}
    metrics_file = tmp_path / "m.json"
    assert (
        main(
            [
                "--quiet",
                "evaluate",
                "--model",
                str(out / "best"),
                "--data",
                str(small_tsv),
                "--json",
                str(metrics_file),
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_file.read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert main(["demo", "--model", str(out / "best")]) == 0
    assert "Donald Duck" in capsys.readouterr().out


def _error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "content, needle",
    [
        (None, "no such file"),
        (b"", "empty"),
        (b"foo\tbar\nx\ty\n", "no question column"),
        (b"question\tanswer\nq\t\xff bad\n", "not valid utf-8"),
        (b"question\tanswer\nq1\ta1\nq2\t\n", "empty answer"),
    ],
)
def test_bad_data_is_one_line_and_exit_2(tmp_path, capsys, content, needle):
    path = tmp_path / "data.tsv"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out"
    err = _error_of(["train", "--data", str(path), "--out", str(out)], capsys)
    assert needle in err.lower()
    assert not out.exists() or not any(out.iterdir()), "nothing half-written"


def test_bad_model_and_busy_output(tmp_path, small_tsv, capsys):
    err = _error_of(["demo", "--model", str(tmp_path / "missing")], capsys)
    assert "not a model folder" in err
    err = _error_of(["demo", "--model", "someone/no-such-model"], capsys)
    assert "Hugging Face hub" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("precious")
    err = _error_of(["train", "--data", str(small_tsv), "--out", str(busy)], capsys)
    assert "not empty" in err and (busy / "keep.txt").read_text() == "precious"


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "qa_lib", "evaluate", "--data", str(tmp_path / "nope.tsv")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "no such file" in proc.stderr
