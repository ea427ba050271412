"""Training checkpoints: everything to continue a run exactly where it stopped (notebook 04).

A checkpoint is two files in ``<out_dir>/checkpoints/``:

- ``step-0000012.ckpt``: ``torch.save`` of the state (both towers, optimiser, scheduler, the
  run's position and data order, the history so far, every RNG state), written to a temporary
  file, fsynced and renamed into place;
- ``step-0000012.json``: its manifest (size and sha256), written the same way, *after* it.

A checkpoint counts only when its manifest exists and matches, so one cut off by a crash, a full
disk or a truncation is detected, reported with a warning, and the previous one is used. The
newest :data:`KEEP` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch

from qa_lib.files import atomic_file, write_json

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"  # sub-folder of the run's output folder
KEEP = 2  # checkpoints kept; older ones are deleted once a newer one is complete
FORMAT = 1  # bumped when the state's layout changes
_NAME = re.compile(r"^step-(\d+)\.json$")


def checkpoint_dir(out_dir: str | os.PathLike) -> Path:
    """The folder holding a run's checkpoints."""
    return Path(out_dir) / CHECKPOINT_DIR


def save_checkpoint(out_dir: str | os.PathLike, state: dict, keep: int = KEEP) -> Path:
    """Write ``state`` as the newest checkpoint, then its manifest, then drop old ones.

    Args:
        out_dir: the run's output folder (checkpoints go to ``out_dir/checkpoints``).
        state: what to save; must hold an int ``"step"``. Tensors may live on any device.
        keep: how many checkpoints to keep.

    Returns:
        The checkpoint file.
    """
    folder = checkpoint_dir(out_dir)
    step = int(state["step"])
    path = folder / f"step-{step:07d}.ckpt"
    with atomic_file(path) as handle:
        torch.save({**state, "format": FORMAT}, handle)
    manifest = {"file": path.name, "step": step, "bytes": path.stat().st_size}
    write_json(path.with_suffix(".json"), {**manifest, "sha256": _sha256(path)})
    _prune(folder, keep)
    return path


def load_latest_checkpoint(out_dir: str | os.PathLike) -> dict | None:
    """Load the newest complete checkpoint; a damaged one is skipped with a warning.

    Args:
        out_dir: the run's output folder.

    Returns:
        The saved state (tensors on the CPU), or None when there is no usable checkpoint.
    """
    for manifest in _manifests(checkpoint_dir(out_dir)):
        state, problem = _load_verified(manifest)
        if state is not None:
            log.info("loaded checkpoint %s", manifest.with_suffix(".ckpt"))
            return state
        log.warning(
            "checkpoint %s is damaged (%s); falling back to the previous one",
            manifest.with_suffix(".ckpt"),
            problem,
        )
    return None


def clear_checkpoints(out_dir: str | os.PathLike, after: int = -1) -> None:
    """Delete the checkpoints of steps after ``after`` (all of them by default).

    A fresh run clears the folder so an old run's checkpoints are never resumed by mistake,
    and a finished one removes it; a resumed run clears the damaged or abandoned checkpoints
    newer than the one it resumed from.
    """
    folder = checkpoint_dir(out_dir)
    for manifest in _manifests(folder):
        if _step(manifest) > after:
            _delete(manifest)
    if after < 0 and folder.is_dir():
        _prune(folder, keep=0)  # orphans and temporary files too
        with contextlib.suppress(OSError):  # a file of someone else's stays, and so does the folder
            folder.rmdir()


def _manifests(folder: Path) -> list[Path]:
    """Manifest files, newest step first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=_step, reverse=True)


def _step(manifest: Path) -> int:
    return int(_NAME.match(manifest.name).group(1))


def _load_verified(manifest: Path) -> tuple[dict | None, str]:
    """The state behind ``manifest`` if its size and sha256 match, else (None, why not)."""
    path = manifest.with_suffix(".ckpt")
    try:
        expected = json.loads(manifest.read_text())
        size = path.stat().st_size
    except (OSError, ValueError) as exc:
        return None, f"cannot be read: {type(exc).__name__}"
    if size != expected.get("bytes"):
        return None, f"{size} bytes, the manifest says {expected.get('bytes')}"
    if _sha256(path) != expected.get("sha256"):
        return None, "its sha256 does not match the manifest"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        return None, f"torch.load failed: {type(exc).__name__}"
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None, f"written in another layout than this qa_lib reads (format {FORMAT})"
    return state, ""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _delete(manifest: Path) -> None:
    """Remove a checkpoint: its manifest first, so a half-deleted one never looks complete."""
    manifest.unlink(missing_ok=True)
    manifest.with_suffix(".ckpt").unlink(missing_ok=True)


def _prune(folder: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; remove older ones, orphans and temporary files."""
    manifests = _manifests(folder)
    for manifest in manifests[keep:]:
        _delete(manifest)
    kept = {m.with_suffix(".ckpt").name for m in manifests[:keep]}
    for path in folder.iterdir():
        orphan = path.suffix == ".ckpt" and path.name not in kept
        if orphan or (path.name.startswith(".") and path.name.endswith(".tmp")):
            path.unlink(missing_ok=True)
