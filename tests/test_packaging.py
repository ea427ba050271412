"""The install files agree with each other, and the package ships its data."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # PyPI name -> conda-forge name where they differ


def _split(spec: str) -> tuple[str, str]:
    name = re.match(r"[A-Za-z0-9_.-]+", spec).group(0).lower()
    return name, spec[len(name) :].replace(" ", "")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    groups = ("dev", "bench", "course")  # the course extra repeats bm25s from bench
    wanted = dict(_split(s) for s in project["dependencies"] + sum((extras[g] for g in groups), []))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    found = {}
    for entry in env["dependencies"]:
        specs = entry["pip"] if isinstance(entry, dict) else [entry]
        for spec in specs:
            if spec in ("pip", "-e .") or spec.startswith("python"):
                continue
            name, version = _split(spec)
            found[name] = version
    expected = {CONDA_NAMES.get(n, n): v for n, v in wanted.items()}
    assert found == expected


def test_embedded_dataset_is_package_data():
    from qa_lib.data import default_data_path

    assert default_data_path().is_file()
    assert "embedded/*.jsonl" in (ROOT / "pyproject.toml").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
