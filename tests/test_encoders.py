from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError
from qa_lib.encoders import OPTIONS_FILE, harden_prior, pool, recover_interrupted_saves

TEXTS = ["a short one", "a considerably longer text with many more tokens in it", "mid length text"]


def test_two_separate_towers(tiny_model):
    assert tiny_model.q_encoder is not tiny_model.a_encoder
    q_params = {id(p) for p in tiny_model.q_encoder.parameters()}
    assert not q_params & {id(p) for p in tiny_model.a_encoder.parameters()}


def test_tied_towers_share_one_encoder(tiny_config):
    tied = DualEncoder.from_config(tiny_config, tied=True, proj_dim=8)
    assert tied.q_encoder is tied.a_encoder and tied.q_proj is tied.a_proj
    assert_close(tied.encode_questions(TEXTS), tied.encode_answers(TEXTS))


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
    assert q_emb.shape == (3, 16 + 1)  # (batch, proj_dim + the answer prior's column)
    assert_close(q_emb[:, :-1].norm(dim=-1), torch.ones(3))
    raw = DualEncoder.from_config(tiny_config, normalize=False, pooling="cls")
    assert raw.encode_answers(TEXTS).shape == (3, 32)  # (batch, hidden): no prior on raw scores
    assert not torch.allclose(raw.encode_answers(TEXTS).norm(dim=-1), torch.ones(3))


