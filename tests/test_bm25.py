from __future__ import annotations

from qa_lib.bm25 import lexical_scores
from tests.test_hybrid import PAIRS


def test_lexical_scores_rank_each_answer_first_and_below_the_question_itself():
    scores, own = lexical_scores(PAIRS.answers, PAIRS.questions)
    assert scores.shape == (5, 5) and own.shape == (5,)
    assert scores.argmax(1).tolist() == [0, 1, 2, 3, 4]
    assert (own > scores.max(1).values).all()  # a question matches its own text in every word
    empty, empty_own = lexical_scores(PAIRS.answers, [])
    assert empty.shape == (0, 5) and empty_own.shape == (0,)


def test_indexing_logs_no_bm25s_debug_lines(caplog):
    import logging

    from qa_lib.bm25 import bm25_index

    caplog.set_level(logging.DEBUG)  # as under the CLI's handler: bm25s logged a line per index
    bm25_index(["the tallest mountain", "a duck"])
    assert not [r for r in caplog.records if r.name.startswith("bm25s") and r.levelno < 30]
