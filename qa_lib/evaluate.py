"""Evaluate a dual encoder on held-out pairs, and the original lesson's demo (notebook 05).

The metrics themselves live in :mod:`qa_lib.metrics`; this module encodes the questions, the
candidate pool and the echoes, ranks them (optionally with BM25 fused in, or with a rule that
removes question-like candidates), and summarises.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from qa_lib.batching import full_stop, restyle_question
from qa_lib.bm25 import bm25_index, bm25_scores, lexical_scores
from qa_lib.config import DEMO_ANSWER, DEMO_DISTRACTOR, DEMO_QUESTION
from qa_lib.data import Pairs
from qa_lib.errors import QAError
from qa_lib.hybrid import fuse
from qa_lib.metrics import (
    RetrievalTask,
    beats,
    best_relevant,
    build_task,
    echo_outcomes,
    metrics_from_scores,
    summarize,
)
from qa_lib.question_flag import flag_column, flag_rate
from qa_lib.trec import RUN_DEPTH, top_candidates

EVAL_CHUNK = 1024  # questions scored at once: bounded memory for large pools
ECHO_FILTERS = ("exact", "rule")  # the obvious alternatives to a learned flag (see echo_filter)
QUESTION_START = frozenset(
    "what who whom whose which when where why how is are was were am do does did can could "
    "should would will shall may might must has have had".split()
)
_PUNCT = re.compile(r"[^\w\s]")


ECHO_KEYS = ("question_echo_rate", "recall@1_with_echo")


def bm25_metrics(pairs: Pairs) -> dict:
    """BM25 alone (:mod:`qa_lib.bm25`'s settings) on held-out pairs, by the same metrics as
    :func:`evaluate`: the baseline a dense model is read against.

    The ranking metrics come from the plain index of the pool; the echo rate and Recall@1 with the
    echo from :func:`qa_lib.bm25.lexical_scores`, which adds each question's text to the pool;
    the mixed-pool rate from one index of the pool and every test question. BM25 flags nothing.
    """
    task = build_task(pairs)
    scores = bm25_scores(bm25_index(task.candidates), task.questions)
    metrics = metrics_from_scores(scores, scores.max(1), task.relevant)  # echo replaced below
    pool, echo = lexical_scores(task.candidates, task.questions)
    with_echo = metrics_from_scores(pool, echo, task.relevant)
    n = len(task.candidates)
    both = torch.as_tensor(
        bm25_scores(bm25_index(task.candidates + task.questions), task.questions)
    )
    mixed = beats(both[:, n:].max(1).values, best_relevant(both[:, :n], task.relevant))
    metrics |= {"mixed_pool_rate": mixed.double().mean().item(), "answer_flag_rate": 0.0}
    return metrics | {key: with_echo[key] for key in ECHO_KEYS}


def normalized(text: str) -> str:
    """Lower case, no punctuation, one space between words: what the exact filter compares."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def looks_like_question(text: str) -> bool:
    """The rule-based question test: ends with "?" or starts with a wh-word or an auxiliary."""
    words = normalized(text).split()
    return text.rstrip().endswith("?") or bool(words and words[0] in QUESTION_START)


def evaluate(
    model,
    pairs: Pairs,
    batch_size: int = 64,
    progress: bool = False,
    lexical_weight: float = 0.0,
    echo_filter: str | None = None,
) -> dict[str, float]:
    """Rank each held-out question's candidates and report the metrics in ``METRIC_KEYS``.

    Args:
        model: a :class:`~qa_lib.encoders.DualEncoder`, or anything with ``encode_questions``
            and ``encode_answers`` (a sentence-transformers adapter, a stand-in).
        pairs: the held-out pairs (their unique answers, or their corpus, are the pool).
        batch_size: texts per forward pass.
        progress: show progress bars.
        lexical_weight: above 0, rank with :mod:`qa_lib.hybrid`'s score, the dense score plus
            this weight times the share of the question's own BM25 score a candidate reaches.
        echo_filter: a rule instead of (or besides) a learned flag: "exact" drops candidates
            equal to the query once case and punctuation are ignored (the echo, not a
            paraphrase); "rule" drops every candidate that :func:`looks_like_question`.

    Returns:
        The metrics in ``METRIC_KEYS`` (see :func:`qa_lib.metrics.summarize`), plus
        ``n_questions``, ``n_candidates`` and ``chance_recall@1``.
    """
    if echo_filter not in (None, *ECHO_FILTERS):
        raise QAError(f"unknown echo filter {echo_filter!r}: use one of {ECHO_FILTERS} or None")
    task = build_task(pairs)
    q_emb = model.encode_questions(task.questions, batch_size, progress)
    a_emb = model.encode_answers(task.candidates, batch_size, progress)
    echo_emb = model.encode_answers(task.questions, batch_size, progress)
    ranks, echo, mixed = [], [], []
    for start in range(0, len(task.questions), EVAL_CHUNK):  # bounded memory for large pools
        rows = slice(start, start + EVAL_CHUNK)
        scores, echo_score, pool_of_questions = _chunk_scores(
            model, task, rows, (q_emb, a_emb, echo_emb), lexical_weight, echo_filter
        )
        chunk_ranks, chunk_echo = echo_outcomes(scores, echo_score, task.relevant[rows])
        best = best_relevant(scores, task.relevant[rows])
        ranks.extend(chunk_ranks)
        echo.append(chunk_echo)
        mixed.append(beats(pool_of_questions.max(1).values, best))
    metrics = summarize(ranks, torch.cat(echo))
    metrics["mixed_pool_rate"] = torch.cat(mixed).double().mean().item()
    metrics["answer_flag_rate"] = _answer_flag_rate(model, task, a_emb, echo_filter)
    metrics.update(
        n_questions=len(task.questions),
        n_candidates=len(task.candidates),
        **{"chance_recall@1": task.chance_recall_at_1},
    )
    return metrics


def rank_candidates(
    model,
    pairs: Pairs,
    depth: int = RUN_DEPTH,
    batch_size: int = 64,
    progress: bool = False,
    lexical_weight: float = 0.0,
    echo_filter: str | None = None,
) -> tuple[RetrievalTask, list[list[tuple[int, float]]]]:
    """Each held-out question's best candidates, scored exactly as :func:`evaluate` scores them.

    For TREC run files (:mod:`qa_lib.trec`); the arguments are those of :func:`evaluate`.

    Returns:
        ``(task, ranking)``: the questions, pool and relevant candidates, and per question its
        ``depth`` best ``(candidate index, score)`` pairs (:func:`qa_lib.trec.top_candidates`).
    """
    if echo_filter not in (None, *ECHO_FILTERS):
        raise QAError(f"unknown echo filter {echo_filter!r}: use one of {ECHO_FILTERS} or None")
    task = build_task(pairs)
    embeddings = (
        model.encode_questions(task.questions, batch_size, progress),
        model.encode_answers(task.candidates, batch_size, progress),
        model.encode_answers(task.questions, batch_size, progress),
    )
    ranking = []
    for start in range(0, len(task.questions), EVAL_CHUNK):
        rows = slice(start, start + EVAL_CHUNK)
        scores = _chunk_scores(model, task, rows, embeddings, lexical_weight, echo_filter)[0]
        ranking.extend(top_candidates(scores, depth))
    return task, ranking


def _chunk_scores(model, task, rows: slice, embeddings, weight: float, echo_filter):
    """One chunk of questions: its pool scores, its echoes' scores, and its scores against every
    test question read by the answer tower (the mixed pool, its own echo on the diagonal).

    Returns:
        Shapes (chunk, n_candidates), (chunk,), (chunk, n_questions).
    """
    q_emb, a_emb, echo_emb = embeddings
    questions = task.questions[rows]
    scores = q_emb[rows] @ a_emb.T  # (chunk, n_candidates)
    echo_score = (q_emb[rows] * echo_emb[rows]).sum(-1)  # (chunk,)
    mixed = q_emb[rows] @ echo_emb.T  # (chunk, n_questions)
    if weight:  # the echo's lexical share is 1 (all its words) unless the flag marks it
        flags, echo_flags = flag_column(model, a_emb), flag_column(model, echo_emb)
        lexical, own = lexical_scores(task.candidates, questions)
        scores = fuse(scores, lexical, own, weight, flags)
        own_flags = None if echo_flags is None else echo_flags[rows, None]
        echo_score = fuse(echo_score[:, None], own[:, None], own, weight, own_flags)[:, 0]
        mixed = fuse(mixed, *lexical_scores(task.questions, questions), weight, echo_flags)
    diagonal = torch.arange(len(questions))
    mixed[diagonal, diagonal + rows.start] = echo_score  # exactly the echo's score
    if echo_filter is not None:
        scores, echo_score, mixed = _filtered(echo_filter, task, rows, scores, echo_score, mixed)
    return scores, echo_score, mixed


def _filtered(kind: str, task, rows: slice, scores, echo_score, mixed):
    """The scores with the candidates that an echo filter drops set to minus infinity."""
    questions = task.questions[rows]
    if kind == "rule":
        pool = torch.tensor([looks_like_question(c) for c in task.candidates])[None, :]
        asked = torch.tensor([looks_like_question(q) for q in task.questions])
        own, as_candidates = asked[rows], asked[None, :]
    else:
        pool = _same_text(questions, task.candidates)
        own = torch.ones(len(questions), dtype=torch.bool)
        as_candidates = _same_text(questions, task.questions)
    minus = float("-inf")
    return (
        scores.masked_fill(pool, minus),
        echo_score.masked_fill(own, minus),
        mixed.masked_fill(as_candidates, minus),
    )


def _same_text(queries: Sequence[str], candidates: Sequence[str]) -> torch.Tensor:
    """True where a candidate equals the query once case and punctuation are ignored.

    Returns:
        Shape (len(queries), len(candidates)).
    """
    where: dict[str, list[int]] = {}
    for j, text in enumerate(candidates):
        where.setdefault(normalized(text), []).append(j)
    mask = torch.zeros(len(queries), len(candidates), dtype=torch.bool)
    for i, query in enumerate(queries):
        mask[i, where.get(normalized(query), [])] = True
    return mask


def _answer_flag_rate(model, task, a_emb, echo_filter) -> float:
    """The share of the pool's real answers a flag or rule takes for questions (false flags)."""
    if echo_filter == "rule":
        return sum(map(looks_like_question, task.candidates)) / len(task.candidates)
    return flag_rate(flag_column(model, a_emb))


LENGTH_BUCKETS = ("shorter", "as long", "longer")  # than the median question (see flag_by_length)
QUESTION_ANSWERS = "answers that are questions"  # flag_by_length's row of is_question_text answers


def flag_by_length(model, pairs: Pairs, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """How often the question flag penalises real answers, by their length against the questions'.

    Length is what a detector could lean on instead of form, so the answers of the pool are put
    in three buckets by token count ``n`` (as the answer tower reads them, truncated to
    ``max_a_len``) against the median question's ``m``: shorter
    (``n < 0.75 m``), as long (up to ``1.5 m``) and longer; and the questions (their echoes) in a
    fourth row.

    A candidate that is one question and nothing else (:func:`is_question_text`; MedQuAD has 17
    such "answers", scraped subheadings such as "Can 48,XXYY syndrome be inherited?" for the
    question "Is 48,XXYY syndrome inherited ?") is no real answer: it is counted in its own row,
    :data:`QUESTION_ANSWERS`, where a flag is right, and in no length bucket.

    Real answers as short as a question are rare (none of SQuAD's paragraphs), so three more rows
    hold texts made from the pool that a length cue gets wrong (:data:`STRESS_ROWS`): the first
    sentence of every answer that has more than one (short, and a statement: none should be
    flagged), every question in the other style (:func:`qa_lib.batching.restyle_question`:
    written questions bare, bare ones written) and every written question closed by a full stop
    instead of its "?" (:func:`qa_lib.batching.full_stop`); all of these should be flagged.

    Returns:
        ``{bucket: {"n": count, "flag_rate": share with p > 0.5, "max_p": the largest p}}``.
    """
    task = build_task(pairs)
    median = sorted(_token_counts(model, task.questions))[len(task.questions) // 2]
    lengths = torch.tensor(_token_counts(model, task.candidates), dtype=torch.float)
    p_answers = model.question_probability(task.candidates, batch_size)
    bucket_of = (lengths >= 0.75 * median).long() + (lengths > 1.5 * median).long()
    asks = torch.tensor([is_question_text(c) for c in task.candidates], dtype=torch.bool)
    report = {"median question tokens": {"n": float(median)}}
    for b, name in enumerate(LENGTH_BUCKETS):
        report[f"answers {name}"] = _flag_stats(p_answers[(bucket_of == b) & ~asks])
    report[QUESTION_ANSWERS] = _flag_stats(p_answers[asks])
    report["questions (echoes)"] = _flag_stats(model.question_probability(task.questions))
    for name, texts in stress_texts(task).items():
        p = model.question_probability(texts, batch_size) if texts else torch.zeros(0)
        report[name] = _flag_stats(p)
    return report


STRESS_ROWS = (  # rows of flag_by_length
    "first sentences of answers",
    "questions restyled",
    "questions ending in a full stop",
)


def stress_texts(task) -> dict[str, list[str]]:
    """The texts of :data:`STRESS_ROWS` built from a retrieval task's pool: the first sentence of
    every candidate that has several (answers), every question restyled and every written one
    closed by a full stop (questions)."""
    firsts = [f for f in map(first_sentence_text, task.candidates) if f]
    restyled = [restyle_question(q) for q in task.questions]
    stopped = [full_stop(q) for q in task.questions if "?" in q]
    return dict(zip(STRESS_ROWS, (firsts, restyled, stopped)))


_SENTENCE_END = re.compile(r"(?<=[.!;])\s+(?=[A-Z0-9\"'(])")  # then a new sentence


_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "prof", "st", "mt", "jr", "sr", "no", "vs", "fig", "e.g"}


def first_sentence_text(answer: str) -> str:
    """An answer's first sentence, or "" when the answer is a single sentence.

    A full stop after an initial or a title ("J. Smith", "Dr. Who") does not end a sentence."""
    text = answer.strip()
    for end in _SENTENCE_END.finditer(text):
        head = text[: end.start()]
        word = head.rsplit(None, 1)[-1][:-1].lower()  # the word before the full stop
        if len(word) > 1 and word not in _ABBREVIATIONS:
            return head
    return ""


def is_question_text(text: str) -> bool:
    """True for a text that is a single question and nothing else: one sentence, ending in "?".

    "Is it safe? Yes, most airlines allow it." and "Do you know your level? Ask a doctor." are not.
    """
    text = text.strip()
    return text.endswith("?") and "?" not in text[:-1] and not first_sentence_text(text)


def _token_counts(model, texts: Sequence[str]) -> list[int]:
    """Tokens of each text as the answer tower reads it (truncated to ``max_a_len``)."""
    ids = model.tokenizer(list(texts), truncation=True, max_length=model.config.max_a_len)
    return [len(t) for t in ids["input_ids"]]


def _flag_stats(p: torch.Tensor) -> dict[str, float]:
    if not len(p):
        return {"n": 0.0, "flag_rate": float("nan"), "max_p": float("nan")}
    return {
        "n": float(len(p)),
        "flag_rate": (p > 0.5).double().mean().item(),
        "max_p": p.max().item(),
    }


def demo_scores(
    model,
    question: str = DEMO_QUESTION,
    candidates: Sequence[str] = (DEMO_QUESTION, DEMO_ANSWER, DEMO_DISTRACTOR),
) -> list[tuple[str, float]]:
    """The original lesson's demo: score the question against a few candidates.

    Args:
        model: a dual encoder.
        question: the question.
        candidates: by default the question itself, the correct answer and an unrelated question.

    Returns:
        (candidate, score) pairs, best first.
    """
    scores = model.score([question], list(candidates))[0]
    return sorted(zip(candidates, scores.tolist()), key=lambda x: -x[1])
