"""Save and load a dual encoder's folder, atomically, old layouts included (notebook 04).

A saved model is a folder: ``question_encoder/`` and ``answer_encoder/`` (or one ``encoder/`` when
tied), ``tokenizer/``, ``heads.safetensors`` (projections and the question flag's detector, when
there are any) and ``dual_encoder.json``, the options, written last. Everything is written to a
temporary sibling folder that replaces the target in one rename, so a crash never leaves a
half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

from qa_lib.config import EncoderConfig
from qa_lib.errors import QAError
from qa_lib.hub import load_saved_backbone, load_tokenizer, quiet_transformers

OPTIONS_FILE = "dual_encoder.json"  # written last: its presence marks a complete save
HEADS_FILE = "heads.safetensors"  # the projections and the question flag, when there are any
LEGACY_HEADS_FILE = "projection.safetensors"  # what models saved before the question flag have
HEAD_MODULES = ("q_proj", "a_proj", "question_flag")  # the DualEncoder parts in HEADS_FILE
# names of models saved before qa_lib 0.2 -> today's names
LEGACY_OPTIONS = {"answer_prior": "question_flag", "prior_depth": "flag_depth"}
LEGACY_HEAD_PREFIXES = {"a_prior.": "question_flag.probe."}


def is_model_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a complete saved dual encoder."""
    return (Path(folder) / OPTIONS_FILE).is_file()


def model_folder(spec: str | os.PathLike) -> Path | None:
    """The saved dual encoder that ``spec`` names: a model folder, or a training run's ``best/``.

    Returns:
        The model folder; None when ``spec`` is neither (a model name or backbone folder).

    Raises:
        QAError: ``spec`` is a training run's folder without a complete ``best/`` model.
    """
    folder = Path(spec).expanduser()
    if is_model_folder(folder):
        return folder
    if is_model_folder(folder / "best"):
        return folder / "best"
    if (folder / "metrics.json").is_file() or (folder / "checkpoints").is_dir():
        raise QAError(
            f"{folder}: a training run without a complete best/ model (still running, or "
            f"interrupted); finish it with 'qa_lib train ... --resume', or pass {folder}/last"
        )
    return None


def save_model(model, directory: str | os.PathLike) -> Path:
    """Write both towers, the tokenizer, the heads and the options of ``model``, atomically.

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        towers = (
            {"encoder": model.q_encoder}
            if model.config.tied
            else {
                "question_encoder": model.q_encoder,
                "answer_encoder": model.a_encoder,
            }
        )
        with quiet_transformers():
            for sub, encoder in towers.items():
                encoder.save_pretrained(tmp / sub)
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        shared = model.config.tied or model.config.shared_proj  # a_proj is q_proj
        kinds = set(HEAD_MODULES) - ({"a_proj"} if shared else set())
        heads = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in kinds}
        if heads:
            save_file({k: v.contiguous().cpu() for k, v in heads.items()}, str(tmp / HEADS_FILE))
        config = model.config
        options = {**asdict(config), "model_overrides": dict(config.model_overrides)}
        (tmp / OPTIONS_FILE).write_text(json.dumps(options, indent=2))
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_options(folder: Path) -> EncoderConfig:
    """The saved :class:`EncoderConfig`, with the option names of older versions translated."""
    if not is_model_folder(folder):
        raise QAError(
            f"{folder}: no saved dual encoder here (missing {OPTIONS_FILE}); pass a folder "
            f"written by 'qa_lib train' or DualEncoder.save"
        )
    options = json.loads((folder / OPTIONS_FILE).read_text())
    for old, new in LEGACY_OPTIONS.items():
        if old in options:
            options[new] = options.pop(old)
    options["model_overrides"] = tuple(options.get("model_overrides", {}).items())
    options.setdefault("question_flag", False)  # saved before the flag existed: none
    options.setdefault("flag_features", "mean")  # saved before the detector read the ends
    options.setdefault("attention_dropout", None)  # saved before: the backbone's own dropout
    return EncoderConfig(**options)


def read_towers(folder: Path, config: EncoderConfig):
    """``(q_encoder, a_encoder, tokenizer)`` of a saved model (one encoder twice when tied)."""
    if config.tied:
        q_encoder = a_encoder = load_saved_backbone(folder / "encoder")
    else:
        q_encoder = load_saved_backbone(folder / "question_encoder")
        a_encoder = load_saved_backbone(folder / "answer_encoder")
    return q_encoder, a_encoder, load_tokenizer(str(folder / "tokenizer"))


def read_heads(folder: Path, config: EncoderConfig) -> dict | None:
    """The saved projections and detector as a state dict (today's names); None if none."""
    from safetensors.torch import load_file

    if not (config.proj_dim or config.has_question_flag):
        return None
    heads = folder / HEADS_FILE
    if not heads.is_file() and (folder / LEGACY_HEADS_FILE).is_file():
        heads = folder / LEGACY_HEADS_FILE
    if not heads.is_file():
        raise QAError(
            f"{folder}: {HEADS_FILE} is missing (the projections or the question flag); "
            f"copy the whole folder written by DualEncoder.save"
        )
    return {_current_name(k): v for k, v in load_file(str(heads)).items()}


def _current_name(key: str) -> str:
    for old, new in LEGACY_HEAD_PREFIXES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is replaced only once ``src`` is complete."""
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def recover_interrupted_saves(folder: str | os.PathLike) -> None:
    """Tidy up after a :func:`save_model` that a crash interrupted.

    Half-written temporary folders are removed; a model caught between the two renames of
    the swap (the old copy moved aside, the new one not yet in place) is put back.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for tmp in folder.glob(".*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for old in folder.glob(".*.old-*"):
        target = folder / old.name[1:].rsplit(".old-", 1)[0]
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)
