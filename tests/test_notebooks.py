"""The course notebooks: what git holds, and a papermill smoke run that checks what they record.

nbval runs every cell in smoke mode (the Makefile's test target):
``QA_RUN_MODE=smoke pytest --nbval-lax --nbval-current-env --nbval-sanitize-with
tests/nbval_sanitize.cfg notebooks/``. This file checks the committed files (their anatomy, the
harness cell of :mod:`qa_lib.course`, the Colab install cell against every import) and runs
notebooks 04 and 05 headless with injected parameters, then asserts the metrics their last cells
record (``run.record``: ``<QA_RUNS_DIR>/<notebook>_smoke/results.json``).
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from qa_lib.course import RESULTS_FILE

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
COURSE = (
    "01_data_loading",
    "02_encoder_setup",
    "03_contrastive_loss",
    "04_training",
    "05_similarity_evaluation",
    "06_search_at_scale",
)
# what `nbstripout --keep-output` removes beyond its defaults (papermill's timing records)
STRIP_KEYS = "metadata.papermill cell.metadata.papermill cell.metadata.execution"


def _load(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))


def _finite(value) -> bool:
    """Every number inside ``value`` (nested dicts and lists) is finite."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def test_the_course_has_six_notebooks():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == list(COURSE)


def test_notebooks_are_stripped():
    paths = [str(NOTEBOOKS / f"{name}.ipynb") for name in COURSE]
    # execution counts stay: nbval refuses a cell with outputs but no count ("unrun")
    cmd = [sys.executable, "-m", "nbstripout", "--keep-output", "--keep-count", "--verify"]
    cmd.append("--extra-keys")
    done = subprocess.run([*cmd, STRIP_KEYS, *paths], capture_output=True, text=True)
    assert done.returncode == 0, f"run nbstripout --keep-output --keep-count ...\n{done.stdout}"


