"""CUDA checks: the fast path (bf16 autocast, fused AdamW, gradient caching) on a real GPU.

Skipped on machines without CUDA (CI has none); run on a GPU with ``pytest -m gpu``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, TrainConfig, fit
from qa_lib.batching import tokenize_pairs
from qa_lib.step import batch_loss, train_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _grads(model):
    out = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def test_bf16_fast_path_matches_fp32_reference(tiny_config, tiny_splits):
    model = DualEncoder.from_config(tiny_config).cuda().eval()
    pairs = tiny_splits[0].select(range(32))
    data, idx = tokenize_pairs(model, pairs), list(range(32))
    q = model.tokenize(pairs.questions, model.config.max_q_len)
    a = model.tokenize(pairs.answers, model.config.max_a_len)
    column = model.flag_columns(model.tokenize(pairs.questions, model.config.max_a_len))
    echoes = (column, torch.ones_like(column, dtype=torch.bool))
    # fp32, one padded batch; the question flag's detector loss on the echoes included
    keys = data.answer_keys.cuda()
    config = TrainConfig(flag_views=False)
    reference = batch_loss(model, config, *model(q, a), keys, None, echoes)
    fast = train_step(model, data, idx, config)  # bf16 autocast, length-sorted chunks
    assert_close(fast, reference.detach(), atol=0.05, rtol=0.02)  # bf16 tolerance


def test_gradient_cache_matches_plain_step_on_cuda(tiny_config, tiny_splits):
    model = DualEncoder.from_config(tiny_config).cuda().eval()
    data, idx = tokenize_pairs(model, tiny_splits[0]), list(range(64))
    config = TrainConfig(answer_chunks=1)  # both steps run under bf16 autocast
    plain_loss = train_step(model, data, idx, config)
    plain = _grads(model)
    cached_loss = train_step(model, data, idx, replace(config, grad_cache_chunk=8))
    cached = _grads(model)
    assert_close(cached_loss, plain_loss, atol=1e-2, rtol=1e-2)
    for name in plain:
        assert_close(cached[name], plain[name], atol=2e-2, rtol=5e-2, msg=name)


def test_fit_on_cuda_learns(tiny_config, tiny_splits):
    model = DualEncoder.from_config(tiny_config)
    config = TrainConfig(num_epochs=3, batch_size=16, lr=1e-3, warmup_ratio=0.0, device="cuda")
    history = fit(model, tiny_splits[0], config=config, progress=False)
    assert model.device.type == "cuda"
    assert history.step_loss[-1] < history.step_loss[0]
