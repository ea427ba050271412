from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import shared_file

from qa_lib.config import DEMO_QUESTION
from qa_lib.data import (
    assign_splits,
    clean_pairs,
    default_data_path,
    load_pairs,
    read_pairs,
    split_pairs,
)
from qa_lib.errors import QAError

ROOT = Path(__file__).resolve().parents[1]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


# ----------------------------------------------------------------------------- embedded default


def test_default_dataset_shape():
    pairs = read_pairs("default")
    assert len(pairs) >= 500
    assert len(set(pairs.groups)) >= 12
    assert len({_norm(q) for q in pairs.questions}) == len(pairs), "duplicate questions"
    assert len({_norm(a) for a in pairs.answers}) == len(pairs), "duplicate answers"
    per_topic = {g: pairs.groups.count(g) for g in set(pairs.groups)}
    assert min(per_topic.values()) >= 5, "several questions per topic make hard negatives"
    assert pairs.report.rows_in == pairs.report.rows_out == len(pairs)


def test_default_split_is_fixed_and_holds_the_demo_question(default_splits):
    sizes = {k: len(v) for k, v in default_splits.items()}
    assert sizes["train"] > sizes["test"] > sizes["validation"] > 0
    assert DEMO_QUESTION in default_splits["test"].questions
    seen = [set(p.questions) for p in default_splits.values()]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    # the labels are in the file: another seed changes nothing
    assert load_pairs("default", "test", seed=123).questions == default_splits["test"].questions


def test_test_topics_bring_their_confusers_into_the_pool(default_splits):
    # a test question must be told apart from other answers of its own topic (one entity, or one
    # theme): each topic in the test split has at least two test pairs there
    counts = Counter(default_splits["test"].groups)
    assert min(counts.values()) >= 2
    # an entity held out whole is in no other split; the themes are split inside each topic
    elsewhere = set(default_splits["train"].groups) | set(default_splits["validation"].groups)
    held_out = set(counts) - elsewhere
    assert held_out and all(counts[t] >= 7 for t in held_out)
    assert len(set(counts) & elsewhere) >= 12


def test_embedded_file_is_what_its_script_writes(tmp_path):
    # the aspect pairs live in benchmarks/aspect_pairs.tsv; the jsonl is the script's fixed output
    script = ROOT / "benchmarks" / "make_default_pairs.py"
    check = [sys.executable, str(script), "--check"]
    assert subprocess.run(check, capture_output=True, cwd=ROOT).returncode == 0
    stale = tmp_path / "pairs.jsonl"
    lines = default_data_path().read_text(encoding="utf-8").splitlines()
    stale.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # one aspect row lost
    result = subprocess.run([*check, "--path", str(stale)], capture_output=True, text=True)
    assert result.returncode == 1 and "stale" in result.stdout
    subprocess.run(check[:2] + ["--path", str(stale)], check=True, capture_output=True)
    assert stale.read_bytes() == default_data_path().read_bytes()


def test_embedded_parts_split_the_test_questions_into_factoid_and_aspect(default_splits):
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import embedded_parts

    parts = embedded_parts.test_parts()
    factoid, aspect = parts["factoid"], parts["aspect"]
    assert len(factoid) + len(aspect) == len(default_splits["test"])
    assert not set(factoid.groups) & set(aspect.groups)
    assert (len(factoid), len(aspect)) == (127, 132)  # the README's part sizes


# ----------------------------------------------------------------------------- formats


