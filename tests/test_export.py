"""Exported folders load in sentence-transformers and transformers and embed as qa_lib does."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch.testing import assert_close

from qa_lib import DualEncoder, QAError
from qa_lib.cli import main
from qa_lib.export import ST_CLASSES, export_model

QUESTIONS = ["who wrote hamlet", "what is the tallest mountain in the world " * 6]  # 2nd: cut
ANSWERS = ["William Shakespeare wrote Hamlet.", "Mount Everest is the tallest mountain. " * 12]


def _saved(tiny_config, tmp_path, **changes) -> DualEncoder:
    """A tiny model with changed options (a random question flag, so it is not all zero), saved."""
    model = DualEncoder.from_config(replace(tiny_config, **changes), seed=0)
    if model.question_flag is not None:
        torch.manual_seed(1)
        torch.nn.init.normal_(model.question_flag.probe.weight, std=0.5)
    model.save(tmp_path / "model")
    model.precision = "fp32"  # sentence-transformers and transformers encode in fp32
    return model.eval()


VARIANTS = {
    "cosine+flag": {},
    "projection": {"proj_dim": 8},
    "tied": {"tied": True},
    "dot+cls": {"normalize": False, "pooling": "cls", "proj_dim": 8},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sentence_transformers_towers_equal_qa_libs(variant, tiny_config, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    model = _saved(tiny_config, tmp_path, **VARIANTS[variant])
    exported = export_model(tmp_path / "model", tmp_path / "st", "sentence-transformers")
    loaded = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
    q_emb, a_emb = model.encode_questions(QUESTIONS), model.encode_answers(ANSWERS)
    width = model.dim - model.has_question_flag  # the towers' columns, without the flag
    q_st = loaded.encode_query(QUESTIONS, convert_to_tensor=True)
    a_st = loaded.encode_document(ANSWERS, convert_to_tensor=True)
    assert_close(q_st, q_emb[:, :width], atol=1e-4, rtol=0)
    assert_close(a_st, a_emb[:, :width], atol=1e-4, rtol=0)
    # the default route is the answer tower; similarity as qa_lib scores (minus the flag)
    assert_close(loaded.encode(ANSWERS, convert_to_tensor=True), a_st, atol=1e-6, rtol=0)
    expected = q_emb[:, :width] @ a_emb[:, :width].T
    assert_close(loaded.similarity(q_st, a_st), expected, atol=1e-4, rtol=0)
    assert bool(exported.lost) == model.has_question_flag


def test_the_flag_is_what_the_export_loses(tiny_config, tmp_path):
    """The exported scores are qa_lib's without the flag column, which does change scores."""
    model = _saved(tiny_config, tmp_path)
    exported = export_model(tmp_path / "model", tmp_path / "st", "sentence-transformers")
    flag = model.encode_answers(ANSWERS)[:, -1]
    assert (flag < 0).any(), "the test flag should penalise something"
    assert "question flag" in exported.lost[0] and f"layer {model.flag_layer}" in exported.lost[0]
    card = (tmp_path / "st" / "README.md").read_text()
    assert "What this export loses" in card and "question flag" in card


def test_the_folder_is_sentence_transformers_router_layout(tiny_config, tmp_path):
    _saved(tiny_config, tmp_path, proj_dim=8)
    export_model(tmp_path / "model", tmp_path / "st", "sentence-transformers")
    out = tmp_path / "st"
    modules = json.loads((out / "modules.json").read_text())
    assert [(m["path"], m["type"]) for m in modules] == [
        ("", ST_CLASSES["router"]),
        ("1_Normalize", ST_CLASSES["Normalize"]),
    ]
    router = json.loads((out / "router_config.json").read_text())
    assert router["parameters"]["default_route"] == "document"
    assert set(router["structure"]) == {"query", "document"}
    for names in router["structure"].values():
        assert [n.split("_")[-1] for n in names] == ["Transformer", "Pooling", "Dense"]
        assert all(
            (out / n).is_dir() and router["types"][n].startswith("sentence_transformers.models.")
            for n in names
        )
    lengths = {
        route: json.loads((out / names[0] / "sentence_bert_config.json").read_text())
        for route, names in router["structure"].items()
    }
    assert lengths["query"]["max_seq_length"] == tiny_config.max_q_len
    assert lengths["document"]["max_seq_length"] == tiny_config.max_a_len