@pytest.mark.parametrize("name", COURSE)
def test_notebook_follows_the_anatomy(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    assert path.stat().st_size < 1_000_000
    nb = _load(name)
    cells = nb["cells"]
    assert "".join(cells[0]["source"]).startswith(f"# {name[:2]} · ")
    assert "colab.research.google.com/github" in "".join(cells[0]["source"])
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and "QA_RUN_MODE" in "".join(params[0]["source"])
    headings = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    assert any(h.startswith("## Summary") for h in headings)
    assert any("## Exercises" in h for h in headings)
    assert "RESULTS" in "".join(cells[-1]["source"])


@pytest.mark.parametrize("name", COURSE)
def test_committed_outputs_are_one_full_run(name):
    """The lead commits the outputs of one `make notebooks` run (nbstripout --keep-output)."""
    nb = _load(name)
    cells = nb["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    mimes = {mime for o in outputs for mime in o.get("data", {})}
    assert not [m for m in mimes if "widget" in m] and "widgets" not in nb["metadata"]
    assert not [o for o in outputs if o["output_type"] == "error"]
    for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        streams = [o for o in cell.get("outputs", []) if o.get("name") == "stderr"]
        err = "".join("".join(o["text"]) for o in streams)
        lines = [line.rsplit("\r", 1)[-1] for line in err.splitlines() if line.strip()]
        assert len(lines) <= 1, f"code cell {i}: a bar leaves one line, no more: {lines[:3]}"
        assert "Warning" not in err, f"code cell {i} shows a warning: {err[:300]}"
    counts = [c["execution_count"] for c in cells if c["cell_type"] == "code"]
    assert counts == list(range(1, len(counts) + 1))  # one run, top to bottom, nothing skipped
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "run mode: full" in text  # the committed outputs come from a full run
    last = cells[-1]
    assert "RESULTS" in "".join(last["source"]) and last.get("outputs")


# what the harness replaced: no notebook derives these by hand any more
BOILERPLATE = ("SMOKE =", "SUFFIX", "TINY_BERT", "RESULTS_DIR", "write_json", "pyproject.toml")


@pytest.mark.parametrize("name", COURSE)
def test_notebook_starts_with_install_parameters_and_one_harness_cell(name):
    cells = _load(name)["cells"]
    install, params, config = ("".join(c["source"]) for c in cells[2:5])
    assert 'if "google.colab" in sys.modules' in install and "qa_lib[course]" in install
    assert "parameters" in cells[3]["metadata"].get("tags", []) and "QA_RUN_MODE" in params
    assert f'run = setup("{name}", RUN_MODE)' in config and "run.describe()" in config
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert not [(i, b) for i, src in enumerate(code) for b in BOILERPLATE if b in src]
    assert "run.record(RESULTS)" in code[-1]


def _imports(source: str) -> set[str]:
    """Top-level module names a cell or a file imports (IPython magics dropped)."""
    magic = re.compile(r"^(\s*)[%!].*$", re.MULTILINE)
    names = set()
    for node in ast.walk(ast.parse(magic.sub(r"\1pass", source))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _declared(*groups: str) -> set[str]:
    """Normalised distribution names of pyproject's dependencies plus the given extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [
        s for g in groups for s in project["optional-dependencies"][g]
    ]
    return {
        re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs
    }


def test_the_colab_install_covers_every_import_of_the_notebooks_and_the_library():
    """``pip install "qa_lib[course]"`` brings every module a notebook or qa_lib imports."""
    sources = [
        "".join(c["source"]) for n in COURSE for c in _load(n)["cells"] if c["cell_type"] == "code"
    ]
    sources += [p.read_text() for p in (ROOT / "qa_lib").glob("*.py")]  # lazy imports too
    modules = set().union(*map(_imports, sources)) - set(sys.stdlib_module_names) - {"qa_lib"}
    owners = metadata.packages_distributions()
    declared = _declared("course")
    missing = {}
    for module in sorted(modules):
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"add to pyproject's course extra (and environment.yml): {missing}"
    assert "pandas" in modules and "bm25s" in modules  # the check reads what it should


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory) -> dict[str, dict]:
    """Run 04 then 05 headless in smoke mode; return what their last cells recorded."""
    papermill = pytest.importorskip("papermill")
    tmp = tmp_path_factory.mktemp("notebooks")
    runs = {
        "04_training": {"NUM_EPOCHS": 3, "MAX_STEPS": 20},
        "05_similarity_evaluation": {"N_SEEDS": 2},  # finds 04's towers in QA_RUNS_DIR
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QA_RUN_MODE", "smoke")  # kernels inherit the environment
        mp.setenv("QA_RUNS_DIR", str(tmp))  # every output folder of the harness goes here
        mp.setenv("QA_PROGRESS", "0")
        mp.setenv("OMP_NUM_THREADS", "1")  # tiny models: as fast, and no stalls on a busy CPU
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        for name, parameters in runs.items():
            papermill.execute_notebook(
                str(NOTEBOOKS / f"{name}.ipynb"),
                str(tmp / f"{name}.ipynb"),
                parameters={"RUN_MODE": "smoke", "SEED": 0, **parameters},
                kernel_name="python3",
                cwd=str(ROOT),
                progress_bar=False,
            )
    return {
        name[:2]: json.loads((tmp / f"{name}_smoke" / RESULTS_FILE).read_text()) for name in runs
    }


def test_training_notebook_records_a_model_that_learned(smoke_results):
    r = smoke_results["04"]
    assert r["run_mode"] == "smoke" and _finite(r)
    assert r["steps"] == 20  # the injected MAX_STEPS (8 steps per epoch, 3 epochs)
    assert len(r["epochs"]) == 3 and 1 <= r["best_epoch"] <= 3
    assert Path(r["model_dir"], "dual_encoder.json").is_file()
    assert Path(r["model_dir"]).parent.name == "04_training_smoke"  # the harness's folder
    for key in ("recall@1", "mrr@10", "question_echo_rate", "recall@1_with_echo"):
        assert key in r["val_before"] and key in r["val_best"] and key in r["train_after"]
    # on the pairs it trained on, the model ranks better than before (holds for seeds 0, 1, 2)
    assert r["train_after"]["mrr@10"] > r["train_before"]["mrr@10"]
    assert r["epochs"][-1]["loss"] < r["epochs"][0]["loss"]  # mean training loss per epoch


def test_evaluation_notebook_records_the_comparison_and_the_study(smoke_results):
    r = smoke_results["05"]
    assert r["model_source"] == "notebook 04"  # it loaded 04's towers instead of rebuilding
    assert _finite(r)
    keys = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "question_echo_rate")
    for side in ("test_untrained", "test_trained"):
        assert all(0.0 <= r[side][k] <= 1.0 for k in keys)
    assert r["train_trained"]["mrr@10"] > r["train_untrained"]["mrr@10"]
    assert r["study_seeds"] == 2 and len(r["study"]) == 4
    for stats in r["study"].values():
        assert set(stats) >= {"recall@1", "question_echo_rate", "recall@1_with_echo"}
    # a shared cosine encoder scores each question's echo at 1.0: it can never pass
    assert r["tied_trained"]["question_echo_rate"] == 1.0
    assert r["tied_trained"]["recall@1_with_echo"] == 0.0


@pytest.mark.parametrize("name", COURSE[:3])
def test_every_exercise_has_a_collapsed_worked_solution(name):
    cells = _load(name)["cells"]
    exercises = next("".join(c["source"]) for c in cells if "## Exercises" in "".join(c["source"]))
    numbered = re.findall(r"^(\d+)\. ", exercises.split("## Exercises", 1)[1], re.MULTILINE)
    solutions = [c for c in cells if "solution" in c["metadata"].get("tags", [])]
    titles = ["".join(c["source"]).splitlines()[0] for c in solutions]
    assert numbered and titles == [
        f"#@title Solution {n}: " + t.split(": ", 1)[1] for n, t in zip(numbered, titles)
    ], (numbered, titles)
    for cell in solutions:  # hidden in JupyterLab, a form in Colab, and code that runs
        assert cell["cell_type"] == "code" and cell["metadata"]["jupyter"]["source_hidden"]
        assert cell["metadata"]["cellView"] == "form"
        assert len("".join(cell["source"]).splitlines()) > 2
    assert cells.index(solutions[-1]) < len(cells) - 1  # the results cell stays last
