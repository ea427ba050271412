from __future__ import annotations

import math
from dataclasses import replace

import pytest
from torch.testing import assert_close

from qa_lib import DualEncoder, TrainConfig
from qa_lib.batching import tokenize_pairs
from qa_lib.step import chance_loss, train_step


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


def test_the_flag_and_the_echo_negative_can_train_together(tiny_config, tiny_splits):
    """Both echo objectives at once: the echoes then carry gradients into the towers."""
    model = DualEncoder.from_config(tiny_config, seed=0).eval()
    data, idx = tokenize_pairs(model, tiny_splits[0].select(range(8))), list(range(8))
    flag_only = TrainConfig(precision="fp32")
    both = replace(flag_only, echo_negative_weight=1.0)
    loss_flag = train_step(model, data, idx, flag_only)
    model.zero_grad(set_to_none=True)
    loss_both = train_step(model, data, idx, both)
    assert loss_both > loss_flag  # one more negative per row
    assert chance_loss(8, both, model) == pytest.approx(math.log(9) + math.log(2))


def test_train_step_picks_gradient_caching_only_for_smaller_chunks(tiny_model, tiny_splits):
    import qa_lib.step as step

    data, idx = tokenize_pairs(tiny_model, tiny_splits[0].select(range(8))), list(range(8))
    tiny_model.eval()
    config = TrainConfig(precision="fp32", answer_chunks=1)
    plain = step.plain_step(tiny_model, data, idx, config)
    tiny_model.zero_grad(set_to_none=True)
    same = step.train_step(tiny_model, data, idx, replace(config, grad_cache_chunk=8))
    tiny_model.zero_grad(set_to_none=True)
    cached = step.train_step(tiny_model, data, idx, replace(config, grad_cache_chunk=3))
    assert same == plain  # a chunk as large as the batch: the plain step, bit for bit
    assert_close(cached, plain, atol=1e-5, rtol=1e-5)
