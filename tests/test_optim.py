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
