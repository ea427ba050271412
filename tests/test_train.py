from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from conftest import poison_nth_call
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError, TrainConfig, evaluate, fit
from qa_lib.batching import collate, embed_in_chunks, epoch_batches, tokenize_pairs
from qa_lib.checkpoint import load_latest_checkpoint
from qa_lib.optim import make_optimizer
from qa_lib.step import chance_loss, train_step

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


def test_chunked_answers_equal_one_padded_batch(tiny_model, tiny_splits):
    data = tokenize_pairs(tiny_model, tiny_splits[0])
    ids = data.a_tokens[:12]
    tiny_model.eval()  # no dropout, so both paths see the same function
    whole = tiny_model.embed_answers(collate(ids, data.pad_id))
    whole.sum().backward()
    grads = [p.grad.clone() for p in tiny_model.a_encoder.parameters() if p.grad is not None]
    tiny_model.zero_grad()
    chunked = embed_in_chunks(tiny_model.embed_answers, ids, data.pad_id, chunks=4)
    chunked.sum().backward()
    assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    again = [p.grad for p in tiny_model.a_encoder.parameters() if p.grad is not None]
    for g1, g2 in zip(grads, again):
        assert_close(g1, g2, atol=1e-5, rtol=1e-4)


def test_epoch_batches_cover_rows_once_and_are_seeded():
    batches = epoch_batches(50, 16, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert batches == epoch_batches(50, 16, seed=3, epoch=0)
    assert batches != epoch_batches(50, 16, seed=3, epoch=1)
    assert all(len(b) > 1 for b in epoch_batches(17, 16, 0, 0))


def test_topic_aware_batches_keep_each_topic_together():
    groups = [f"topic{i % 5}" for i in range(80)]  # 5 topics of 16 rows, interleaved
    batches = epoch_batches(80, 16, seed=3, epoch=0, groups=groups)
    assert sorted(i for b in batches for i in b) == list(range(80))
    assert all(len({groups[i] for i in b}) == 1 for b in batches)  # one topic per batch
    assert batches == epoch_batches(80, 16, seed=3, epoch=0, groups=groups)
    assert batches != epoch_batches(80, 16, seed=3, epoch=1, groups=groups)
    random_batches = epoch_batches(80, 16, seed=3, epoch=0)
    assert max(len({groups[i] for i in b}) for b in random_batches) > 1


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
    flagged_questions = (model.encode_answers(test.questions)[:, -1] == -1).float().mean()
    flagged_answers = (model.encode_answers(test.answers)[:, -1] == -1).float().mean()
    assert flagged_questions > 0.9 and flagged_answers < 0.1, (flagged_questions, flagged_answers)
    assert evaluate(model, test)["question_echo_rate"] < 0.1


def test_the_detector_gets_its_own_learning_rate(tiny_model):
    optimizer, _ = make_optimizer(tiny_model, TrainConfig(lr=1e-5, flag_lr=0.3), 10)
    prior = {id(p) for p in tiny_model.question_flag.parameters()}
    for group in optimizer.param_groups:
        in_group = {id(p) for p in group["params"]}
        assert not in_group or in_group <= prior or not in_group & prior
        expected = 0.3 if in_group <= prior else 1e-5
        assert group["initial_lr"] == pytest.approx(expected)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
        list(tiny_model.parameters())
    )


def test_tied_towers_skip_the_echo_objective(tiny_config, tiny_splits):
    tied = DualEncoder.from_config(tiny_config, tied=True).eval()
    data, idx = tokenize_pairs(tied, tiny_splits[0].select(range(8))), list(range(8))
    config = TrainConfig(precision="fp32", echo_negative_weight=1.0)
    with_echo = train_step(tied, data, idx, config)
    without = train_step(tied, data, idx, replace(config, echo_negative_weight=0.0))
    assert with_echo == without  # the echo scores 1.0 in a tied cosine model: never a negative
    assert chance_loss(8, config, tied) == pytest.approx(math.log(8))
    separate = DualEncoder.from_config(tiny_config, question_flag=False)
    assert chance_loss(8, config, separate) == pytest.approx(math.log(9))
    flagged = DualEncoder.from_config(tiny_config)  # the default: flag loss weight 1, no echo
    assert chance_loss(8, TrainConfig(), flagged) == pytest.approx(math.log(8) + math.log(2))
