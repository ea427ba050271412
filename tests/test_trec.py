"""TREC run and qrels files: their format, and qa_lib's metrics against pytrec_eval's."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import FixedModel

from qa_lib import DualEncoder, Pairs, evaluate
from qa_lib.cli import main
from qa_lib.evaluate import rank_candidates
from qa_lib.trec import doc_id, query_id, top_candidates, write_qrels, write_run

pytrec_eval = pytest.importorskip("pytrec_eval")


def _with_second_answers(pairs: Pairs, every: int = 4) -> Pairs:
    """Pairs where every ``every``-th question also has a second answer (two relevant)."""
    extra = range(0, len(pairs) - 1, every)
    questions = pairs.questions + [pairs.questions[i] for i in extra]
    answers = pairs.answers + [pairs.answers[i + 1] for i in extra]
    return replace(pairs, questions=questions, answers=answers, splits=None, groups=None)


def trec_metrics(run_path, qrels_path) -> dict[str, float]:
    """Recall@k (trec_eval's success@k), MRR@10 and nDCG@10 averaged over the queries."""
    with open(run_path) as f:
        run = pytrec_eval.parse_run(f)
    with open(qrels_path) as f:
        qrels = pytrec_eval.parse_qrel(f)
    full = pytrec_eval.RelevanceEvaluator(qrels, {"success.1,5,10", "ndcg_cut.10"}).evaluate(run)
    top10 = {q: dict(sorted(d.items(), key=lambda x: -x[1])[:10]) for q, d in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    n = len(qrels)
    # a query with nothing retrieved is missing from pytrec_eval's output: it scores 0
    mean = {
        key: sum(full[q][trec] for q in full) / n
        for key, trec in {
            "recall@1": "success_1",
            "recall@5": "success_5",
            "recall@10": "success_10",
            "ndcg@10": "ndcg_cut_10",
        }.items()
    }
    mean["mrr@10"] = sum(rr[q]["recip_rank"] for q in rr) / n
    return mean


@pytest.mark.parametrize("weight", [0.0, 0.5], ids=["dense", "hybrid"])
def test_qa_lib_metrics_equal_trec_evals_on_the_written_files(
    weight, tiny_config, tiny_splits, tmp_path
):
    model = DualEncoder.from_config(tiny_config, seed=0)
    pairs = _with_second_answers(tiny_splits[1])
    task, ranking = rank_candidates(model, pairs, lexical_weight=weight)
    assert any(len(r) == 2 for r in task.relevant)  # success@k and recall@k differ here
    write_run(tmp_path / "run.trec", ranking)
    write_qrels(tmp_path / "qrels.trec", task.relevant)
    ours = evaluate(model, pairs, lexical_weight=weight)
    theirs = trec_metrics(tmp_path / "run.trec", tmp_path / "qrels.trec")
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_run_lines_are_trec_format_best_first_and_cut_at_depth(tmp_path):
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.2, 0.8, float("-inf")]])
    ranking = top_candidates(scores, depth=3)
    write_run(tmp_path / "run", ranking, tag="mine")
    lines = [line.split() for line in (tmp_path / "run").read_text().splitlines()]
    assert all(len(parts) == 6 and parts[1] == "Q0" and parts[5] == "mine" for parts in lines)
    first = [p for p in lines if p[0] == query_id(0)]
    assert [p[2] for p in first] == [doc_id(1), doc_id(2), doc_id(3)]  # top 3 of 4
    assert [int(p[3]) for p in first] == [1, 2, 3]
    second = [p[2] for p in lines if p[0] == query_id(1)]
    assert second == [doc_id(2), doc_id(1), doc_id(0)]  # tie: docid descending; -inf left out


def test_ties_trec_eval_breaks_by_docid_qa_lib_against_the_answer(tmp_path):
    """With an exact tie qa_lib ranks the relevant candidate last among the tied: a lower bound."""
    dim = 2
    model = FixedModel(
        {"q": [1.0, 0.0]},
        {"right": [0.5, 0.0], "wrong": [0.5, 0.0], "far": [0.0, 1.0]},
        dim,
    )
    pairs = Pairs(questions=["q"], answers=["right"], corpus=["right", "wrong", "far"])
    task, ranking = rank_candidates(model, pairs)
    write_run(tmp_path / "run", ranking)
    write_qrels(tmp_path / "qrels", task.relevant)
    ours, theirs = evaluate(model, pairs), trec_metrics(tmp_path / "run", tmp_path / "qrels")
    # trec_eval orders d1 ("wrong") before d0 ("right"): both say rank 2 here
    assert ours["mrr@10"] == theirs["mrr@10"] == 0.5
    # swap the ids: "right" becomes d1, which trec_eval puts first; qa_lib still says rank 2
    pairs = Pairs(questions=["q"], answers=["right"], corpus=["wrong", "right", "far"])
    task, ranking = rank_candidates(model, pairs)
    write_run(tmp_path / "run", ranking)
    write_qrels(tmp_path / "qrels", task.relevant)
    ours, theirs = evaluate(model, pairs), trec_metrics(tmp_path / "run", tmp_path / "qrels")
    assert ours["mrr@10"] == 0.5 and theirs["mrr@10"] == 1.0


def test_cli_evaluate_writes_run_and_qrels(tmp_path, tiny_splits, tiny_bert_dir, capsys):
    train, test = tiny_splits
    data = tmp_path / "pairs.tsv"
    rows = [
        f"{q}\t{a}" for q, a in zip(train.questions + test.questions, train.answers + test.answers)
    ]
    data.write_text("questions\tanswers\n" + "\n".join(rows) + "\n")
    run, qrels, metrics = tmp_path / "run.trec", tmp_path / "qrels.trec", tmp_path / "m.json"
    args = ["--quiet", "evaluate", "--model", str(tiny_bert_dir), "--data", str(data)]
    args += ["--json", str(metrics), "--run-file", str(run), "--qrels-file", str(qrels)]
    assert main(args) == 0
    assert "wrote the TREC run" in capsys.readouterr().out
    ours = json.loads(metrics.read_text())
    for key, value in trec_metrics(run, qrels).items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key
    n_questions = len({line.split()[0] for line in qrels.read_text().splitlines()})
    assert n_questions == ours["n_questions"]
