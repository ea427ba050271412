from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError, TrainConfig, in_batch_loss
from qa_lib.batching import (
    SENTENCE_ENDS,
    VIEW_KINDS,
    full_stop,
    matched_sentence,
    restyle_question,
    tokenize_pairs,
)
from qa_lib.evaluate import first_sentence_text
from qa_lib.question_flag import flag_column, flag_features, flag_loss, flag_rate, search_column
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
        model.question_flag.probe.bias.fill_(30.0)  # the detector now calls every text a question
    assert torch.equal(model.encode_answers(TEXTS)[:, -1], -torch.ones(3))
    assert_close(model.score(TEXTS, TEXTS), before - 1)


def test_the_search_column_ramps_from_no_penalty_to_a_whole_point():
    column = -torch.tensor([0.01, 0.25, 0.5, 0.52, 0.75, 1.0])  # minus the detector's p
    expected = torch.tensor([0.0, 0.0, 0.0, -0.04, -0.5, -1.0])
    assert_close(search_column(column), expected)
    # graceful: near the threshold a change of p moves the score by twice as much, never by 1
    p = torch.linspace(0, 1, 1001)
    steps = search_column(-p).diff().abs()
    assert steps.max() <= 2 * 0.001 + 1e-6


def test_echoes_train_the_detector_only_and_leave_dropout_alone(tiny_model):
    tiny_model.train()  # dropout on: the echo pass must not draw from the random stream
    batch = tiny_model.tokenize(TEXTS, 24)
    state = torch.get_rng_state()
    column = tiny_model.flag_columns(batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert tiny_model.a_encoder.training, "the answer tower is back in training mode"
    layers = tiny_model.a_encoder.config.num_hidden_layers
    assert len(tiny_model.a_encoder.encoder.layer) == layers, "every layer is back in place"
    tiny_model.eval()
    with torch.no_grad():  # the same column as a full run of the answer tower gives
        assert_close(column.detach(), tiny_model.embed_answers(batch)[:, -1], atol=1e-6, rtol=0)
    column.sum().backward()
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


def test_flag_column_reads_the_last_column_of_flagged_models_only(tiny_model):
    a_emb = torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, -1.0], [0.0, 1.0, -0.4]])
    assert flag_column(tiny_model, a_emb).tolist() == [0.0, -1.0, pytest.approx(-0.4)]
    assert flag_column(object(), a_emb) is None
    assert math.isclose(flag_rate(flag_column(tiny_model, a_emb)), 2 / 3)  # penalised: 2 of 3


def test_form_views_break_the_length_cue(tiny_model, default_splits):
    """Every batch gets answers as short as questions and questions as long as answers."""
    pairs = default_splits["train"].select(range(40))
    data = tokenize_pairs(tiny_model, pairs)
    labels = data.view_is_question.tolist()
    assert len(data.views) == len(pairs) and labels[:5] == [False, True, False, True, True]
    decode = tiny_model.tokenizer.decode
    for i in range(0, 40, 5):
        short, restyled, faq, long, stopped = (data.views[i + k] for k in range(5))
        answer = data.a_tokens[i]
        assert len(short) <= 2 * len(data.q_tokens[i]) and short[-1] == answer[-1]
        assert decode(short[-2:-1]) in SENTENCE_ENDS  # closed as a sentence
        body, n = short[1:-2], len(short) - 3  # its words: a stretch of the answer's
        assert any(answer[k : k + n] == body for k in range(len(answer)))
        question = pairs.questions[i + 1]
        assert restyled == tiny_model.tokenizer(restyle_question(question))["input_ids"]
        assert ("?" in decode(restyled)) != ("?" in question)  # the style it lacks
        assert faq[: len(data.q_tokens[i + 2]) - 1] == data.q_tokens[i + 2][:-1]  # q, then a
        assert long[-len(data.q_tokens[i + 3]) + 1 :] == data.q_tokens[i + 3][1:]  # ..., then q
        assert len(long) > len(data.q_tokens[i + 3])
        assert stopped == tiny_model.tokenizer(full_stop(pairs.questions[i + 4]))["input_ids"]
    assert len(VIEW_KINDS) == 5


def test_restyled_questions_swap_written_and_bare():
    assert restyle_question("Who wrote Hamlet?") == "who wrote hamlet"
    assert restyle_question(" who wrote hamlet ") == "Who wrote hamlet?"  # NQ's style, written
    assert restyle_question("symptoms of tetanus") == "Symptoms of tetanus?"
    assert restyle_question("how do I fix it?") == "how do i fix it"  # a "?" makes it written
    assert restyle_question("Symptoms of cholera") == "Symptoms of cholera?"
    assert restyle_question("?") == "?"  # nothing left to restyle
    assert full_stop("Who wrote Hamlet ? ") == "Who wrote Hamlet."
    assert full_stop("Who is at risk for colitis? ?") == "Who is at risk for colitis."
    assert full_stop("who wrote hamlet") == "Who wrote hamlet?"  # bare: written instead


