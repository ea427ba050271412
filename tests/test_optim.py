from __future__ import annotations

import pytest

from qa_lib import TrainConfig
from qa_lib.optim import make_optimizer


def test_the_detector_gets_its_own_learning_rate(tiny_model):
    optimizer, _ = make_optimizer(tiny_model, TrainConfig(lr=1e-5, flag_lr=0.3), 10)
    prior = {id(p) for p in tiny_model.question_flag.parameters()}
    for group in optimizer.param_groups:
        in_group = {id(p) for p in group["params"]}
        assert not in_group or in_group <= prior or not in_group & prior
        expected = 0.3 if in_group <= prior else 1e-5
        assert group["initial_lr"] == pytest.approx(expected)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
        list(tiny_model.parameters())
    )


def _rates(model, config) -> dict[int, float]:
    optimizer, _ = make_optimizer(model, config, 10)
    return {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}


def test_answer_lr_scale_sets_the_answer_towers_rate_only(tiny_model):
    rates = _rates(tiny_model, TrainConfig(lr=1e-4, answer_lr_scale=0.25, flag_lr=0.3))
    answer = list(tiny_model.a_encoder.parameters())
    question = list(tiny_model.q_encoder.parameters())
    assert [rates[id(p)] for p in answer] == pytest.approx([2.5e-5] * len(answer))
    assert [rates[id(p)] for p in question] == pytest.approx([1e-4] * len(question))
    flag = list(tiny_model.question_flag.parameters())
    assert [rates[id(p)] for p in flag] == pytest.approx([0.3] * len(flag))


def test_proj_lr_scale_sets_the_projections_rate_only(tiny_config):
    from qa_lib import DualEncoder

    for shared in (False, True):
        model = DualEncoder.from_config(tiny_config, proj_dim=8, shared_proj=shared)
        rates = _rates(model, TrainConfig(lr=1e-4, proj_lr_scale=20.0, answer_lr_scale=0.5))
        heads = {id(p) for p in [*model.q_proj.parameters(), *model.a_proj.parameters()]}
        assert len(heads) == (2 if shared else 4)
        assert [rates[i] for i in heads] == pytest.approx([2e-3] * len(heads))
        answer = list(model.a_encoder.parameters())
        assert [rates[id(p)] for p in answer] == pytest.approx([5e-5] * len(answer))


def test_a_tied_tower_keeps_the_towers_rate(tiny_config):
    from qa_lib import DualEncoder

    tied = DualEncoder.from_config(tiny_config, tied=True)
    rates = _rates(tied, TrainConfig(lr=1e-4, answer_lr_scale=0.0))
    assert list(rates.values()) == pytest.approx([1e-4] * len(rates))  # one tower, both sides


def test_a_negative_answer_lr_scale_is_one_clear_error(tiny_model):
    from qa_lib.errors import QAError

    with pytest.raises(QAError, match="answer_lr_scale -1.0 is negative"):
        make_optimizer(tiny_model, TrainConfig(answer_lr_scale=-1.0), 10)
