from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError, TrainConfig, evaluate, fit
from qa_lib.train import collate, embed_in_chunks, epoch_batches, tokenize_pairs

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
    assert history.chance_loss == pytest.approx(math.log(16 + 1))


def test_same_seed_same_history(tiny_config, tiny_splits):
    runs = []
    for _ in range(2):
        model = DualEncoder.from_config(tiny_config, seed=0)
        runs.append(
            fit(
                model,
                tiny_splits[0],
                tiny_splits[1],
                TrainConfig(num_epochs=1, **FAST),
                progress=False,
            )
        )
    assert runs[0].step_loss == runs[1].step_loss
    assert runs[0].epochs == runs[1].epochs


def test_chunked_answers_equal_one_padded_batch(tiny_model, tiny_splits):
    data = tokenize_pairs(tiny_model, tiny_splits[0])
    ids = data.a_ids[:12]
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
    import qa_lib.train as train_module

    monkeypatch.setattr(
        train_module,
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


def test_too_little_data(tiny_config, tiny_splits):
    with pytest.raises(QAError, match="at least 2 pairs"):
        fit(DualEncoder.from_config(tiny_config), tiny_splits[0].select([0]), progress=False)