def test_matched_sentence_is_a_whole_sentence_as_long_as_the_question():
    cls, sep, dot = 101, 102, 99  # [CLS] a b c d . e f . g h i . [SEP]
    answer = [cls, 1, 2, 3, 4, dot, 5, 6, dot, 7, 8, 9, dot, sep]
    assert matched_sentence(answer, 5, {dot}) == [cls, 5, 6, dot, sep]  # 5 tokens: the closest
    assert matched_sentence(answer, 6, {dot}) == [cls, 7, 8, 9, dot, sep]
    assert matched_sentence(answer, 9, {dot}) == [cls, 1, 2, 3, 4, dot, sep]  # all longer
    tie = [cls, 1, 2, dot, 3, 4, dot, sep]
    assert matched_sentence(tie, 4, {dot}) == [cls, 1, 2, dot, sep]  # the first of a tie
    short = [cls, 1, dot, 2, 3, 4, dot, sep]  # "a." is too short to be a sentence
    assert matched_sentence(short, 3, {dot}) == [cls, 2, 3, 4, dot, sep]
    long = [cls, *range(20, 40), dot, sep]  # one sentence longer than 2x: cut, then closed
    assert matched_sentence(long, 4, {dot}) == [cls, 20, 21, 22, 23, 24, dot, sep]
    assert matched_sentence([cls, 1, 2, 3, sep], 2, {dot}) == [cls, 1, sep]  # no sentence end


def test_flag_features_read_the_mean_and_both_ends():
    hidden = torch.arange(24.0).reshape(1, 4, 6)  # (batch, seq, hidden)
    mask = torch.tensor([[1, 1, 1, 0]])  # the last position is padding
    features = flag_features(hidden, mask, "mean+first+last")
    assert features.shape == (1, 18)
    assert_close(features[0, :6], hidden[0, :3].mean(0))
    assert_close(features[0, 6:12], hidden[0, 0])  # [CLS]
    assert_close(features[0, 12:], hidden[0, 1])  # the text's last token, before [SEP]
    ends = flag_features(hidden, mask, "mean+ends")  # flag v2-v3: [SEP], not the padding
    assert_close(ends[0, 12:], hidden[0, 2])
    assert_close(ends[:, :12], features[:, :12])
    assert_close(flag_features(hidden, mask, "mean"), features[:, :6])
    with pytest.raises(QAError, match="unknown flag_features 'max'"):
        DualEncoder.from_config(
            model=None,
            pretrained=False,
            flag_features="max",
            model_overrides=(
                ("num_hidden_layers", 1),
                ("hidden_size", 8),
                ("num_attention_heads", 1),
                ("intermediate_size", 8),
            ),
        )


def test_an_answer_that_is_only_a_question_is_counted_apart(tiny_model):
    from qa_lib.data import Pairs
    from qa_lib.evaluate import QUESTION_ANSWERS, flag_by_length, is_question_text

    assert is_question_text("Can 48,XXYY syndrome be inherited?")
    assert is_question_text("  how is it treated ?  ")
    assert not is_question_text("Is it safe? Yes, most airlines allow it until week 36.")
    assert not is_question_text("Here are the ranges. Do you know your level?")
    assert not is_question_text("The cause is unknown.")
    answers = ["Can it be inherited?", "It is not inherited.", "Most cases are sporadic."]
    pairs = Pairs(["is it inherited?", "is it passed on?", "how does it start?"], answers)
    report = flag_by_length(tiny_model, pairs)
    assert report[QUESTION_ANSWERS]["n"] == 1
    lengths = [k for k in report if k.startswith("answers") and k != QUESTION_ANSWERS]
    assert sum(report[k]["n"] for k in lengths) == 2


def test_question_probability_and_flag_by_length(tiny_model, tiny_splits):
    from qa_lib.evaluate import flag_by_length

    p = tiny_model.question_probability(["what is it?", "It is a test."])
    assert_close(p, torch.full((2,), 0.5))  # an untrained detector is undecided
    report = flag_by_length(tiny_model, tiny_splits[1])
    buckets = [k for k in report if k.startswith("answers")]  # 3 lengths, answers that ask
    assert len(buckets) == 4 and sum(report[k]["n"] for k in buckets) == len(
        set(tiny_splits[1].answers)
    )
    assert report["questions (echoes)"]["flag_rate"] == 0.0  # p = 0.5 is no flag
    answers = list(dict.fromkeys(tiny_splits[1].answers))
    firsts = [first_sentence_text(a) for a in answers]
    assert report["first sentences of answers"]["n"] == sum(map(bool, firsts))
    assert report["questions restyled"]["n"] == len(tiny_splits[1].questions)
    written = [q for q in tiny_splits[1].questions if "?" in q]
    assert report["questions ending in a full stop"]["n"] == len(written)
    assert first_sentence_text("Cholera is caught. It spreads in 2.5 days.") == "Cholera is caught."
    assert first_sentence_text("Is it safe? Yes. Most airlines allow it.") == "Is it safe? Yes."
    assert first_sentence_text("One sentence, 2.5 km long.") == ""  # a single sentence: no row
    assert first_sentence_text("Dr. J. Smith wrote it. It sold.") == "Dr. J. Smith wrote it."
    tied = DualEncoder.from_config(tiny_model.config, tied=True)
    with pytest.raises(QAError, match="no question flag"):
        tied.question_probability(["what?"])
