"""Notebook 04's claim that ``fit``'s step is the loop it writes by hand, and its exercise 1.

The notebook asserts both in every run; these tests keep the claim true when ``fit`` changes, in
seconds, on a tiny random BERT (the hand loop below is the notebook's, line for line).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from qa_lib import DualEncoder, TrainConfig, fit
from qa_lib.batching import collate, epoch_batches, tokenize_pairs
from qa_lib.losses import in_batch_loss
from qa_lib.optim import make_optimizer

STEPS = 4


def train_by_hand(model, pairs, config, steps, schedule=True):
    """Notebook 04, section 3: ``steps`` optimiser steps of epoch 1; the loss of each step."""
    torch.manual_seed(config.seed)
    data = tokenize_pairs(model, pairs)
    batches = epoch_batches(len(pairs), config.batch_size, config.seed, 0, pairs.groups)
    optimizer, scheduler = make_optimizer(model, config, steps)
    model.train()
    losses = []
    for idx in batches[:steps]:
        q_emb = model.embed_questions(collate([data.q_tokens[i] for i in idx], data.pad_id))
        a_emb = model.embed_answers(collate([data.a_tokens[i] for i in idx], data.pad_id))
        loss = in_batch_loss(q_emb, a_emb, config.scale, config.symmetric, data.answer_keys[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        if schedule:
            scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture
def setting(tiny_config, tiny_splits):
    train = tiny_splits[0]
    config = TrainConfig(batch_size=16, lr=1e-3, seed=3, num_epochs=2, warmup_ratio=0.5)
    config = replace(config, precision="fp32", answer_chunks=1, max_steps=STEPS)
    assert train.groups is not None  # the embedded set's topics: fit's batches are topic-aware
    return replace(tiny_config, question_flag=False), train, config


def test_fit_takes_exactly_the_hand_written_steps(setting):
    encoder, train, config = setting
    by_hand = DualEncoder.from_config(encoder, seed=config.seed)
    hand = train_by_hand(by_hand, train, config, STEPS)
    by_fit = DualEncoder.from_config(encoder, seed=config.seed)
    history = fit(by_fit, train, config=config, progress=False)
    assert history.step_loss == hand  # bit for bit
    for p, q in zip(by_hand.parameters(), by_fit.parameters(), strict=True):
        assert torch.equal(p, q)
    assert len(set(hand)) == STEPS  # the steps differ: the comparison is not of a constant


def test_without_the_schedule_the_first_loss_after_a_changed_rate_differs(setting):
    encoder, train, config = setting
    reference = fit(
        DualEncoder.from_config(encoder, seed=config.seed), train, config=config, progress=False
    )
    model = DualEncoder.from_config(encoder, seed=config.seed)
    unscheduled = train_by_hand(model, train, config, STEPS, schedule=False)
    optimizer, scheduler = make_optimizer(model, config, STEPS)
    rates = []
    for _ in range(STEPS):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    changed = next(k for k, r in enumerate(rates, 1) if r != rates[0])
    differs = next(k for k, (a, b) in enumerate(zip(unscheduled, reference.step_loss), 1) if a != b)
    assert changed < STEPS and differs == changed + 1
