"""Training on 2 gloo processes equals one process with the same global batch (torchrun, CPU).

One torchrun launch runs every case of tests/ddp_cases.py on 2 processes; each case is compared
with the same case run here in one process: the loss per step and the final weights within 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_cases import CASES, INTERRUPT_AT, NO_DROPOUT, RESUMED, cli_args, first_gradients, run_case
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError
from qa_lib.cli import main as cli_main
from qa_lib.distributed import (
    World,
    check_batch_size,
    gather_rows,
    launched,
    process_device,
    shard,
    shard_sizes,
)

TESTS = Path(__file__).resolve().parent
TOLERANCE = dict(atol=1e-5, rtol=1e-5)
# Weights after a few AdamW steps: a gradient that rounding leaves near zero still moves its weight
# by up to lr, in the direction of the rounding, and two processes sum each embedding row in
# another order than one (qa_lib.row_grad adds the rows as they come): one weight of a million
# came out 1.04e-5 apart. The gradients themselves are compared at TOLERANCE.
WEIGHT_TOLERANCE = dict(atol=2e-5, rtol=1e-5)


def test_shards_are_contiguous_and_cover_the_batch_in_order():
    rows = [7, 3, 9, 1, 4, 8, 2, 6, 5]
    shares = [shard(rows, World(rank, 2)) for rank in range(2)]
    assert shares == [[7, 3, 9, 1, 4], [8, 2, 6, 5]]
    assert shard_sizes(9, 4) == [3, 2, 2, 2]
    assert [x for r in range(4) for x in shard(rows, World(r, 4))] == rows
    assert shard(rows, World()) == rows


def test_one_process_gathers_nothing_and_needs_no_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    x = torch.randn(4, 3, requires_grad=True)
    assert gather_rows(x, [4]) is x
    assert not launched()
    assert process_device("cuda:1") == "cuda:1"  # one process: the device as given


def test_a_batch_that_does_not_split_is_one_clear_error():
    check_batch_size(16, World(0, 4))
    with pytest.raises(QAError, match=r"--batch-size 10 .* over 4 processes.*multiple of 4"):
        check_batch_size(10, World(0, 4))


def test_a_fixed_gpu_under_torchrun_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert process_device("cpu") == "cpu"
    with pytest.raises(QAError, match="cuda:LOCAL_RANK"):
        process_device("cuda:0")


def test_quickstart_under_torchrun_points_to_train(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli_main(["quickstart", "--out", "unused"]) == 2
    assert "-m qa_lib train" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny random BERT without dropout, as a --model folder (for the CLI case)."""
    from conftest import TINY

    from qa_lib.config import default_model_path
    from qa_lib.hub import load_backbone, load_tokenizer

    folder = tmp_path_factory.mktemp("tiny_bert_no_dropout")
    source = os.environ.get("QA_TINY_SOURCE") or default_model_path()
    load_backbone(source, False, dict(TINY + NO_DROPOUT)).save_pretrained(folder)
    load_tokenizer(source).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, bert_dir) -> Path:
    """Every case on 2 gloo processes (one thread each); the folder of their results."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(TESTS / "ddp_cases.py"), str(out), str(bert_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _load(out: Path, name: str) -> list[dict]:
    return [torch.load(out / f"{name}-rank{r}.pt", weights_only=True) for r in range(2)]


def _assert_same_weights(state_a: dict, state_b: dict) -> None:
    assert state_a.keys() == state_b.keys()
    for name, value in state_a.items():
        assert_close(
            value, state_b[name], **WEIGHT_TOLERANCE, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.parametrize("name", [*CASES, "resumed"])
def test_two_processes_train_as_one_with_the_same_global_batch(two_processes, name):
    history, model = run_case(RESUMED if name == "resumed" else name)
    rank0, rank1 = _load(two_processes, name)
    assert len(rank0["loss"]) == len(history.step_loss) > INTERRUPT_AT
    assert_close(rank0["loss"], history.step_loss, **TOLERANCE)
    assert rank1["loss"] == rank0["loss"]  # every process computes the global batch's loss
    _assert_same_weights(rank0["state"], model.state_dict())
    _assert_same_weights(rank1["state"], rank0["state"])  # the processes stay in sync
    for got, want in zip(rank0["epochs"], history.epochs):
        assert got == pytest.approx(want, abs=1e-5)  # validation (rank 0's, shared) included


@pytest.mark.parametrize("name", CASES)
def test_two_processes_compute_the_single_process_gradient(two_processes, name):
    """Scale-sensitive: a gradient off by the number of processes fails here (AdamW hides it)."""
    want = first_gradients(name)
    for rank in _load(two_processes, name):
        got = rank["gradients"]
        assert got.keys() == want.keys()
        for param, grad in want.items():
            assert_close(got[param], grad, **TOLERANCE, msg=lambda m, p=param: f"{p}: {m}")


def test_the_cli_under_torchrun_writes_once_and_trains_as_one_process(
    two_processes, bert_dir, tmp_path
):
    rank0, rank1 = _load(two_processes, "misc")
    assert rank0["status"] == rank1["status"] == 0
    assert "trained 3 steps" in rank0["stdout"] and rank1["stdout"] == ""  # rank 0 alone prints
    assert "--batch-size 15" in rank0["error"] and "2 processes" in rank1["error"]
    assert cli_main(cli_args(tmp_path / "one", bert_dir)) == 0
    run = two_processes / "cli-run"
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (run, tmp_path / "one"))
    assert got["world_size"] == 2 and want["world_size"] == 1
    assert_close(got["history"]["step_loss"], want["history"]["step_loss"], **TOLERANCE)
    two, one = (DualEncoder.load(d / "last") for d in (run, tmp_path / "one"))
    _assert_same_weights(two.state_dict(), one.state_dict())
    assert not (run / "checkpoints").exists()