def test_length_sorted_encoding_keeps_input_order(tiny_model):
    together = tiny_model.encode_answers(TEXTS, batch_size=2)
    one_by_one = torch.cat([tiny_model.encode_answers([t]) for t in TEXTS])
    assert_close(together, one_by_one, atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize(
    "changes", [{}, {"tied": True, "proj_dim": 8}, {"proj_dim": 8}, {"answer_prior": False}]
)
def test_save_load_round_trip(tmp_path, tiny_config, changes):
    model = DualEncoder.from_config(tiny_config, **changes)
    if model.has_prior:  # a trained detector, with some texts flagged and some not
        with torch.no_grad():
            model.a_prior.weight.normal_(0, 1.0)
            _, form = model._pooled("answer", model.tokenize(TEXTS, 48))
            model.a_prior.bias.fill_(-model.a_prior(form).median().item() + 1e-3)
        assert len(set(model.encode_answers(TEXTS)[:, -1].tolist())) == 2
    model.save(tmp_path / "m")
    again = DualEncoder.load(tmp_path / "m")
    assert again.config == model.config
    assert_close(again.score(TEXTS, TEXTS), model.score(TEXTS, TEXTS))
    assert not list(tmp_path.glob(".m.*")), "no temporary folders left behind"


def test_save_replaces_atomically_and_load_rejects_partial(tmp_path, tiny_model):
    target = tiny_model.save(tmp_path / "m")
    tiny_model.save(target)  # overwriting a complete save works
    (target / OPTIONS_FILE).unlink()  # what a crash before the last write would leave
    with pytest.raises(QAError, match="no saved dual encoder"):
        DualEncoder.load(target)


def test_recover_interrupted_saves(tmp_path, tiny_model):
    """A kill mid-swap leaves best/ moved aside and a half-written temp folder: tidy both."""
    tiny_model.save(tmp_path / "best")
    (tmp_path / "best").rename(tmp_path / ".best.old-1234abcd")
    (tmp_path / ".best.tmp-5678ef90" / "question_encoder").mkdir(parents=True)
    tiny_model.save(tmp_path / "last")
    (tmp_path / "last").rename(tmp_path / ".last.old-00000000")
    tiny_model.save(tmp_path / "last")  # the new copy made it: the old one is garbage
    recover_interrupted_saves(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last"]
    assert DualEncoder.load(tmp_path / "best").config == tiny_model.config


def test_missing_model_folder_and_offline_hub_id(tmp_path):
    with pytest.raises(QAError, match="not a model folder"):
        DualEncoder.from_config(model=str(tmp_path / "nope"))
    with pytest.raises(QAError, match="Hugging Face hub"):
        DualEncoder.from_config(model="someone/no-such-model")


def test_packaged_model_loads_offline():
    model = DualEncoder.from_config()
    assert model.q_encoder.config.num_hidden_layers == 6 and model.dim == 384 + 1  # + prior
    scores = model.score(
        ["What is the capital of France?"],
        ["Paris is the capital of France.", "Bananas are yellow."],
    )
    assert scores[0, 0] > scores[0, 1]


def test_prefetched_keeps_order_with_several_threads():
    from qa_lib.encoders import _prefetched

    assert list(_prefetched(lambda x: x * x, range(50), workers=4)) == [x * x for x in range(50)]


def test_answer_prior_adds_one_neutral_column(tiny_config):
    with_prior = DualEncoder.from_config(tiny_config, seed=0)
    without = DualEncoder.from_config(tiny_config, seed=0, answer_prior=False)
    assert with_prior.has_prior and not without.has_prior
    assert with_prior.dim == without.dim + 1 == 33
    q_emb = with_prior.encode_questions(TEXTS)
    assert torch.equal(q_emb[:, -1], torch.ones(3))  # questions carry a constant 1
    # a fresh detector is undecided (p = 0.5): nothing is flagged, the scores are the cosines
    assert torch.equal(with_prior.encode_answers(TEXTS)[:, -1], torch.zeros(3))
    assert_close(with_prior.score(TEXTS, TEXTS), without.score(TEXTS, TEXTS))
    tied = DualEncoder.from_config(tiny_config, tied=True)
    assert not tied.has_prior and tied.dim == 32  # one tower has no answer-only part
    assert not DualEncoder.from_config(tiny_config, normalize=False).has_prior


def test_a_flagged_text_loses_exactly_one(tiny_config):
    model = DualEncoder.from_config(tiny_config, seed=0)
    before = model.score(TEXTS, TEXTS)
    with torch.no_grad():
        model.a_prior.bias.fill_(10.0)  # the detector now calls every text a question
    assert torch.equal(model.encode_answers(TEXTS)[:, -1], -torch.ones(3))
    assert_close(model.score(TEXTS, TEXTS), before - 1)


def test_harden_prior_flags_only_likely_questions():
    prior = torch.tensor([-0.01, -0.5, -0.51, -0.99])  # minus the detector's probability
    assert torch.equal(harden_prior(prior), torch.tensor([0.0, 0.0, -1.0, -1.0]))


def test_echoes_train_the_detector_only_and_leave_dropout_alone(tiny_model):
    tiny_model.train()  # dropout on: the echo pass must not draw from the random stream
    batch = tiny_model.tokenize(TEXTS, 24)
    state = torch.get_rng_state()
    echo = tiny_model.embed_echoes(batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert tiny_model.a_encoder.training, "the answer tower is back in training mode"
    echo[:, -1].sum().backward()
    grads = {n for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert grads == {"a_prior.weight", "a_prior.bias"}
    assert 0 < tiny_model.prior_layer < tiny_model.a_encoder.config.num_hidden_layers + 1


def test_load_refuses_a_folder_without_its_heads(tmp_path, tiny_model):
    from qa_lib.encoders import HEADS_FILE

    folder = tiny_model.save(tmp_path / "m")
    (folder / HEADS_FILE).unlink()
    with pytest.raises(QAError, match=HEADS_FILE):
        DualEncoder.load(folder)


def test_a_model_saved_before_the_answer_prior_still_loads(tmp_path, tiny_config):
    """Older saves: no ``answer_prior`` option, projections in projection.safetensors."""
    import json

    from qa_lib.encoders import HEADS_FILE, LEGACY_HEADS_FILE

    model = DualEncoder.from_config(tiny_config, proj_dim=8, answer_prior=False)
    folder = model.save(tmp_path / "old")
    options = json.loads((folder / OPTIONS_FILE).read_text())
    del options["answer_prior"], options["prior_depth"]
    (folder / OPTIONS_FILE).write_text(json.dumps(options))
    (folder / HEADS_FILE).rename(folder / LEGACY_HEADS_FILE)
    again = DualEncoder.load(folder)
    assert not again.has_prior
    assert_close(again.score(TEXTS, TEXTS), model.score(TEXTS, TEXTS))
