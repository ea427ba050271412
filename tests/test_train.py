from __future__ import annotations

import math

import pytest
import torch
from conftest import poison_nth_call
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError, TrainConfig, evaluate, fit
from qa_lib.checkpoint import load_latest_checkpoint

FAST = dict(batch_size=16, lr=1e-3, warmup_ratio=0.0, eval_batch_size=32)


def test_training_beats_the_untrained_model(tiny_config, tiny_splits):
    train, test = tiny_splits
    model = DualEncoder.from_config(tiny_config, seed=0)
    before = evaluate(model, train)
    history = fit(model, train, test, TrainConfig(num_epochs=8, **FAST), progress=False)
    after = evaluate(model, train)
    assert history.step_loss[-1] < history.step_loss[0]
    assert after["mrr@10"] > before["mrr@10"] + 0.2
    assert after["recall@1"] > before["recall@1"]
    assert len(history.epochs) == 8 and "recall@1" in history.epochs[0]
    assert history.chance_loss == pytest.approx(math.log(16) + math.log(2))  # + the detector


def test_same_seed_same_history(tiny_config, tiny_splits):
    runs, weights = [], []
    for seed in (0, 0, 1):
        model = DualEncoder.from_config(tiny_config, seed=seed)
        config = TrainConfig(num_epochs=1, seed=seed, **FAST)
        runs.append(fit(model, tiny_splits[0], tiny_splits[1], config, progress=False))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert runs[0].step_loss == runs[1].step_loss
    assert runs[0].epochs == runs[1].epochs  # the validation metrics too
    assert torch.equal(weights[0], weights[1])
    assert runs[2].step_loss != runs[0].step_loss  # the seed matters


