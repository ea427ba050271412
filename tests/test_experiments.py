from __future__ import annotations

import pytest
import torch

from qa_lib import VARIANTS, EncoderConfig, TrainConfig, evaluate, train_variant
from qa_lib.experiments import lesson_encoder, variant_config

BUDGET = TrainConfig(num_epochs=1, batch_size=8, lr=1e-3, max_steps=3, eval_batch_size=16)


def test_the_lesson_variant_is_the_original_lessons_recipe():
    lesson = lesson_encoder(EncoderConfig())
    assert (lesson.pretrained, lesson.pooling, lesson.normalize) == (False, "cls", False)
    assert lesson.model_overrides == (("num_hidden_layers", 3),)
    assert not lesson.has_question_flag  # raw dot products: no fixed range for a flag
    tiny = EncoderConfig(model_overrides=(("hidden_size", 32),))
    assert lesson_encoder(tiny).model_overrides == tiny.model_overrides  # smoke runs keep tiny
    config = variant_config("random_init", BUDGET, lesson_epochs=5)
    assert (config.num_epochs, config.scale, config.flag_loss_weight) == (5, 1.0, 0.0)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_changes_only_what_it_says(name):
    variant = VARIANTS[name]
    config = variant_config(name, BUDGET, lesson_epochs=5)
    if variant.train is None:
        assert config is None
        return
    for key, value in variant.train.items():
        assert getattr(config, key) == value
    same = {"batch_size", "lr", "max_steps"} - set(variant.train)  # a lever may set the lr
    assert all(getattr(config, k) == getattr(BUDGET, k) for k in same)
    assert variant.about and variant.encoder(EncoderConfig()) is not None


def test_train_variant_trains_unless_untrained(tiny_config, tiny_splits):
    train, test = tiny_splits
    untrained = train_variant("untrained", train, BUDGET, seed=0, base=tiny_config)
    trained = train_variant("qa_lib", train, BUDGET, seed=0, base=tiny_config)
    noecho = train_variant("qa_lib_noecho", train, BUDGET, seed=0, base=tiny_config)
    q = test.questions[:4]
    assert not torch.equal(untrained.encode_questions(q), trained.encode_questions(q))
    # the same seed, the flag's loss off: the towers come out the same, only the detector differs
    assert torch.equal(trained.encode_questions(q), noecho.encode_questions(q))
    tied = train_variant("qa_lib_tied", train, BUDGET, seed=0, base=tiny_config)
    assert tied.config.tied and evaluate(tied, test)["question_echo_rate"] == 1.0
