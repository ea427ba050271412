"""The notebooks' harness: the mode, the folders, the results file, the smoke towers."""

from __future__ import annotations

import json

import pytest

from qa_lib import EncoderConfig, QAError
from qa_lib.course import RESULTS_FILE, TINY_BERT, project_root, setup


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No harness variable set, and the current folder a project folder of its own."""
    for name in ("QA_RUN_MODE", "QA_RUNS_DIR", "QA_PROGRESS", "QA_TINY_SOURCE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_full_mode_is_the_default_and_uses_the_pretrained_towers(clean_env):
    run = setup("04_training")
    assert run.mode == "full" and not run.smoke and run.progress
    assert run.encoder_config == EncoderConfig() and run.model is None
    assert run.out_dir == clean_env / "runs" / "notebooks" / "04_training"
    assert run.pick(5e-5, smoke=1e-3) == 5e-5
    assert run.describe().startswith("run mode: full · python ")


def test_smoke_mode_from_the_environment_gets_tiny_towers_and_its_own_folder(
    clean_env, monkeypatch, default_splits
):
    monkeypatch.setenv("QA_RUN_MODE", "smoke")
    run = setup("04_training")
    assert run.smoke and run.out_dir.name == "04_training_smoke"
    config = run.encoder_config
    assert not config.pretrained and config.model_overrides == TINY_BERT
    assert run.pick(5e-5, smoke=1e-3) == 1e-3
    assert len(run.subset(default_splits["train"], 128)) == 128
    # the argument wins over the environment (papermill injects RUN_MODE)
    assert setup("04_training", "full").out_dir.name == "04_training"
    assert len(setup("04_training", "full").subset(default_splits["train"], 128)) > 128


def test_out_dir_of_another_notebook_follows_the_mode_and_qa_runs_dir(clean_env, monkeypatch):
    monkeypatch.setenv("QA_RUNS_DIR", str(clean_env / "elsewhere"))
    run = setup("05_similarity_evaluation", "smoke")
    assert run.out_dir_of("04_training") == clean_env / "elsewhere" / "04_training_smoke"
    assert setup("05_similarity_evaluation", "full").out_dir_of("04_training").name == "04_training"


def test_record_writes_the_results_with_the_mode(clean_env):
    run = setup("01_data_loading", "smoke")
    results = {"n_pairs": 3, "splits": {"train": 2}}
    path = run.record(results)
    assert path == run.out_dir / RESULTS_FILE
    assert json.loads(path.read_text()) == {"run_mode": "smoke", **results}


def test_an_unknown_mode_names_the_fix(clean_env):
    with pytest.raises(QAError, match="RUN_MODE / QA_RUN_MODE to full or smoke"):
        setup("01_data_loading", "quick")


def test_progress_is_off_for_headless_runs(clean_env, monkeypatch):
    monkeypatch.setenv("QA_PROGRESS", "0")
    assert not setup("04_training").progress


def test_project_root_is_the_folder_with_pyproject_else_the_start(tmp_path):
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    assert project_root(tmp_path / "repo" / "notebooks") == tmp_path / "repo"
    (tmp_path / "colab").mkdir()
    assert project_root(tmp_path / "colab") == tmp_path / "colab"