@pytest.mark.parametrize("changes", [{"proj_dim": 8}, {"tied": True}], ids=["proj", "tied"])
def test_dpr_folders_embed_as_qa_lib(changes, tiny_config, tmp_path):
    from transformers import AutoTokenizer, DPRContextEncoder, DPRQuestionEncoder

    model = _saved(tiny_config, tmp_path, normalize=False, pooling="cls", **changes)
    export_model(tmp_path / "model", tmp_path / "dpr", "dpr")
    for cls, sub, texts, encode in (
        (DPRQuestionEncoder, "question_encoder", QUESTIONS, model.encode_questions),
        (DPRContextEncoder, "context_encoder", ANSWERS, model.encode_answers),
    ):
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "dpr" / sub)
        encoder = cls.from_pretrained(tmp_path / "dpr" / sub).eval()
        batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            emb = encoder(**batch).pooler_output
        assert_close(emb, encode(texts), atol=1e-4, rtol=0)


def test_dpr_refuses_what_it_cannot_express(tiny_config, tmp_path):
    _saved(tiny_config, tmp_path)  # mean pooling, cosine, question flag
    with pytest.raises(QAError, match="DPR cannot express") as info:
        export_model(tmp_path / "model", tmp_path / "dpr", "dpr")
    for needle in ("mean pooling", "cosine", "question flag"):
        assert needle in str(info.value)
    assert not (tmp_path / "dpr").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_bert_dir, tiny_splits):
    """A training run folder (``--out``) of a few steps on a tiny model."""
    train, test = tiny_splits
    folder = tmp_path_factory.mktemp("run")
    data = folder / "pairs.tsv"
    rows = [
        f"{q}\t{a}" for q, a in zip(train.questions + test.questions, train.answers + test.answers)
    ]
    data.write_text("questions\tanswers\n" + "\n".join(rows) + "\n")
    argv = ["--quiet", "train", "--data", str(data), "--out", str(folder / "run"), "--model"]
    argv += [str(tiny_bert_dir), "--epochs", "1", "--batch-size", "8", "--max-steps", "2"]
    assert main(argv) == 0
    return folder / "run", data


def test_cli_export_of_a_run_folder_writes_its_card(trained_run, tmp_path, capsys):
    run, _ = trained_run
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "st")]) == 0
    printed = capsys.readouterr().out
    assert "lost: the question flag" in printed
    record = json.loads((run / "metrics.json").read_text())
    card = (tmp_path / "st" / "README.md").read_text()
    assert record["data_fingerprint"] in card and "python -m qa_lib --quiet train" in card
    best = record["history"]["epochs"][record["history"]["best_epoch"] - 1]
    assert f"{best['recall@1']:.3f}" in card and "validation split, best epoch" in card
    # the same model outside its run: the card says what it cannot know
    model = DualEncoder.load(run / "best")
    model.save(tmp_path / "loose")
    export_model(tmp_path / "loose", tmp_path / "st2", "sentence-transformers")
    loose = (tmp_path / "st2" / "README.md").read_text()
    assert "fingerprint `unknown`" in loose and "Command that trained it:** `unknown`" in loose


def test_cli_export_refuses_a_busy_out_and_dpr_of_a_cosine_model(trained_run, tmp_path, capsys):
    run, _ = trained_run
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(["export", "--model", str(run), "--format", "dpr", "--out", str(tmp_path / "d")]) == 2
    )
    assert "error: DPR cannot express" in capsys.readouterr().err


def test_evaluate_and_demo_accept_a_run_folder(trained_run, tmp_path, capsys):
    run, data = trained_run
    args = ["--quiet", "evaluate", "--data", str(data), "--json"]
    assert main([*args, str(tmp_path / "run.json"), "--model", str(run)]) == 0
    assert main([*args, str(tmp_path / "best.json"), "--model", str(run / "best")]) == 0
    by_run = json.loads((tmp_path / "run.json").read_text())
    assert by_run == json.loads((tmp_path / "best.json").read_text())
    capsys.readouterr()
    assert main(["demo", "--model", str(run)]) == 0
    assert "Mount Everest" in capsys.readouterr().out


def test_a_run_folder_without_best_is_one_clear_error(tmp_path, capsys):
    run = tmp_path / "unfinished"
    (run / "checkpoints").mkdir(parents=True)
    assert main(["demo", "--model", str(run)]) == 2
    err = capsys.readouterr().err
    assert "without a complete best/ model" in err and "--resume" in err
