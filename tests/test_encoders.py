from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError
from qa_lib.encoders import pool

TEXTS = ["a short one", "a considerably longer text with many more tokens in it", "mid length text"]


def test_two_separate_towers(tiny_model):
    assert tiny_model.q_encoder is not tiny_model.a_encoder
    q_params = {id(p) for p in tiny_model.q_encoder.parameters()}
    assert not q_params & {id(p) for p in tiny_model.a_encoder.parameters()}


def test_tied_towers_share_one_encoder(tiny_config):
    tied = DualEncoder.from_config(tiny_config, tied=True, proj_dim=8)
    assert tied.q_encoder is tied.a_encoder and tied.q_proj is tied.a_proj
    assert_close(tied.encode_questions(TEXTS), tied.encode_answers(TEXTS))


def test_separate_towers_can_share_one_projection(tiny_config):
    shared = DualEncoder.from_config(tiny_config, proj_dim=8, shared_proj=True)
    assert shared.q_encoder is not shared.a_encoder and shared.q_proj is shared.a_proj
    n_params = sum(p.numel() for p in shared.parameters())
    apart = DualEncoder.from_config(tiny_config, proj_dim=8)
    assert sum(p.numel() for p in apart.parameters()) == n_params + 8 * 32 + 8  # one head more
    with pytest.raises(QAError, match="set proj_dim"):
        DualEncoder.from_config(tiny_config, shared_proj=True)


@pytest.mark.parametrize("shared", [False, True])
def test_a_projection_of_the_towers_size_starts_as_the_identity(tiny_config, shared):
    plain = DualEncoder.from_config(tiny_config, seed=0)
    square = DualEncoder.from_config(tiny_config, seed=0, proj_dim=32, shared_proj=shared)
    plain.precision = square.precision = "fp32"  # bf16 would round the projection's product
    assert_close(square.score(TEXTS, TEXTS), plain.score(TEXTS, TEXTS))
    narrow = DualEncoder.from_config(tiny_config, seed=0, proj_dim=16, shared_proj=shared)
    assert not torch.allclose(narrow.q_proj.weight, torch.eye(16, 32))  # other sizes: random


def test_pooling_cls_and_mean():
    hidden = torch.arange(12.0).reshape(1, 3, 4)
    mask = torch.tensor([[1, 1, 0]])
    assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    assert_close(pool(hidden, mask, "mean"), hidden[:, :2].mean(1))
    with pytest.raises(QAError, match="pooling"):
        pool(hidden, mask, "max")


def test_projection_normalisation_and_shapes(tiny_config):
    model = DualEncoder.from_config(tiny_config, proj_dim=16, normalize=True)
    q_emb = model.encode_questions(TEXTS)
    assert q_emb.shape == (3, 16 + 1)  # (batch, proj_dim + the question flag's column)
    assert_close(q_emb[:, :-1].norm(dim=-1), torch.ones(3))
    raw = DualEncoder.from_config(tiny_config, normalize=False, pooling="cls")
    assert raw.encode_answers(TEXTS).shape == (3, 32)  # (batch, hidden): no flag on raw scores
    assert not torch.allclose(raw.encode_answers(TEXTS).norm(dim=-1), torch.ones(3))


def test_score_is_the_dot_product(tiny_model):
    scores = tiny_model.score(TEXTS[:2], TEXTS)
    assert scores.shape == (2, 3)
    expected = tiny_model.encode_questions(TEXTS[:2]) @ tiny_model.encode_answers(TEXTS).T
    assert_close(scores, expected)


def test_random_init_is_seeded_and_differs_from_pretrained(tiny_config):
    a = DualEncoder.from_config(tiny_config, seed=1).encode_questions(TEXTS)
    b = DualEncoder.from_config(tiny_config, seed=1).encode_questions(TEXTS)
    c = DualEncoder.from_config(tiny_config, seed=2).encode_questions(TEXTS)
    assert_close(a, b)
    assert not torch.allclose(a, c)


def test_packaged_model_loads_offline():
    model = DualEncoder.from_config()
    assert model.q_encoder.config.num_hidden_layers == 6 and model.dim == 384 + 1  # + the flag
    scores = model.score(
        ["What is the capital of France?"],
        ["Paris is the capital of France.", "Bananas are yellow."],
    )
    assert scores[0, 0] > scores[0, 1]


def test_layer_output_is_the_hidden_state_transformers_returns(tiny_model):
    from qa_lib.encoders import layer_output

    batch = tiny_model.tokenize(TEXTS, 16)
    encoder = tiny_model.a_encoder.eval()
    full = encoder(**batch, output_hidden_states=True).hidden_states
    hooks = [dict(layer._forward_hooks) for layer in encoder.encoder.layer]  # transformers' own
    for n in range(1, len(full)):
        with layer_output(encoder, n) as captured:
            encoder(**batch)
        assert len(captured) == 1
        assert_close(captured[0], full[n])
    assert [dict(layer._forward_hooks) for layer in encoder.encoder.layer] == hooks  # ours removed


def test_attention_dropout_is_set_and_the_backbones_own_restored(tiny_model):
    def rates():
        return {
            m.dropout.p
            for e in (tiny_model.q_encoder, tiny_model.a_encoder)
            for m in e.modules()
            if type(m).__name__.endswith("SelfAttention")
        }

    own = {tiny_model.a_encoder.config.attention_probs_dropout_prob}
    assert rates() == own == {0.1}  # EncoderConfig's default: the backbone's own
    tiny_model.set_attention_dropout(0.0)
    assert rates() == {0.0}
    tiny_model.set_attention_dropout(None)
    assert rates() == own
    with pytest.raises(QAError, match="attention dropout"):
        tiny_model.set_attention_dropout(1.5)


def test_a_saved_model_keeps_its_attention_dropout(tiny_config, tmp_path):
    model = DualEncoder.from_config(tiny_config, attention_dropout=0.0)
    loaded = DualEncoder.load(model.save(tmp_path / "m"))
    assert loaded.config.attention_dropout == 0.0
    attention = loaded.a_encoder.encoder.layer[0].attention.self
    assert attention.dropout.p == 0.0  # not the backbone's 0.1: as saved
