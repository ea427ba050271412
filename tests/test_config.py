from __future__ import annotations

import dataclasses
import os

import pytest

from qa_lib import EncoderConfig, QAError, TrainConfig, preset
from qa_lib.config import default_model_path, resolve_model_name


def test_presets_and_frozen_configs():
    assert preset("smoke").max_steps is not None and preset("full") == TrainConfig()
    assert preset("full", lr=1e-4).lr == 1e-4
    with pytest.raises(QAError, match="unknown preset"):
        preset("huge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 1.0  # type: ignore[misc]


def test_default_model_is_the_packaged_folder():
    assert EncoderConfig().model is None
    assert resolve_model_name(None) == default_model_path()
    assert resolve_model_name("all-MiniLM-L6-v2") == default_model_path()
    assert os.path.isfile(os.path.join(default_model_path(), "config.json"))
    assert resolve_model_name("bert-base-uncased") == "bert-base-uncased"
