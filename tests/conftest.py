"""Shared fixtures: a tiny random BERT built from the packaged config, and small data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

from qa_lib import DualEncoder, EncoderConfig, load_pairs  # noqa: E402
from qa_lib.course import TINY_BERT, smoke_encoder_config

# The tiny test models gain nothing from a second thread, and two spinning threads per process
# slow the suite by 10x or more when anything else shares the two cores.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TINY = TINY_BERT  # the notebooks' smoke-mode BERT (qa_lib.course), defined once


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with a reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset not present: {path}")
    return path


def poison_nth_call(monkeypatch, module: str, name: str, n: int, value: float) -> None:
    """Make the ``n``-th call of ``qa_lib.<module>.<name>`` return its result times ``value``.

    With ``value`` NaN or inf this simulates a loss that stops being finite at step ``n``: a
    fault no callback can inject, so this one test helper patches the library.
    """
    import importlib

    target = importlib.import_module(f"qa_lib.{module}")
    real, calls = getattr(target, name), []

    def poisoned(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return out * value if len(calls) == n else out

    monkeypatch.setattr(target, name, poisoned)


class FixedModel:
    """A stand-in dual encoder with given embeddings per tower and text (unknown texts: zeros)."""

    def __init__(self, questions: dict, answers: dict, dim: int):
        self.q_vectors, self.a_vectors, self.dim = questions, answers, dim

    def encode_questions(self, texts, *args, **kwargs) -> torch.Tensor:
        return torch.tensor([self.q_vectors.get(t, [0.0] * self.dim) for t in texts])

    def encode_answers(self, texts, *args, **kwargs) -> torch.Tensor:
        return torch.tensor([self.a_vectors.get(t, [0.0] * self.dim) for t in texts])

    def score(self, questions, answers) -> torch.Tensor:
        return self.encode_questions(questions) @ self.encode_answers(answers).T


@pytest.fixture(scope="session")
def tiny_config() -> EncoderConfig:
    """A 2-layer, 32-wide random BERT with the packaged tokenizer (about 1M parameters).

    ``QA_TINY_SOURCE`` may name another folder with the config and tokenizer (no weights
    needed), for machines without the packaged model, such as a bare GPU box.
    """
    return smoke_encoder_config()


@pytest.fixture
def tiny_model(tiny_config) -> DualEncoder:
    return DualEncoder.from_config(tiny_config, seed=0)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_config) -> Path:
    """A folder holding a tiny random BERT + tokenizer, usable as ``--model``."""
    from qa_lib.config import default_model_path
    from qa_lib.hub import load_backbone, load_tokenizer

    folder = tmp_path_factory.mktemp("tiny_bert")
    load_backbone(default_model_path(), False, dict(TINY)).save_pretrained(folder)
    load_tokenizer(default_model_path()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def default_splits():
    return {s: load_pairs("default", s) for s in ("train", "validation", "test")}


@pytest.fixture(scope="session")
def tiny_splits(default_splits):
    """Small train/test subsets of the embedded data."""
    train, test = default_splits["train"], default_splits["test"]
    return train.select(range(96)), test.select(range(32))


@pytest.fixture
def interrupted_fit():
    """``run(steps, *fit_args, **fit_kwargs)``: fit, but die (KeyboardInterrupt) after ``steps``."""
    from qa_lib import fit

    def run(steps: int, *args, **kwargs) -> None:
        done = []

        def on_step(_: int) -> None:
            if len(done) == steps:
                raise KeyboardInterrupt
            done.append(steps)

        with pytest.raises(KeyboardInterrupt):
            fit(*args, **kwargs, on_step=on_step)

    return run
