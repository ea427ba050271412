"""Load a BERT backbone and its tokenizer from a folder or the Hugging Face hub (notebook 02)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from torch import nn

from qa_lib.errors import QAError


def hub_error(name: str, exc: Exception) -> QAError:
    """The one error for a model that cannot be loaded: a bad folder, or a hub id offline."""
    if os.path.isabs(name) or name.startswith(".") or os.path.exists(name):
        return QAError(f"model {name!r}: not a model folder ({exc}); check the path")
    return QAError(
        f"model {name!r} is not a local folder and could not be loaded from the Hugging Face "
        f"hub (offline, or no such model); pass a local folder, or omit --model to use the "
        f"packaged all-MiniLM-L6-v2"
    )


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-weight loading reports and progress bars for a moment."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str):
    """Load a tokenizer from a folder or hub id, with a clear error offline."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise hub_error(name, exc) from None


def load_backbone(name: str, pretrained: bool = True, overrides: dict | None = None) -> nn.Module:
    """Load one BERT tower: pretrained weights, or random init from the same config.

    Args:
        name: a folder or hub id.
        pretrained: False builds the architecture with fresh random weights.
        overrides: config fields to change (only with ``pretrained=False``), e.g. a tiny size.

    Returns:
        A ``transformers`` model returning ``last_hidden_state``.
    """
    from transformers import AutoConfig, AutoModel

    try:
        with quiet_transformers():
            if pretrained and not overrides:
                return AutoModel.from_pretrained(name, attn_implementation="sdpa")
            config = AutoConfig.from_pretrained(name, **(overrides or {}))
            config._attn_implementation = "sdpa"
            return AutoModel.from_config(config)
    except (OSError, ValueError) as exc:
        raise hub_error(name, exc) from None


def load_saved_backbone(folder: str | os.PathLike) -> nn.Module:
    """Load a tower written by ``save_pretrained`` (a saved dual encoder's sub-folder)."""
    from transformers import AutoModel

    with quiet_transformers():
        return AutoModel.from_pretrained(folder)
