from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, TrainConfig, in_batch_loss
from qa_lib.question_flag import flag_loss, flagged, harden
from qa_lib.step import batch_loss

TEXTS = ["a short one", "a considerably longer text with many more tokens in it", "mid length text"]


def test_the_flag_adds_one_neutral_column(tiny_config):
    with_prior = DualEncoder.from_config(tiny_config, seed=0)
    without = DualEncoder.from_config(tiny_config, seed=0, question_flag=False)
    assert with_prior.has_question_flag and not without.has_question_flag
    assert with_prior.dim == without.dim + 1 == 33
    q_emb = with_prior.encode_questions(TEXTS)
    assert torch.equal(q_emb[:, -1], torch.ones(3))  # questions carry a constant 1
    # a fresh detector is undecided (p = 0.5): nothing is flagged, the scores are the cosines
    assert torch.equal(with_prior.encode_answers(TEXTS)[:, -1], torch.zeros(3))
    assert_close(with_prior.score(TEXTS, TEXTS), without.score(TEXTS, TEXTS))
    tied = DualEncoder.from_config(tiny_config, tied=True)
    assert not tied.has_question_flag and tied.dim == 32  # one tower has no answer-only part
    assert not DualEncoder.from_config(tiny_config, normalize=False).has_question_flag


def test_a_flagged_text_loses_exactly_one(tiny_config):
    model = DualEncoder.from_config(tiny_config, seed=0)
    before = model.score(TEXTS, TEXTS)
    with torch.no_grad():
        model.question_flag.probe.bias.fill_(10.0)  # the detector now calls every text a question
    assert torch.equal(model.encode_answers(TEXTS)[:, -1], -torch.ones(3))
    assert_close(model.score(TEXTS, TEXTS), before - 1)


def test_harden_flags_only_likely_questions():
    column = torch.tensor([-0.01, -0.5, -0.51, -0.99])  # minus the detector's probability
    assert torch.equal(harden(column), torch.tensor([0.0, 0.0, -1.0, -1.0]))


def test_echoes_train_the_detector_only_and_leave_dropout_alone(tiny_model):
    tiny_model.train()  # dropout on: the echo pass must not draw from the random stream
    batch = tiny_model.tokenize(TEXTS, 24)
    state = torch.get_rng_state()
    echo = tiny_model.embed_echoes(batch, towers_learn=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert tiny_model.a_encoder.training, "the answer tower is back in training mode"
    echo[:, -1].sum().backward()
    grads = {n for n, p in tiny_model.named_parameters() if p.grad is not None}
    assert grads == {"question_flag.probe.weight", "question_flag.probe.bias"}
    assert 0 < tiny_model.flag_layer < tiny_model.a_encoder.config.num_hidden_layers + 1


def test_flag_loss_is_the_detector_cross_entropy():
    undecided = torch.full((4,), -0.5)  # p = 0.5 for every text
    assert_close(flag_loss(undecided, undecided), torch.tensor(math.log(2)))
    sure = flag_loss(torch.full((4,), -1e-4), torch.full((3,), -(1 - 1e-4)))
    assert sure < 1e-3
    wrong = flag_loss(torch.full((4,), -0.9), torch.full((3,), -0.1))
    assert_close(wrong, torch.tensor(-(math.log(0.1) + math.log(0.1)) / 2))


class _FlagModel:
    """What batch_loss reads of a model: the flag is on, separate towers."""

    has_question_flag = True

    class config:  # noqa: N801
        tied = False


def test_the_flag_column_only_trains_the_detector():
    """With the flag, the in-batch part ignores the last column; the echoes train it alone."""
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 6), dim=-1)
    a = torch.nn.functional.normalize(torch.randn(4, 6), dim=-1)
    prior = -torch.rand(4, 1)
    echo_prior = -torch.rand(4, 1)
    q_full = torch.cat([q, torch.ones(4, 1)], -1)
    a_full = torch.cat([a, prior], -1).requires_grad_()
    echo_full = torch.cat([q, echo_prior], -1)  # an echo as close to its question as can be
    config = TrainConfig(flag_loss_weight=0.5)
    loss = batch_loss(_FlagModel, config, q_full, a_full, torch.arange(4), echo_full)
    expected = in_batch_loss(q, a, 20.0) + 0.5 * flag_loss(prior[:, 0], echo_prior[:, 0])
    assert_close(loss, expected)
    plain = batch_loss(_FlagModel, config, q_full, a_full, torch.arange(4))  # no echoes: no flag
    plain.backward()
    assert torch.count_nonzero(a_full.grad[:, -1]) == 0  # the in-batch loss leaves the prior be
    assert torch.count_nonzero(a_full.grad[:, :-1]) > 0


def test_flagged_reads_the_last_column_of_flagged_models_only(tiny_model):
    a_emb = torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, -1.0]])
    assert flagged(tiny_model, a_emb).tolist() == [False, True]
    assert flagged(object(), a_emb) is None
    assert math.isclose(float(harden(torch.tensor([-0.7]))), -1.0)