def _assert_same_run(model_a, history_a, model_b, history_b):
    assert len(history_a.step_loss) == len(history_b.step_loss)
    assert_close(history_a.step_loss, history_b.step_loss, atol=1e-6, rtol=0)
    assert len(history_a.epochs) == len(history_b.epochs)
    for epoch_a, epoch_b in zip(history_a.epochs, history_b.epochs):
        assert epoch_a == pytest.approx(epoch_b, abs=1e-6)
    assert history_a.best_epoch == history_b.best_epoch
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert_close(a, b, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize(
    "steps_done, resumed_from", [(5, 4), (7, 6)], ids=["mid-epoch", "after-an-epoch"]
)
def test_resumed_run_equals_an_uninterrupted_one(
    tmp_path, tiny_config, tiny_splits, interrupted_fit, steps_done, resumed_from
):
    """6 steps per epoch, 2 epochs, checkpoints at steps 4, 6 and 8; killed after steps_done."""
    train, val = tiny_splits
    config = TrainConfig(num_epochs=2, checkpoint_every=4, **FAST)
    reference = DualEncoder.from_config(tiny_config)
    expected = fit(reference, train, val, config, progress=False)
    interrupted_fit(
        steps_done, DualEncoder.from_config(tiny_config), train, val, config, tmp_path, False
    )
    model = DualEncoder.from_config(tiny_config, seed=7)  # the weights come from the checkpoint
    resumed = fit(model, train, val, config, tmp_path, progress=False, resume=True)
    assert resumed.resumed_from == resumed_from
    _assert_same_run(model, resumed, reference, expected)
    assert DualEncoder.load(tmp_path / "last").config == model.config
    assert not (tmp_path / "checkpoints").exists(), "a finished run leaves no checkpoints"


def test_resume_refuses_other_settings_or_nothing(
    tmp_path, tiny_config, tiny_splits, interrupted_fit
):
    train = tiny_splits[0]
    with pytest.raises(QAError, match="no complete checkpoint"):
        fit(DualEncoder.from_config(tiny_config), train, out_dir=tmp_path, resume=True)
    config = TrainConfig(num_epochs=1, max_steps=4, checkpoint_every=2, **FAST)
    fit(DualEncoder.from_config(tiny_config), train, None, config, tmp_path, progress=False)
    with pytest.raises(QAError, match="or the run finished"):
        fit(DualEncoder.from_config(tiny_config), train, None, config, tmp_path, resume=True)
    interrupted_fit(3, DualEncoder.from_config(tiny_config), train, None, config, tmp_path, False)
    other = TrainConfig(num_epochs=1, max_steps=4, checkpoint_every=2, **{**FAST, "lr": 1e-4})
    with pytest.raises(QAError, match=r"train\.lr = 0\.001, this run has 0\.0001"):
        fit(DualEncoder.from_config(tiny_config), train, None, other, tmp_path, resume=True)
    with pytest.raises(QAError, match="data fingerprint"):
        fit(
            DualEncoder.from_config(tiny_config),
            train.select(range(50)),
            None,
            config,
            tmp_path,
            resume=True,
        )


def test_fit_batches_by_topic_only_when_asked(tiny_config, tiny_splits, monkeypatch):
    import qa_lib.train as train_module

    seen = []
    real = train_module.epoch_batches
    monkeypatch.setattr(
        train_module,
        "epoch_batches",
        lambda *a, **k: seen.append(a[4] if len(a) > 4 else k.get("groups")) or real(*a, **k),
    )
    pairs = tiny_splits[0].select(range(24))
    assert pairs.groups is not None
    for group_batches in (True, False):
        model = DualEncoder.from_config(tiny_config)
        config = TrainConfig(num_epochs=1, batch_size=8, group_batches=group_batches)
        fit(model, pairs, config=config, progress=False)
    assert seen[0] == pairs.groups and seen[-1] is None


def test_best_and_last_are_saved(tmp_path, tiny_config, tiny_splits):
    model = DualEncoder.from_config(tiny_config)
    history = fit(
        model,
        tiny_splits[0],
        tiny_splits[1],
        TrainConfig(num_epochs=2, **FAST),
        out_dir=tmp_path,
        progress=False,
    )
    assert history.best_epoch in (1, 2)
    for name in ("best", "last"):
        assert DualEncoder.load(tmp_path / name).config == model.config


def test_non_finite_loss_stops_with_a_clear_error(tiny_config, tiny_splits, monkeypatch):
    import qa_lib.step as step_module

    monkeypatch.setattr(
        step_module,
        "in_batch_loss",
        lambda *a, **k: torch.tensor(float("nan"), requires_grad=True),
    )
    with pytest.raises(QAError, match="loss became nan at step 1"):
        fit(
            DualEncoder.from_config(tiny_config),
            tiny_splits[0],
            config=TrainConfig(num_epochs=1, **FAST),
            progress=False,
        )


def test_non_finite_loss_keeps_the_last_good_checkpoint(
    tmp_path, tiny_config, tiny_splits, monkeypatch
):
    poison_nth_call(monkeypatch, "step", "in_batch_loss", 3, float("inf"))
    config = TrainConfig(num_epochs=1, checkpoint_every=1, **FAST)
    with pytest.raises(QAError, match="loss became inf at step 3.*checkpoints saved before") as e:
        fit(DualEncoder.from_config(tiny_config), tiny_splits[0], None, config, tmp_path, False)
    assert "\n" not in str(e.value)
    state = load_latest_checkpoint(tmp_path)
    assert state["step"] == 2 and len(state["run"]["losses"]) == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_non_finite_gradients_stop_before_the_update(tiny_config, tiny_splits, monkeypatch):
    import qa_lib.step as step_module

    real_loss = step_module.in_batch_loss

    def huge_gradients(*args, **kwargs):  # a finite loss whose gradients overflow
        loss = real_loss(*args, **kwargs)
        return loss + (loss * 1e30 - (loss * 1e30).detach()) * 1e30

    monkeypatch.setattr(step_module, "in_batch_loss", huge_gradients)
    model = DualEncoder.from_config(tiny_config)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(QAError, match="gradient norm became (inf|nan) at step 1"):
        fit(model, tiny_splits[0], config=TrainConfig(num_epochs=1, **FAST), progress=False)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_too_little_data(tiny_config, tiny_splits):
    with pytest.raises(QAError, match="at least 2 pairs"):
        fit(DualEncoder.from_config(tiny_config), tiny_splits[0].select([0]), progress=False)


def test_deferred_read_back_gives_the_same_run_and_names_the_bad_step(
    tiny_config, tiny_splits, monkeypatch
):
    """log_every > 1 (the CUDA default) reads losses back in groups: same history, same errors."""
    runs = []
    for log_every in (1, 4):
        model = DualEncoder.from_config(tiny_config, seed=0)
        config = TrainConfig(num_epochs=1, log_every=log_every, **FAST)
        runs.append(fit(model, tiny_splits[0], config=config, progress=False))
    assert runs[0].step_loss == runs[1].step_loss and len(runs[1].step_loss) == 6

    poison_nth_call(monkeypatch, "train", "train_step", 3, float("nan"))
    config = TrainConfig(num_epochs=1, log_every=4, **FAST)
    with pytest.raises(QAError, match="loss became nan at step 3"):
        fit(DualEncoder.from_config(tiny_config), tiny_splits[0], config=config, progress=False)


def test_the_echo_objective_leaves_the_towers_as_without_it(tiny_config, tiny_splits):
    """With the question flag, echoes train only the detector: the towers come out identical."""
    towers = {}
    for weight in (1.0, 0.0):
        model = DualEncoder.from_config(tiny_config, seed=0)
        fit(
            model,
            tiny_splits[0],
            config=TrainConfig(num_epochs=1, flag_loss_weight=weight, **FAST),
            progress=False,
        )
        towers[weight] = model
    trained, plain = towers[1.0], towers[0.0]
    for (name, a), b in zip(trained.state_dict().items(), plain.state_dict().values()):
        if name.startswith("question_flag."):
            assert not torch.equal(a, b), "the detector learned from the echoes"
        else:
            assert torch.equal(a, b), name


def test_the_question_flag_learns_to_flag_questions(tiny_config, default_splits):
    train, test = default_splits["train"], default_splits["test"]
    model = DualEncoder.from_config(tiny_config, seed=0)
    fit(model, train, config=TrainConfig(num_epochs=2, **FAST), progress=False)
    flagged_questions = (model.encode_answers(test.questions)[:, -1] < 0).float().mean()
    flagged_answers = (model.encode_answers(test.answers)[:, -1] < 0).float().mean()
    assert flagged_questions > 0.9 and flagged_answers < 0.1, (flagged_questions, flagged_answers)
    assert evaluate(model, test)["question_echo_rate"] < 0.1
