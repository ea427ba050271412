"""benchmarks/squad_to_beir.py: SQuAD as a BEIR folder qa_lib reads, split by article."""

from __future__ import annotations

from benchmarks.squad_to_beir import write_beir
from qa_lib import load_pairs


def _qa(qid: str, question: str) -> dict:
    return {"id": qid, "question": question}


def _article(title: str, n: int) -> dict:
    paragraphs = [
        {"context": f"{title} paragraph {p}.", "qas": [_qa(f"{title}{p}", f"q {p}?")]}
        for p in range(n)
    ]
    return {"title": title, "paragraphs": paragraphs}


def test_folder_loads_with_articles_split(tmp_path):
    squad = {"data": [_article(t, 2) for t in ("A", "B", "C", "D", "E", "F")]}
    counts = write_beir(squad, tmp_path, test_every=5)
    assert counts == {"passages": 12, "train queries": 8, "test queries": 4}
    test, train = load_pairs(tmp_path, "test"), load_pairs(tmp_path, "train")
    assert sorted(test.questions) == ["q 0?", "q 0?", "q 1?", "q 1?"]
    assert {a[0] for a in test.answers} == {"A", "F"}  # articles 0 and 5
    assert not {a[0] for a in train.answers} & {"A", "F"}
    assert len(test.corpus) == 12  # every passage is a candidate
