from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import poison_nth_call
from torch.testing import assert_close

from qa_lib import DualEncoder
from qa_lib.checkpoint import checkpoint_dir, load_latest_checkpoint
from qa_lib.cli import main
from qa_lib.hybrid import DEFAULT_WEIGHTS
from qa_lib.metrics import METRIC_KEYS


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
    base_eval = ["--quiet", "evaluate", "--model", str(out / "best"), "--data", str(small_tsv)]
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
    assert set(METRIC_KEYS) <= set(metrics) and metrics["lexical_weight"] == 0.0
    hybrid = [*base_eval, "--lexical-weight", "0.5", "--json", str(metrics_file)]
    assert main(hybrid) == 0
    assert json.loads(metrics_file.read_text())["lexical_weight"] == 0.5
    assert main([*base_eval, "--tune-on", "validation", "--json", str(metrics_file)]) == 0
    assert json.loads(metrics_file.read_text())["lexical_weight"] in DEFAULT_WEIGHTS
    assert "the best MRR@10 on the validation split" in capsys.readouterr().out
    assert main([*base_eval, "--bm25", "--json", str(metrics_file)]) == 0
    assert "BM25 (bm25s)" in capsys.readouterr().out
    from qa_lib import load_pairs
    from qa_lib.evaluate import bm25_metrics

    bm25 = json.loads(metrics_file.read_text())["bm25"]
    assert bm25 == pytest.approx(bm25_metrics(load_pairs(small_tsv, "test")))
    assert set(METRIC_KEYS) <= set(bm25)
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
    assert "not empty" in err and "--resume" in err
    assert (busy / "keep.txt").read_text() == "precious"
    err = _error_of(
        ["train", "--data", str(small_tsv), "--out", str(busy), "--resume", "--overwrite"], capsys
    )
    assert "only one of them" in err
    err = _error_of(["train", "--data", str(small_tsv), "--out", str(busy), "--resume"], capsys)
    assert "no complete checkpoint" in err and (busy / "keep.txt").read_text() == "precious"


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


# Runs the CLI, but slowly once the first checkpoint exists, so the test can kill it mid-epoch.
SLOW_CLI = """
import sys, time
from pathlib import Path
import qa_lib.train as train
from qa_lib.cli import main

checkpoints, step = Path(sys.argv[sys.argv.index("--out") + 1]) / "checkpoints", train.train_step

def slow_step(*args, **kwargs):
    time.sleep(1.0 if any(checkpoints.glob("*.json")) else 0.0)
    return step(*args, **kwargs)

train.train_step = slow_step
sys.exit(main(sys.argv[1:]))
"""


def _train_args(data, model, out) -> list[str]:
    return ["--quiet", "train", "--data", str(data), "--model", str(model), "--out", str(out)]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path, small_tsv, tiny_bert_dir
):
    options = ["--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--checkpoint-every", "3"]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    # One thread everywhere: identical kernels in all three runs, and no slowdown when the
    # machine is shared (torch's thread pool degrades badly under CPU contention).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def start(code: list[str], out, *extra: str) -> subprocess.Popen:
        argv = [sys.executable, *code, *_train_args(small_tsv, tiny_bert_dir, out), *options]
        with open(tmp_path / f"{out.name}{'-'.join(extra)}.log", "w") as log:
            return subprocess.Popen([*argv, *extra], env=env, stdout=log, stderr=log)

    def log_of(out, *extra: str) -> str:
        return (tmp_path / f"{out.name}{'-'.join(extra)}.log").read_text()

    uninterrupted = start(["-m", "qa_lib"], reference)  # runs while the other one sleeps
    proc = start(["-c", SLOW_CLI], killed)
    deadline = time.monotonic() + 120
    while not any(checkpoint_dir(killed).glob("*.json")):
        assert proc.poll() is None, f"training ended before a checkpoint: {log_of(killed)}"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    state = load_latest_checkpoint(killed)
    assert state["step"] == 3 and state["run"]["epoch"] == 0 and state["run"]["batch"] == 3
    assert not (killed / "metrics.json").exists()
    for name in ("best", "last"):  # never half-written: absent or loadable
        assert not (killed / name).exists() or DualEncoder.load(killed / name)

    resumed = start(["-m", "qa_lib"], killed, "--resume")
    assert resumed.wait(timeout=300) == 0, log_of(killed, "--resume")
    assert uninterrupted.wait(timeout=300) == 0, log_of(reference)
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (killed, reference))
    assert got["history"]["resumed_from"] == 3 and want["history"]["resumed_from"] is None
    assert len(got["history"]["step_loss"]) == len(want["history"]["step_loss"]) > 20
    assert_close(got["history"]["step_loss"], want["history"]["step_loss"], atol=1e-6, rtol=0)
    for epoch_got, epoch_want in zip(got["history"]["epochs"], want["history"]["epochs"]):
        assert epoch_got == pytest.approx(epoch_want, abs=1e-6)
    for name in ("best", "last"):
        weights = [DualEncoder.load(d / name).state_dict() for d in (killed, reference)]
        for key, value in weights[1].items():
            assert_close(weights[0][key], value, atol=1e-6, rtol=0, msg=key)


