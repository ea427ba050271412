from __future__ import annotations

import json
import logging

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, TrainConfig, fit
from qa_lib.checkpoint import (
    checkpoint_dir,
    clear_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)

FAST = dict(batch_size=16, lr=1e-3, warmup_ratio=0.0, eval_batch_size=32)


def _state(step: int) -> dict:
    return {"step": step, "weights": torch.full((64,), float(step)), "note": f"step {step}"}


def test_keeps_the_newest_two_and_loads_the_newest(tmp_path):
    for step in range(1, 5):
        save_checkpoint(tmp_path, _state(step))
    folder = checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "step-0000003.ckpt",
        "step-0000003.json",
        "step-0000004.ckpt",
        "step-0000004.json",
    ]
    state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 4 and state["note"] == "step 4"
    assert_close(state["weights"], torch.full((64,), 4.0))
    manifest = json.loads((folder / "step-0000004.json").read_text())
    assert manifest["bytes"] == (folder / "step-0000004.ckpt").stat().st_size
    assert len(manifest["sha256"]) == 64


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncate, "bytes, the manifest says"),
        (_flip_a_byte, "sha256 does not match"),
        (lambda p: p.unlink(), "cannot be read"),
        (lambda p: p.with_suffix(".json").write_text("{not json"), "cannot be read"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog, damage, reason):
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    damage(checkpoint_dir(tmp_path) / "step-0000002.ckpt")
    with caplog.at_level(logging.WARNING, logger="qa_lib.checkpoint"):
        state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 1
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "step-0000002.ckpt is damaged" in record.getMessage()
    assert reason in record.getMessage()


def test_a_checkpoint_of_another_layout_is_skipped(tmp_path, caplog, monkeypatch):
    import qa_lib.checkpoint as checkpoint_module

    save_checkpoint(tmp_path, _state(1))
    monkeypatch.setattr(checkpoint_module, "FORMAT", checkpoint_module.FORMAT + 1)
    save_checkpoint(tmp_path, _state(2))
    monkeypatch.undo()
    assert load_latest_checkpoint(tmp_path)["step"] == 1
    assert "another layout" in caplog.text


def test_a_checkpoint_without_its_manifest_does_not_count(tmp_path, caplog):
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    (checkpoint_dir(tmp_path) / "step-0000002.json").unlink()  # killed before the manifest
    assert load_latest_checkpoint(tmp_path)["step"] == 1
    assert not caplog.records


def test_nothing_usable_gives_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, _state(1))
    _truncate(checkpoint_dir(tmp_path) / "step-0000001.ckpt")
    assert load_latest_checkpoint(tmp_path) is None


def test_clear_checkpoints_after_a_step_or_all(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, _state(step), keep=5)
    clear_checkpoints(tmp_path, after=1)
    assert load_latest_checkpoint(tmp_path)["step"] == 1
    (checkpoint_dir(tmp_path) / ".step-0000009.ckpt.x1y2.tmp").write_bytes(b"killed mid-write")
    clear_checkpoints(tmp_path)
    assert load_latest_checkpoint(tmp_path) is None and not checkpoint_dir(tmp_path).exists()


def test_fit_resumes_from_the_previous_checkpoint_when_the_newest_is_truncated(
    tmp_path, tiny_config, tiny_splits, caplog, interrupted_fit
):
    """Checkpoints at steps 2 and 4, killed in step 5, newest truncated: resume from 2."""
    train, val = tiny_splits
    config = TrainConfig(num_epochs=1, checkpoint_every=2, **FAST)
    reference = DualEncoder.from_config(tiny_config)
    expected = fit(reference, train, val, config, progress=False)

    interrupted_fit(4, DualEncoder.from_config(tiny_config), train, val, config, tmp_path, False)
    _truncate(checkpoint_dir(tmp_path) / "step-0000004.ckpt")
    model = DualEncoder.from_config(tiny_config, seed=123)  # the weights come from the file
    with caplog.at_level(logging.WARNING, logger="qa_lib.checkpoint"):
        resumed = fit(model, train, val, config, tmp_path, progress=False, resume=True)
    assert "step-0000004.ckpt is damaged" in caplog.text
    assert resumed.resumed_from == 2
    assert resumed.epochs == expected.epochs
    assert_close(resumed.step_loss, expected.step_loss, atol=1e-6, rtol=0)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert_close(a, b, atol=1e-6, rtol=0, msg=name)
