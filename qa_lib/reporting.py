"""Tables and run records for the CLI, the notebooks and the benchmarks (notebooks 04 and 05)."""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict

from qa_lib.config import DEFAULT_MODEL, resolve_model_name
from qa_lib.metrics import METRIC_KEYS


def versions() -> dict[str, str]:
    """The versions a result depends on: Python, torch, transformers, NumPy, qa_lib."""
    import numpy
    import torch
    import transformers

    import qa_lib

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "qa_lib": qa_lib.__version__,
    }


def markdown_table(
    rows: Mapping[str, Mapping[str, str]], columns: Sequence[str], first: str
) -> str:
    """A Markdown table: one row per name, the given columns (cells already formatted)."""
    lines = [
        f"| {first} | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(cells.get(c, "-") for c in columns) + " |")
    return "\n".join(lines)


def format_table(results: Mapping[str, Mapping[str, float]], keys=METRIC_KEYS) -> str:
    """A Markdown table of metrics: one row per model, one column per metric (3 decimals)."""
    rows = {
        name: {k: f"{metrics[k]:.3f}" for k in keys if k in metrics}
        for name, metrics in results.items()
    }
    return markdown_table(rows, keys, "model")


def format_demo(scores: Sequence[tuple[str, float]]) -> str:
    """The lesson's demo as lines of ``score  text``, best first."""
    return "\n".join(f"  {score:8.3f}  {text}" for text, score in scores)


def run_record(data: str, argv: list[str], model, config, train, history) -> dict:
    """What metrics.json records so a run can be reproduced: seed, versions, model, data, config."""
    return {
        "seed": config.seed,
        "versions": versions(),
        "model": model.config.model or DEFAULT_MODEL,
        "model_path": resolve_model_name(model.config.model),
        "data": data,
        "data_fingerprint": train.fingerprint(),
        "n_train": len(train),
        "encoder": asdict(model.config),
        "train": asdict(config),
        "argv": argv,
        "history": history.as_dict(),
    }