def test_tsv_with_lesson_columns_and_cleaning(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(
        "questions\tanswers\n"
        "where did the 2017 tour de france start\tIt began in DÃ¼sseldorf,  Germany.\n"
        "who  wrote hamlet\tWilliam Shakespeare.\n"
        "who  wrote hamlet\tWilliam Shakespeare.\n"
        "\t\n",
        encoding="utf-8",
    )
    pairs = load_pairs(path)
    assert pairs.questions == ["where did the 2017 tour de france start", "who wrote hamlet"]
    assert pairs.answers[0] == "It began in Düsseldorf, Germany."
    report = pairs.report
    assert (report.rows_in, report.rows_out, report.duplicates_dropped) == (3, 2, 1)
    assert report.mojibake_fixed == 1 and report.whitespace_fixed >= 2
    assert report.examples[0] == (
        "It began in DÃ¼sseldorf,  Germany.",
        "It began in Düsseldorf, Germany.",
    )


def test_csv_jsonl_gz_and_explicit_columns(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('Q,A,topic\n"what is 2+2, really?",Four.,maths\nwho am i,You.,x\n')
    pairs = load_pairs(csv_path, question_column="Q", answer_column="A")
    assert pairs.questions[0] == "what is 2+2, really?" and pairs.groups == ["maths", "x"]
    rows = [
        {"query": f"q{i}", "response": f"a{i}", "split": "train" if i else "test"} for i in range(3)
    ]
    gz = tmp_path / "p.jsonl.gz"
    gz.write_bytes(gzip.compress("\n".join(json.dumps(r) for r in rows).encode()))
    pairs = load_pairs(gz)
    assert pairs.answers == ["a0", "a1", "a2"] and pairs.splits == ["test", "train", "train"]
    assert load_pairs(gz, "test").questions == ["q0"]


def test_squad_json(tmp_path):
    squad = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is in France.",
                        "qas": [
                            {"id": "1", "question": "Where is Paris?", "answers": []},
                            {"id": "2", "question": "What is in France?", "answers": []},
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(squad))
    pairs = load_pairs(path)
    assert pairs.answers == ["Paris is in France."] * 2 and pairs.groups == ["T", "T"]


def test_beir_folder(tmp_path):
    (tmp_path / "qrels").mkdir()
    docs = [{"_id": f"d{i}", "title": f"Doc {i}", "text": f"text {i}"} for i in range(4)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(3)]
    (tmp_path / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (tmp_path / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td3\t1\n"
    )
    (tmp_path / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\n"
    )
    test = load_pairs(tmp_path, "test")
    assert test.questions == ["query 0", "query 0"]
    assert test.answers == ["Doc 0. text 0", "Doc 3. text 3"]
    assert len(test.corpus) == 4, "evaluation ranks against the whole corpus"
    assert load_pairs(tmp_path, "train").answers == ["Doc 1. text 1"], "score 0 is not relevant"


def test_local_hf_dataset_folder(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"question": ["a?", "b?"], "answer": ["A.", "B."]}).save_to_disk(
        str(tmp_path / "ds")
    )
    assert load_pairs(tmp_path / "ds").questions == ["a?", "b?"]


# ----------------------------------------------------------------------------- splits


def test_seeded_group_split_is_deterministic_and_leak_free():
    groups = [f"g{i % 20}" for i in range(200)]
    first = assign_splits(200, groups, seed=3)
    assert first == assign_splits(200, groups, seed=3)
    assert first != assign_splits(200, groups, seed=4)
    for g in set(groups):
        assert len({s for s, gg in zip(first, groups) if gg == g}) == 1


def test_validation_carved_from_train_when_missing(tmp_path):
    rows = [
        {"question": f"q{i}", "answer": f"a{i}", "split": "test" if i < 10 else "train"}
        for i in range(100)
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    parts = split_pairs(read_pairs(path), seed=0)
    assert len(parts["test"]) == 10 and len(parts["validation"]) == 9 and len(parts["train"]) == 81


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.tsv", None, "no such file"),
        ("empty.tsv", b"", "empty"),
        ("cols.tsv", b"foo\tbar\nx\ty\n", "no question column"),
        ("bytes.tsv", b"question\tanswer\nq\t\xff\xfe bad\n", "not valid utf-8"),
        ("side.tsv", b"question\tanswer\nq1\ta1\nq2\t \n", "row 2 has an empty answer"),
        ("header.tsv", b"question\tanswer\n", "no rows"),
        ("bad.jsonl", b'{"question": "q", "answer": "a"}\n{oops\n', "line 2 is not valid json"),
    ],
)
def test_bad_files_raise_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(QAError, match=re.compile(re.escape(message), re.I)) as info:
        load_pairs(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_incomplete_rows_can_be_dropped(tmp_path):
    path = tmp_path / "side.tsv"
    path.write_text("question\tanswer\nq1\ta1\nq2\t \n")
    pairs = load_pairs(path, drop_incomplete=True)
    assert pairs.questions == ["q1"] and pairs.report.empty_dropped == 1


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(QAError, match="Hugging Face hub"):
        load_pairs("someone/not-a-local-dataset")


def test_clean_pairs_keeps_extra_columns_aligned():
    q, a, (groups,), report = clean_pairs(["q", "q", "r"], ["a", "a", "b"], [["x", "x", "y"]])
    assert (q, a, groups, report.duplicates_dropped) == (["q", "r"], ["a", "b"], ["x", "y"], 1)


# ----------------------------------------------------------------------------- real data


def test_nq_sample_mojibake_is_repaired():
    pairs = load_pairs(shared_file("nq-sample-dlai", "nq_sample.tsv"))
    text = " ".join(pairs.answers)
    assert "Düsseldorf" in text and "Champs-Élysées" in text
    assert "DÃ" not in text and "Ã©" not in text
    assert len(pairs) >= 990 and pairs.report.mojibake_fixed > 0
