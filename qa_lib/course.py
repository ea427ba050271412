"""The course notebooks' harness: run mode, output folder, results file (README, "The course").

Every notebook's config cell is one call::

    run = setup("04_training", RUN_MODE)  # RUN_MODE: the parameters cell, from QA_RUN_MODE
    print(run.describe())  # run mode, versions, device

``run`` knows the mode (``full``: the lesson; ``smoke``: the tests' quick check that every cell
runs, with tiny random BERTs), the notebook's output folder, and writes the results file the
tests read (:meth:`CourseRun.record`). Two environment variables steer it from outside:
``QA_RUNS_DIR`` (where output folders go; default ``runs/notebooks`` in the project folder) and
``QA_PROGRESS=0`` (no progress bars, for headless runs whose outputs are committed).
"""

from __future__ import annotations

import os
import platform
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
import transformers
from tqdm import TqdmWarning

from qa_lib.config import EncoderConfig
from qa_lib.errors import QAError
from qa_lib.files import write_json

RUN_MODES = ("full", "smoke")
# the smoke mode's towers: a 2-layer, 32-wide random BERT with MiniLM's tokenizer (seconds)
TINY_BERT = (
    ("hidden_size", 32),
    ("num_hidden_layers", 2),
    ("num_attention_heads", 2),
    ("intermediate_size", 64),
)
RESULTS_FILE = "results.json"  # what record() writes in the notebook's output folder


@dataclass(frozen=True)
class CourseRun:
    """One notebook's run: what ``setup`` derived from the mode and the environment."""

    name: str  # the notebook, e.g. "04_training"
    mode: str  # "full" (the lesson) or "smoke" (the tests' quick run)
    root: Path  # the project folder (holding pyproject.toml), else the current folder (Colab)
    out_dir: Path  # this notebook's files: <runs dir>/<name>, or <name>_smoke in smoke mode
    encoder_config: EncoderConfig  # the towers of this mode: MiniLM, or the tiny random BERT
    progress: bool  # show tqdm bars (False under QA_PROGRESS=0: headless, committed outputs)

    @property
    def smoke(self) -> bool:
        """Whether this is the tests' quick run."""
        return self.mode == "smoke"

    @property
    def model(self) -> str | None:
        """The backbone of ``encoder_config``: None is the packaged all-MiniLM-L6-v2 (whose
        config, with :data:`TINY_BERT`, also builds the smoke mode's random towers)."""
        return self.encoder_config.model

    def pick(self, full, smoke):
        """``full`` in full mode, ``smoke`` in smoke mode (a learning rate, a size, ...)."""
        return smoke if self.smoke else full

    def subset(self, pairs, n: int):
        """All of ``pairs`` in full mode; its first ``n`` rows in smoke mode."""
        return pairs.select(range(min(n, len(pairs)))) if self.smoke else pairs

    def out_dir_of(self, name: str) -> Path:
        """Another notebook's output folder in this mode (05 reads the towers 04 saved)."""
        return self.out_dir.parent / _folder_name(name, self.mode)

    def record(self, results: dict) -> Path:
        """Write ``results`` (plus ``run_mode``) to ``out_dir/results.json``, atomically.

        Returns:
            The file written; the tests read it.
        """
        return write_json(self.out_dir / RESULTS_FILE, {"run_mode": self.mode, **results})

    def describe(self) -> str:
        """One line for the notebook: the mode, the versions, the device."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return (
            f"run mode: {self.mode} · python {platform.python_version()} · torch "
            f"{torch.__version__} · transformers {transformers.__version__} · qa_lib "
            f"{metadata.version('qa_lib')} · {device}, {torch.get_num_threads()} CPU threads"
        )


def _folder_name(name: str, mode: str) -> str:
    return f"{name}_smoke" if mode == "smoke" else name


def project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above ``start`` (default: the current one) holding
    pyproject.toml; the current folder where there is none (Colab, a copied notebook)."""
    start = Path.cwd() if start is None else Path(start)
    return next((p for p in (start, *start.parents) if (p / "pyproject.toml").is_file()), start)


def smoke_encoder_config() -> EncoderConfig:
    """The smoke mode's towers: :data:`TINY_BERT`, random init, short texts.

    ``QA_TINY_SOURCE`` may name another folder with a BERT config and tokenizer.
    """
    return EncoderConfig(
        model=os.environ.get("QA_TINY_SOURCE") or None,
        pretrained=False,
        model_overrides=TINY_BERT,
        max_q_len=24,
        max_a_len=48,
    )


def setup(name: str, mode: str | None = None) -> CourseRun:
    """Start a notebook's run: read the mode, find the folders, quiet known warnings.

    Args:
        name: the notebook's file name without ``.ipynb``, e.g. ``"04_training"``.
        mode: "full" or "smoke"; None reads ``QA_RUN_MODE`` (default "full").

    Returns:
        The frozen :class:`CourseRun`.

    Raises:
        QAError: an unknown mode.
    """
    mode = mode or os.environ.get("QA_RUN_MODE") or "full"
    if mode not in RUN_MODES:
        raise QAError(f"unknown run mode {mode!r}: set RUN_MODE / QA_RUN_MODE to full or smoke")
    # without a widget frontend tqdm falls back to text bars and warns about it, once per bar
    warnings.filterwarnings("ignore", category=TqdmWarning)
    root = project_root()
    runs_dir = Path(os.environ.get("QA_RUNS_DIR") or root / "runs" / "notebooks")
    config = smoke_encoder_config() if mode == "smoke" else EncoderConfig()
    return CourseRun(
        name=name,
        mode=mode,
        root=root,
        out_dir=runs_dir / _folder_name(name, mode),
        encoder_config=config,
        progress=os.environ.get("QA_PROGRESS", "1") != "0",
    )
