from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, Pairs, QAError, TrainConfig, fit
from qa_lib.batching import collate, tokenize_pairs
from qa_lib.question_flag import flag_features
from qa_lib.runtime import native_bf16, use_bf16
from qa_lib.step import batch_loss, cached_step, echo_weights, train_step


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _plain_reference(model, pairs, config) -> torch.Tensor:
    """The textbook step: tokenise the strings, pad to the longest, one forward per tower."""
    q_batch = model.tokenize(pairs.questions, model.config.max_q_len)
    a_batch = model.tokenize(pairs.answers, model.config.max_a_len)
    q_emb, a_emb = model(q_batch, a_batch)
    towers_learn = echo_weights(model, config)[1] > 0
    q_tokens = model.tokenize(pairs.questions, model.config.max_a_len)
    echo, detector = (model.embed_answers(q_tokens), None) if towers_learn else (None, None)
    if model.has_question_flag:  # echoes and form views, read by the whole answer tower
        data = tokenize_pairs(model, pairs)
        tokens = collate(data.q_tokens + data.views, data.pad_id)
        labels = [True] * len(pairs) + data.view_is_question.tolist()
        detector = (_detector_column(model, tokens), torch.tensor(labels))
    keys = torch.arange(len(pairs))  # the test pairs' answers are all different
    assert len(set(pairs.answers)) == len(pairs)
    loss = batch_loss(model, config, q_emb, a_emb, keys, echo, detector)
    loss.backward()
    return loss.detach()


def _detector_column(model, batch) -> torch.Tensor:
    """The flag column from a full run of the answer tower (no gradients into the tower)."""
    with torch.no_grad():
        hidden = model.a_encoder(**batch, output_hidden_states=True).hidden_states
    mask, kind = batch["attention_mask"], model.config.flag_features
    middle = flag_features(hidden[model.flag_layer], mask, kind)
    return model.question_flag(middle)[:, 0]


@pytest.fixture
def batch(tiny_model, tiny_splits):
    pairs = tiny_splits[0].select(range(16))
    return pairs, tokenize_pairs(tiny_model, pairs), list(range(16))


@pytest.mark.parametrize("question_flag", [True, False], ids=["question-flag", "echo-negative"])
def test_fast_path_and_gradient_cache_match_the_plain_step(tiny_config, tiny_splits, question_flag):
    tiny_model = DualEncoder.from_config(tiny_config, seed=0, question_flag=question_flag)
    pairs = tiny_splits[0].select(range(16))
    data, idx = tokenize_pairs(tiny_model, pairs), list(range(16))
    tiny_model.eval()  # no dropout: every path computes the same function
    config = TrainConfig(answer_chunks=4, precision="fp32")  # exact paths; bf16: next test
    if not question_flag:  # without the flag, the echo negative trains the towers apart
        config = replace(config, echo_negative_weight=1.0)
    loss_ref = _plain_reference(tiny_model, pairs, config)
    ref = _grads(tiny_model)
    loss_fast = train_step(tiny_model, data, idx, config)
    fast = _grads(tiny_model)
    loss_cached = train_step(tiny_model, data, idx, replace(config, grad_cache_chunk=4))
    cached = _grads(tiny_model)
    assert_close(loss_fast, loss_ref, atol=1e-5, rtol=1e-5)
    assert_close(loss_cached, loss_ref, atol=1e-5, rtol=1e-5)
    assert ref.keys() == fast.keys() == cached.keys() and len(ref) > 10
    assert ("question_flag.probe.weight" in ref) == question_flag
    for name in ref:
        assert_close(fast[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)
        assert_close(cached[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bf16_autocast_stays_within_bf16_tolerance_of_fp32(tiny_model, batch):
    pairs, data, idx = batch
    tiny_model.eval()
    config = TrainConfig(answer_chunks=4, precision="fp32")
    loss_ref = _plain_reference(tiny_model, pairs, config)
    ref = _grads(tiny_model)
    # bf16 autocast runs on any CPU (emulated where the hardware lacks it), so CI checks it
    loss_bf16 = train_step(tiny_model, data, idx, replace(config, precision="bf16"))
    bf16 = _grads(tiny_model)
    assert loss_bf16 != loss_ref  # the matrix products really ran in bf16
    assert_close(loss_bf16, loss_ref, atol=0.05, rtol=0.02)
    assert all(g.dtype == torch.float32 for g in bf16.values())  # weights and grads stay fp32
    # all gradients as one vector (single tensors such as the key biases have ~0 true gradient)
    flat_ref, flat_bf16 = (torch.cat([g[n].flatten() for n in sorted(ref)]) for g in (ref, bf16))
    assert torch.nn.functional.cosine_similarity(flat_bf16, flat_ref, dim=0) > 0.99


def test_precision_names_resolve(tiny_model):
    cpu = torch.device("cpu")
    assert use_bf16(cpu, "bf16") and not use_bf16(cpu, "fp32")
    assert use_bf16(cpu, "auto") == native_bf16(cpu)
    with pytest.raises(QAError, match="unknown precision 'fp16'"):
        use_bf16(cpu, "fp16")
    with pytest.raises(QAError, match="unknown precision"):
        fit(tiny_model, Pairs(["a", "b"], ["c", "d"]), config=TrainConfig(precision="half"))


def test_gradient_cache_replays_dropout_exactly(tiny_model, batch):
    _, data, idx = batch
    # equal lengths keep the length sort in input order, so both paths see the same rows
    data = replace(
        data, q_tokens=[q[:4] for q in data.q_tokens], a_tokens=[a[:8] for a in data.a_tokens]
    )
    assert {len(q) for q in data.q_tokens} == {4} and {len(a) for a in data.a_tokens} == {8}
    tiny_model.train()  # dropout on: replay must reuse each chunk's random mask
    config = TrainConfig(answer_chunks=1, precision="fp32")
    torch.manual_seed(5)
    loss_plain = train_step(tiny_model, data, idx, config)
    plain = _grads(tiny_model)
    torch.manual_seed(5)
    # one chunk per tower consumes the random stream in the plain step's order
    loss_cached = cached_step(tiny_model, data, idx, replace(config, grad_cache_chunk=16))
    cached = _grads(tiny_model)
    assert_close(loss_cached, loss_plain, atol=1e-6, rtol=1e-6)
    for name in plain:
        assert_close(cached[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