def test_metrics_json_records_what_reproduces_the_run(tmp_path, small_tsv, tiny_bert_dir):
    out = tmp_path / "run"
    argv = [*_train_args(small_tsv, tiny_bert_dir, out), "--max-steps", "2", "--seed", "3"]
    assert main(argv) == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["seed"] == 3 and record["train"]["seed"] == 3 and record["argv"] == argv
    assert record["model"] == str(tiny_bert_dir) == record["encoder"]["model"]
    assert {"python", "torch", "transformers", "numpy", "qa_lib"} <= set(record["versions"])
    assert len(record["data_fingerprint"]) == 16 and record["train"]["max_steps"] == 2


def test_non_finite_loss_exits_2_and_keeps_the_checkpoint(
    tmp_path, small_tsv, tiny_bert_dir, capsys, monkeypatch
):
    poison_nth_call(monkeypatch, "train", "train_step", 3, float("nan"))
    out = tmp_path / "run"
    err = _error_of(
        [*_train_args(small_tsv, tiny_bert_dir, out), "--checkpoint-every", "1"], capsys
    )
    assert "loss became nan at step 3" in err
    assert load_latest_checkpoint(out)["step"] == 2


def test_length_options_reach_the_encoder_config():
    from qa_lib.cli import _encoder_config, build_parser

    args = build_parser().parse_args(["train", "--data", "d", "--out", "x"])
    assert (_encoder_config(args).max_q_len, _encoder_config(args).max_a_len) == (32, 128)
    assert args.max_a_len == "auto"  # resolved from the training answers (_new_model)
    options = ["train", "--data", "d", "--out", "x", "--max-q-len", "48", "--max-a-len", "256"]
    config = _encoder_config(build_parser().parse_args(options))
    assert (config.max_q_len, config.max_a_len) == (48, 256)
    for bad in ("0", "513", "long"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["train", "--data", "d", "--out", "x", "--max-a-len", bad])


def test_auto_answer_length_follows_the_training_answers(tmp_path, tiny_bert_dir, capsys):
    long = " ".join(["word"] * 150)
    rows = [f"question {i}?\t{long if i % 2 else 'short answer'} {i}" for i in range(40)]
    data = tmp_path / "long.tsv"
    data.write_text("question\tanswer\n" + "\n".join(rows) + "\n")
    base = ["--quiet", "train", "--data", str(data), "--model", str(tiny_bert_dir)]
    base += ["--epochs", "1", "--batch-size", "8", "--max-steps", "1"]
    assert main([*base, "--out", str(tmp_path / "auto")]) == 0
    assert "answers cut at 256 tokens" in capsys.readouterr().out
    record = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert record["encoder"]["max_a_len"] == 256
    from qa_lib import DualEncoder

    assert DualEncoder.load(tmp_path / "auto" / "best").config.max_a_len == 256  # evaluate's cut
    assert main([*base, "--out", str(tmp_path / "fixed"), "--max-a-len", "128"]) == 0
    assert "answers cut" not in capsys.readouterr().out
    assert (
        json.loads((tmp_path / "fixed" / "metrics.json").read_text())["encoder"]["max_a_len"] == 128
    )


def test_echo_and_negative_options_reach_the_configs():
    from qa_lib.cli import _encoder_config, _train_config, build_parser

    args = build_parser().parse_args(["train", "--data", "default", "--out", "x"])
    assert _encoder_config(args).question_flag and _train_config(args).flag_lr == 0.1
    options = (
        "--no-question-flag --flag-lr 0.2 --hard-negatives 2 --flag-loss-weight 0.5 "
        "--echo-negative-weight 0.25"
    ).split()
    args = build_parser().parse_args(["train", "--data", "default", "--out", "x", *options])
    encoder, train = _encoder_config(args), _train_config(args)
    assert not encoder.question_flag
    assert (train.flag_lr, train.hard_negatives) == (0.2, 2)
    assert (train.flag_loss_weight, train.echo_negative_weight) == (0.5, 0.25)
    old_names = "--no-answer-prior --prior-lr 0.3".split()  # the options' names before 0.2
    args = build_parser().parse_args(["train", "--data", "default", "--out", "x", *old_names])
    assert not _encoder_config(args).question_flag and _train_config(args).flag_lr == 0.3
    args = build_parser().parse_args(
        ["train", "--data", "default", "--out", "x", "--precision", "fp32", "--no-group-batches"]
    )
    assert (_train_config(args).precision, _train_config(args).group_batches) == ("fp32", False)
    assert _train_config(
        build_parser().parse_args(["train", "--data", "d", "--out", "x"])
    ).group_batches
    loss_options = ["--symmetric", "--answer-lr-scale", "0.5"]
    train = _train_config(build_parser().parse_args(["quickstart", *loss_options]))
    assert (train.symmetric, train.answer_lr_scale) == (True, 0.5)
