"""The course as Colab runs it: a fresh environment, a non-editable install, no repository around.

Colab's first cell runs ``pip install "qa_lib[course] @ git+<repository>"`` into an environment
that has torch but not this project. This test does the same from the local checkout (not git, so
it checks this very tree): a new virtual environment, the CPU wheel of torch, then
``pip install "<checkout>[course]"``, non-editable. Then it copies the notebooks to a folder
outside the repository (no pyproject.toml above it, no ../shared beside it) and runs each one in
smoke mode with papermill. Slow (minutes): ``make colab-check``, which .ci/run runs after
``make test``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qa_lib.course import RESULTS_FILE

ROOT = Path(__file__).resolve().parents[1]
COURSE = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
TORCH = os.environ.get("TORCH", "torch==2.13.0")  # the Makefile's CPU wheel
KERNEL = "qa-colab-check"


def _run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    shown = " ".join(map(str, cmd))
    assert done.returncode == 0, f"{shown}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> Path:
    """A new virtual environment with torch and ``qa_lib[course]`` installed from the checkout."""
    venv = tmp_path_factory.mktemp("colab") / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", TORCH)  # Colab ships torch
    _run(python, "-m", "pip", "install", "--quiet", f"{ROOT}[course]")  # the notebooks' cell
    # what runs the notebooks headless (Colab has a kernel already)
    _run(python, "-m", "pip", "install", "--quiet", "papermill", "ipykernel")
    _run(python, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL)
    return venv


@pytest.mark.slow
def test_every_notebook_runs_from_a_non_editable_install_outside_the_repository(
    fresh_env, tmp_path
):
    python = fresh_env / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(QA_RUN_MODE="smoke", QA_PROGRESS="0", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("QA_RUNS_DIR", None)
    work = tmp_path / "course"  # a folder as a Colab user has it: the notebooks and nothing else
    work.mkdir()
    for name in COURSE:
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", work)
    where = _run(python, "-c", "import qa_lib; print(qa_lib.__file__)", cwd=work, env=env)
    assert str(fresh_env) in where.stdout and str(ROOT) not in where.stdout  # not the checkout
    for name in COURSE:
        _run(
            fresh_env / "bin" / "papermill",
            *(f"{name}.ipynb", f"out_{name}.ipynb", "-k", KERNEL, "--no-progress-bar"),
            cwd=work,
            env=env,
        )
        results = work / "runs" / "notebooks" / f"{name}_smoke" / RESULTS_FILE
        assert json.loads(results.read_text())["run_mode"] == "smoke", name
