"""qa_lib.packed: the towers' forward pass without the padding, against transformers' own."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from qa_lib import DualEncoder
from qa_lib.batching import collate
from qa_lib.packed import HAS_ONEDNN, can_pack, packed_forward

TEXTS = ["a b", "a much longer text with many more tokens than the others", "what is it?", "x"]


def test_hidden_states_match_transformers_on_the_real_tokens(tiny_model):
    encoder = tiny_model.a_encoder.eval()
    batch = tiny_model.tokenize(TEXTS, 32)
    mask = batch["attention_mask"].bool()
    assert not mask.all()  # the batch has padding to skip
    with torch.no_grad():
        ref = encoder(**batch, output_hidden_states=True).hidden_states
        for capture in range(1, len(ref)):
            last, middle = packed_forward(encoder, batch["input_ids"], mask.long(), capture)
            assert_close(last[mask], ref[-1][mask], rtol=1e-5, atol=1e-5)
            assert_close(middle[mask], ref[capture][mask], rtol=1e-5, atol=1e-5)
            assert (last[~mask] == 0).all()
    assert packed_forward(encoder, batch["input_ids"], mask.long())[1] is None


def _gradients(model, packed: bool) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model).eval()  # no dropout: the two passes' gradients compare exactly
    model.packed = packed
    ids = model.tokenizer(TEXTS)["input_ids"]
    q_emb = model.embed_questions(collate(ids, 0))
    a_emb = model.embed_answers(collate(ids[::-1], 0))
    loss = nn.functional.cross_entropy(20 * q_emb @ a_emb.T, torch.arange(4).flip(0))
    (loss + model.flag_columns(collate(ids, 0)).sum()).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_same_embeddings_and_gradients_as_the_padded_pass(tiny_model):
    unpacked = copy.deepcopy(tiny_model)
    unpacked.packed = False
    assert_close(
        tiny_model.encode_answers(TEXTS), unpacked.encode_answers(TEXTS), atol=1e-5, rtol=1e-5
    )
    packed, padded = _gradients(tiny_model, True), _gradients(tiny_model, False)
    assert packed.keys() == padded.keys()
    assert "question_flag.probe.weight" in packed  # the detector's pass ran packed too
    for name in padded:
        assert_close(packed[name], padded[name], rtol=1e-4, atol=1e-6, msg=name)


def test_only_plain_bert_encoders_are_packed(tiny_model):
    assert can_pack(tiny_model.a_encoder)
    assert not can_pack(nn.Linear(2, 2))
    decoder = copy.deepcopy(tiny_model.a_encoder)
    decoder.config.is_decoder = True
    assert not can_pack(decoder)


def test_with_dropout_on_a_seed_trains_the_same_towers_packed_or_not(tiny_config, tiny_splits):
    from qa_lib import TrainConfig, fit

    train, _ = tiny_splits
    config = TrainConfig(batch_size=32, num_epochs=1, precision="fp32", seed=0)
    losses = {}
    for packed in (True, False):
        model = DualEncoder.from_config(tiny_config, seed=0)
        assert model.q_encoder.config.hidden_dropout_prob > 0  # dropout is on while training
        model.packed, model.fast_dropout = packed, False  # transformers' own masks
        losses[packed] = fit(model, train, config=config, progress=False).step_loss
    assert len(losses[True]) == 3
    # the same dropout masks: a different mask would move the loss by far more than rounding
    assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-5, atol=1e-6)


def test_keep_mask_drops_p_of_the_elements_seeded():
    from qa_lib.packed import LEVELS, keep_mask

    torch.manual_seed(0)
    keep, factor = keep_mask((1000, 1000), 0.1)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    drop = round(0.1 * LEVELS) / LEVELS  # 0.100006: p rounded to 1/65536
    assert abs((~keep).float().mean().item() - drop) < 0.002  # 1e6 draws: std 0.0003
    assert factor == pytest.approx(1 / (1 - drop))
    lanes = (~keep).reshape(-1, 4).float().mean(0)  # the 4 lanes of each 64-bit draw alike
    assert_close(lanes, torch.full((4,), drop), rtol=0, atol=0.003)  # 250,000 each: std 0.0006
    torch.manual_seed(0)
    assert torch.equal(keep_mask((1000, 1000), 0.1)[0], keep)  # the global seed decides
    keep_all, one = keep_mask((7,), 1e-9)  # p below 1/65536: nothing dropped
    assert bool(keep_all.all()) and one == 1.0
    for dtype in (torch.float32, torch.bfloat16):  # the 0/1 mask the layers multiply by
        torch.manual_seed(0)
        ones, _ = keep_mask((1000, 1000), 0.1, dtype=dtype)
        assert ones.dtype == dtype and torch.equal(ones, keep.to(dtype))
        x = torch.randn(1000, 1000).to(dtype)
        assert torch.equal(x * factor * ones, torch.where(keep, x * factor, 0.0))


def test_written_attention_is_sdpa_and_drops_the_weights_it_says():
    from qa_lib.packed import keep_mask, written_attention

    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(3))
    key_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None]
    scale = 0.5
    ref = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=scale)
    out = written_attention(q, k, v, key_mask, scale, 0.0)
    assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    for g, r in zip(grads, torch.autograd.grad(ref.sum(), (q, k, v))):
        assert_close(g, r, rtol=1e-5, atol=1e-6)
    torch.manual_seed(7)
    dropped = written_attention(q, k, v, key_mask, scale, 0.5)
    torch.manual_seed(7)
    keep, factor = keep_mask((2, 3, 5, 5), 0.5)  # the same draw
    weights = ((q @ k.mT) * scale).masked_fill(~key_mask, float("-inf")).softmax(-1)
    assert_close(dropped, (weights * keep) @ v * factor, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(dropped, out)


def test_fast_dropout_trains_reproducibly_with_other_masks(tiny_config, tiny_splits):
    from qa_lib import TrainConfig, fit

    train, _ = tiny_splits
    config = TrainConfig(batch_size=32, num_epochs=1, precision="fp32", seed=0)
    losses = []
    for fast in (True, True, False):
        model = DualEncoder.from_config(tiny_config, seed=0)
        model.fast_dropout = fast
        losses.append(torch.tensor(fit(model, train, config=config, progress=False).step_loss))
    assert_close(losses[0], losses[1], rtol=0, atol=0)  # the seed decides the masks
    assert not torch.allclose(losses[0], losses[2])  # other masks than bernoulli_'s
    assert_close(losses[0][0], losses[2][0], rtol=0.05, atol=0.05)  # the same distribution


@pytest.mark.skipif(not HAS_ONEDNN, reason="oneDNN's product is used on x86 CPUs only")
def test_onednn_product_only_where_no_gradient_is_needed(monkeypatch):
    from qa_lib import packed

    calls = []
    product = torch.ops.mkldnn._linear_pointwise
    fake_ops = type("Ops", (), {"_linear_pointwise": lambda *a: calls.append(1) or product(*a)})
    monkeypatch.setattr(packed.torch.ops, "mkldnn", fake_ops, raising=False)
    torch.manual_seed(0)
    layer, x = nn.Linear(24, 40), torch.randn(30, 24)
    ref = nn.functional.linear(x, layer.weight, layer.bias)
    with torch.no_grad():  # encoding: oneDNN's product, the same numbers
        assert_close(packed.linear(x, layer, onednn=True), ref, rtol=1e-5, atol=1e-5)
        assert calls == [1]
        packed.linear(x, layer, onednn=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: autocast's own product
            assert packed.linear(x, layer, onednn=True).dtype == torch.bfloat16
    assert calls == [1]
    out = packed.linear(x, layer, onednn=True)  # gradients wanted: PyTorch's product
    assert calls == [1] and out.grad_fn is not None


def test_encoding_through_onednn_gives_mkls_embeddings(tiny_model, monkeypatch):
    from qa_lib import packed

    model = copy.deepcopy(tiny_model)
    model.precision = "fp32"  # as on a CPU without native bf16
    used = []
    real = packed.linear
    monkeypatch.setattr(
        packed, "linear", lambda x, layer, onednn: used.append(onednn) or real(x, layer, onednn)
    )
    texts = TEXTS * 8
    ours = model.encode_answers(texts)
    assert used and all(used)  # every product of the pass asked for oneDNN
    used.clear()
    model.onednn = False
    assert_close(ours, model.encode_answers(texts), rtol=1e-5, atol=1e-5)
    assert used and not any(used)  # and none of them with the switch off


def test_round_rows_adds_fewer_than_64_rows_or_an_eighth():
    from qa_lib.packed import round_rows

    assert round_rows(37, 1) == 37 and round_rows(0, 64) == 0
    assert round_rows(1, 64) == round_rows(64, 64) == 64 and round_rows(65, 64) == 128
    for n in range(1, 20_000, 7):
        rounded = round_rows(n, 64)
        assert 0 <= rounded - n < max(64, n / 8) and rounded % 64 == 0
    # few distinct row counts recur: oneDNN compiles one kernel per shape
    assert len({round_rows(n, 64) for n in range(1, 4097)}) <= 40


def test_filler_rows_change_no_output_or_gradient(tiny_model, monkeypatch):
    from qa_lib import packed

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    packing = packed.Packing.of(mask, 8)
    assert packing.rows.tolist() == [0, 1, 2, 4] and len(packing.gather) == 8
    grid = torch.randn(2, 4, 3)
    assert_close(packing.unpack(packing.pack(grid)), grid * mask[..., None])

    # with fast dropout: the masks' stream too
    def trained(rounded: bool) -> tuple[torch.Tensor, dict]:
        monkeypatch.setattr(packed, "rounds_rows", lambda run: rounded)
        model = copy.deepcopy(tiny_model).train()
        ids = model.tokenizer(TEXTS)["input_ids"]
        torch.manual_seed(0)
        a_emb = model.embed_answers(collate(ids, 0))
        a_emb.square().sum().backward()
        return a_emb, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    (plain, plain_grads), (rounded, rounded_grads) = trained(False), trained(True)
    assert_close(rounded, plain, rtol=1e-5, atol=1e-6)
    assert rounded_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        assert_close(rounded_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.skipif(not HAS_ONEDNN, reason="the rounding is for oneDNN's products (x86 CPUs)")
def test_rows_are_rounded_where_onednn_multiplies(tiny_model, monkeypatch):
    from qa_lib import packed

    seen = []
    real = packed.Packing.of
    monkeypatch.setattr(
        packed.Packing, "of", lambda mask, multiple=1: seen.append(multiple) or real(mask, multiple)
    )
    model = copy.deepcopy(tiny_model)
    batch = model.tokenize(TEXTS, 32)
    model.train()
    model.embed_answers(batch)  # fp32 training: MKL's products
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.embed_answers(batch)  # bf16: oneDNN's
    model.eval()
    with torch.no_grad():
        model.embed_answers(batch)  # fp32 without gradients: oneDNN's (model.onednn)
        model.onednn = False
        model.embed_answers(batch)  # MKL's
    assert seen == [1, packed.ONEDNN_ROWS, packed.ONEDNN_ROWS, 1]
