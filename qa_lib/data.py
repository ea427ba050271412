"""Load question-answer pairs from many sources, clean them, split them reproducibly (notebook 01).

Sources understood by :func:`load_pairs`:

- ``"default"``: the embedded dataset shipped with qa_lib (fixed train/validation/test split);
- a ``.tsv`` / ``.csv`` file with a question and an answer column;
- a ``.jsonl`` / ``.jsonl.gz`` file of objects with a question and an answer field;
- a SQuAD ``.json`` file (each question paired with its paragraph);
- a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``);
- a folder written by ``datasets.Dataset.save_to_disk``, or a Hugging Face hub dataset id.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from qa_lib.errors import QAError

QUESTION_COLUMNS = ("question", "questions", "query", "queries", "q", "prompt", "title")
ANSWER_COLUMNS = ("answer", "answers", "passage", "context", "response", "text", "a", "document")
SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_WS = re.compile(r"\s+")
_SHORT = reprlib.Repr()  # shortens column lists and values quoted in error messages
_SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 8, 40, 40


@dataclass
class CleaningReport:
    """What :func:`clean_pairs` changed."""

    rows_in: int = 0
    rows_out: int = 0
    mojibake_fixed: int = 0  # texts whose encoding damage ftfy repaired
    whitespace_fixed: int = 0  # texts whose whitespace was normalised
    empty_dropped: int = 0  # rows with an empty question or answer, dropped
    duplicates_dropped: int = 0  # exact duplicate (question, answer) rows, dropped
    examples: list[tuple[str, str]] = field(default_factory=list)  # (before, after), up to 3

    def summary(self) -> str:
        """One line describing the changes."""
        return (
            f"{self.rows_in} rows in, {self.rows_out} out: {self.mojibake_fixed} texts with "
            f"mojibake repaired, {self.whitespace_fixed} with whitespace normalised, "
            f"{self.empty_dropped} empty rows and {self.duplicates_dropped} duplicate pairs dropped"
        )


@dataclass
class Pairs:
    """Question-answer pairs, aligned by index.

    Attributes:
        questions: question texts.
        answers: answer texts; ``answers[i]`` answers ``questions[i]``.
        splits: per-row split name when the source defines one ("train", "test", ...), else None.
        groups: per-row group (topic, article, disease) used to split without leakage, or None.
        corpus: the full candidate pool when the source defines one (BEIR), else None
            (then the candidates are the unique answers of the pairs).
        name: where the pairs came from.
        report: what cleaning changed.
    """

    questions: list[str]
    answers: list[str]
    splits: list[str] | None = None
    groups: list[str] | None = None
    corpus: list[str] | None = None
    name: str = ""
    report: CleaningReport | None = None

    def __len__(self) -> int:
        return len(self.questions)

    def select(self, indices: Iterable[int]) -> Pairs:
        """Return the rows at ``indices`` (the corpus and report are kept)."""
        idx = list(indices)

        def pick(values: list[str] | None) -> list[str] | None:
            return None if values is None else [values[i] for i in idx]

        return replace(
            self,
            questions=pick(self.questions),
            answers=pick(self.answers),
            splits=pick(self.splits),
            groups=pick(self.groups),
        )

    def fingerprint(self) -> str:
        """A short sha256 of the pairs' text, to record which data a run used."""
        digest = hashlib.sha256()
        for q, a in zip(self.questions, self.answers):
            digest.update(q.encode() + b"\x1f" + a.encode() + b"\x1e")
        return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- cleaning


def normalize_text(text: str) -> tuple[str, bool, bool]:
    """Repair mojibake and normalise whitespace.

    Args:
        text: raw text.

    Returns:
        (clean text, whether ftfy changed it, whether whitespace changed).
    """
    import ftfy

    fixed = ftfy.fix_text(text, normalization="NFC")
    spaced = _WS.sub(" ", fixed).strip()
    return spaced, fixed != text, spaced != fixed


def clean_pairs(
    questions: Sequence[str],
    answers: Sequence[str],
    extra: Sequence[Sequence[str]] = (),
    *,
    drop_incomplete: bool = False,
    where: str = "data",
) -> tuple[list[str], list[str], list[list[str]], CleaningReport]:
    """Repair, normalise and de-duplicate aligned pairs.

    Rows with both sides empty are dropped. A row with exactly one empty side is an error
    (it usually means a broken file) unless ``drop_incomplete`` is set.

    Args:
        questions: raw questions.
        answers: raw answers, aligned with ``questions``.
        extra: other per-row columns (splits, groups) kept aligned with the surviving rows.
        drop_incomplete: drop rows with one empty side instead of raising.
        where: the source's name, for error messages.

    Returns:
        (questions, answers, extra columns, report).

    Raises:
        QAError: a row has an empty question or answer and ``drop_incomplete`` is False.
    """
    report = CleaningReport(rows_in=len(questions))
    seen: set[tuple[str, str]] = set()
    out_q: list[str] = []
    out_a: list[str] = []
    out_extra: list[list[str]] = [[] for _ in extra]
    for i, (raw_q, raw_a) in enumerate(zip(questions, answers)):
        q, q_moj, q_ws = normalize_text(raw_q)
        a, a_moj, a_ws = normalize_text(raw_a)
        report.mojibake_fixed += q_moj + a_moj
        report.whitespace_fixed += q_ws + a_ws
        if q_moj and len(report.examples) < 3:
            report.examples.append((raw_q, q))
        elif a_moj and len(report.examples) < 3:
            report.examples.append((raw_a, a))
        if not q or not a:
            if (q or a) and not drop_incomplete:
                side = "question" if not q else "answer"
                raise QAError(
                    f"{where}: row {i + 1} has an empty {side}; fill it in or remove the row "
                    f"(or pass drop_incomplete=True / --drop-incomplete to skip such rows)"
                )
            report.empty_dropped += 1
            continue
        if (q, a) in seen:
            report.duplicates_dropped += 1
            continue
        seen.add((q, a))
        out_q.append(q)
        out_a.append(a)
        for column, values in zip(out_extra, extra):
            column.append(values[i])
    report.rows_out = len(out_q)
    return out_q, out_a, out_extra, report


# ----------------------------------------------------------------------------- readers


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """Read a whole file as text, with one clear error for undecodable bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QAError(f"{path}: cannot be read ({exc.strerror}); check the path") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise QAError(f"{path}: is not a valid gzip file ({exc}); re-create it") from None
    try:
        text = raw.decode("utf-8-sig" if encoding.lower() in ("utf-8", "utf8") else encoding)
    except UnicodeDecodeError as exc:
        raise QAError(
            f"{path}: byte {exc.start} is not valid {encoding} ({exc.reason}); re-save the file "
            f"as UTF-8, or pass the file's encoding (e.g. encoding='cp1252')"
        ) from None
    if not text.strip():
        raise QAError(f"{path}: the file is empty; give a file with question-answer rows")
    return text


def _pick_column(
    columns: Sequence[str], wanted: str | None, aliases: Sequence[str], role: str, where: str
) -> str:
    lowered = {c.strip().lower(): c for c in columns if isinstance(c, str)}
    if wanted is not None:
        if wanted in columns:
            return wanted
        found = _SHORT.repr(list(columns))
        raise QAError(f"{where}: no column {wanted!r} (found {found}); pass an existing one")
    for alias in aliases:
        if alias in lowered:
            return lowered[alias]
    raise QAError(
        f"{where}: no {role} column (found {_SHORT.repr(list(columns))}); name it one of "
        f"{list(aliases[:4])} or pass {role}_column=..."
    )


def _rows_to_pairs(
    rows: list[dict], where: str, question_column: str | None, answer_column: str | None
) -> tuple[list[str], list[str], list[str] | None, list[str] | None]:
    if not rows:
        raise QAError(f"{where}: has a header but no rows; add question-answer rows")
    columns = list(rows[0].keys())
    q_col = _pick_column(columns, question_column, QUESTION_COLUMNS, "question", where)
    a_col = _pick_column(columns, answer_column, ANSWER_COLUMNS, "answer", where)
    questions, answers = [], []
    for line, row in enumerate(rows, start=2):
        q, a = row.get(q_col), row.get(a_col)
        if not isinstance(q, str) or not isinstance(a, str):
            raise QAError(
                f"{where}: row {line} has no text in {q_col!r} or {a_col!r}; fix or remove the row"
            )
        questions.append(q)
        answers.append(a)
    splits = [str(r.get("split", "")) for r in rows] if "split" in columns else None
    group_col = next((c for c in ("topic", "focus", "group", "title") if c in columns), None)
    if group_col in (q_col, a_col):
        group_col = None
    groups = [str(r.get(group_col, "")) for r in rows] if group_col else None
    return questions, answers, splits, groups


def _read_delimited(path: Path, encoding: str) -> list[dict]:
    text = _read_text(path, encoding)
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    if path.suffix.lower() not in (".tsv", ".tab", ".csv"):
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters="\t,;|").delimiter
        except csv.Error:
            delimiter = "\t"
    csv.field_size_limit(1 << 30)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = [
            r for r in reader if any((v or "").strip() for v in r.values() if isinstance(v, str))
        ]
    except csv.Error as exc:
        raise QAError(f"{path}: malformed {path.suffix} ({exc}); check quoting") from None
    if reader.fieldnames is None or len(reader.fieldnames) < 2:
        raise QAError(
            f"{path}: found no header with two columns separated by {delimiter!r}; the first line "
            f"must name the question and answer columns"
        )
    return rows


def _parse_json(text: str, where: str) -> object:
    """``json.loads`` with one clear error for anything the parser rejects."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise QAError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}); fix it"
        ) from None
    except RecursionError:
        raise QAError(f"{where} is JSON nested too deeply to read; flatten it") from None
    except ValueError as exc:  # e.g. an integer with more than 4300 digits
        reason = str(exc).split(";")[0][:80]
        raise QAError(f"{where} cannot be read as JSON ({reason}); fix the value") from None


def _read_jsonl(path: Path, encoding: str) -> list[dict]:
    rows = []
    for number, line in enumerate(_read_text(path, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        row = _parse_json(line, f"{path}: line {number}")
        if not isinstance(row, dict):
            raise QAError(f"{path}: line {number} is not a JSON object; one object per line")
        rows.append(row)
    return rows


def _read_squad(data: dict, where: str) -> Pairs:
    questions, answers, groups = [], [], []
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    questions.append(qa["question"])
                    answers.append(paragraph["context"])
                    groups.append(str(article.get("title", "")))
    except (KeyError, TypeError, AttributeError) as exc:
        reason = f"missing {exc}" if isinstance(exc, KeyError) else "a value of the wrong type"
        raise QAError(
            f"{where}: not SQuAD-shaped ({reason}); expected data/paragraphs/qas"
        ) from None
    for number, (q, a) in enumerate(zip(questions, answers), start=1):
        if not isinstance(q, str) or not isinstance(a, str):
            raise QAError(f"{where}: question {number} or its context is not text; fix it")
    return Pairs(questions, answers, groups=groups, name=where)


def _read_json(path: Path, encoding: str) -> Pairs | list[dict]:
    data = _parse_json(_read_text(path, encoding), str(path))
    if isinstance(data, dict) and "data" in data:
        return _read_squad(data, str(path))
    if isinstance(data, list) and all(isinstance(r, dict) for r in data):
        return data
    raise QAError(f"{path}: expected a SQuAD file or a list of objects; use .jsonl for rows")


def _qrel_score(value: object, qrels: Path, line: int) -> float:
    """A qrels relevance score; an empty one counts as relevant (1)."""
    try:
        return float(value or 1)
    except (TypeError, ValueError):
        raise QAError(
            f"{qrels}: row {line} has score {_SHORT.repr(value)}, not a number; fix or remove it"
        ) from None


def _read_beir(folder: Path) -> Pairs:
    """Every qrels split of a BEIR folder; documents are 'title. text'."""
    corpus_rows = _read_jsonl(folder / "corpus.jsonl", "utf-8")
    query_rows = _read_jsonl(folder / "queries.jsonl", "utf-8")
    doc_ids = [str(r.get("_id")) for r in corpus_rows]
    docs = [
        ". ".join(t for t in (str(r.get("title") or "").strip(), str(r.get("text") or "")) if t)
        for r in corpus_rows
    ]
    doc_text = dict(zip(doc_ids, docs))
    query_text = {str(r.get("_id")): str(r.get("text") or "") for r in query_rows}
    questions, answers, splits = [], [], []
    qrel_files = sorted((folder / "qrels").glob("*.tsv"))
    if not qrel_files:
        raise QAError(f"{folder}/qrels: no <split>.tsv files; a BEIR folder needs qrels/test.tsv")
    for qrels in qrel_files:
        split = {"dev": "validation", "val": "validation"}.get(qrels.stem, qrels.stem)
        for line, row in enumerate(_read_delimited(qrels, "utf-8"), start=2):
            qid, did = str(row.get("query-id")), str(row.get("corpus-id"))
            if _qrel_score(row.get("score"), qrels, line) <= 0:
                continue
            if qid not in query_text or did not in doc_text:
                continue
            questions.append(query_text[qid])
            answers.append(doc_text[did])
            splits.append(split)
    return Pairs(questions, answers, splits=splits, corpus=docs, name=str(folder))


def _read_hf(source: str, is_local: bool) -> list[dict]:
    import datasets

    try:
        if is_local:
            data = datasets.load_from_disk(source)
        else:
            data = datasets.load_dataset(source)
    except FileNotFoundError as exc:
        raise QAError(f"{source}: not a saved dataset folder ({exc}); check the path") from None
    except Exception as exc:  # hub errors come in many types (connection, offline, missing)
        if is_local:
            raise QAError(f"{source}: cannot load this dataset folder ({exc})") from None
        raise QAError(
            f"{source!r} is not a local file or folder, and loading it from the Hugging Face hub "
            f"failed ({type(exc).__name__}); on a machine with internet unset HF_HUB_OFFLINE, or "
            f"save it with datasets.save_to_disk and pass that folder"
        ) from None
    if isinstance(data, datasets.DatasetDict):
        rows = []
        for split, part in data.items():
            rows.extend({**r, "split": _SPLIT_ALIASES.get(split, split)} for r in part)
        return rows
    return list(data)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_FILE_SUFFIXES = (".tsv", ".csv", ".tab", ".txt", ".json", ".jsonl", ".gz", ".ndjson")
_SPLIT_ALIASES = {"dev": "validation", "val": "validation", "valid": "validation"}


def default_data_path() -> Path:
    """The embedded default dataset's file (package data)."""
    return Path(str(resources.files("qa_lib") / "embedded" / "default_pairs.jsonl"))


def read_pairs(
    source: str | os.PathLike | None = None,
    *,
    question_column: str | None = None,
    answer_column: str | None = None,
    encoding: str = "utf-8",
    clean: bool = True,
    drop_incomplete: bool = False,
) -> Pairs:
    """Read every pair of a source (all splits), cleaned unless ``clean=False``.

    Args:
        source: "default"/None, a file, a folder, or a hub dataset id (see module docstring).
        question_column: the question column; None = detect (question, questions, query, ...).
        answer_column: the answer column; None = detect (answer, answers, passage, ...).
        encoding: text encoding of local files.
        clean: repair mojibake, normalise whitespace, drop empty and duplicate rows.
        drop_incomplete: drop rows with one empty side instead of raising.

    Returns:
        All pairs, with per-row ``splits`` when the source defines them.

    Raises:
        QAError: the source is missing, empty, malformed or unreachable.
    """
    name = "default" if source in (None, "default") else str(source)
    path = default_data_path() if name == "default" else Path(os.path.expanduser(name))
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.is_dir():
        if (path / "corpus.jsonl").exists() and (path / "queries.jsonl").exists():
            pairs = _read_beir(path)
        else:
            pairs = _read_hf(str(path), is_local=True)
    elif path.is_file():
        if suffixes.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
            pairs = _read_jsonl(path, encoding)
        elif path.suffix.lower() == ".json":
            pairs = _read_json(path, encoding)
        else:
            pairs = _read_delimited(path, encoding)
    elif not _HUB_ID.match(name) or path.suffix.lower() in _FILE_SUFFIXES:
        raise QAError(f"{name}: no such file or folder; check the path, or use 'default'")
    else:
        pairs = _read_hf(name, is_local=False)
    if isinstance(pairs, list):
        q, a, splits, groups = _rows_to_pairs(pairs, name, question_column, answer_column)
        pairs = Pairs(q, a, splits=splits, groups=groups, name=name)
    if not clean:
        return pairs
    extra = [c for c in (pairs.splits, pairs.groups) if c is not None]
    q, a, cols, report = clean_pairs(
        pairs.questions, pairs.answers, extra, drop_incomplete=drop_incomplete, where=name
    )
    if not q:
        raise QAError(f"{name}: no usable pairs after cleaning ({report.summary()})")
    it = iter(cols)
    splits = next(it) if pairs.splits is not None else None
    groups = next(it) if pairs.groups is not None else None
    corpus = None
    if pairs.corpus is not None:
        corpus = list(dict.fromkeys(normalize_text(d)[0] for d in pairs.corpus))
    return Pairs(q, a, splits, groups, corpus, name, report)


# ----------------------------------------------------------------------------- splitting


def assign_splits(
    n: int,
    groups: Sequence[str] | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> list[str]:
    """Assign each row to train/validation/test, by group when groups are given.

    Args:
        n: number of rows.
        groups: per-row group; all rows of a group land in one split (no leakage).
        seed: seeds the shuffle; the same seed always gives the same assignment.
        fractions: train, validation, test shares (of groups, or of rows without groups).

    Returns:
        One split name per row.
    """
    keys = list(dict.fromkeys(groups)) if groups is not None else list(range(n))
    random.Random(seed).shuffle(keys)
    n_train = round(fractions[0] * len(keys))
    n_val = round(fractions[1] * len(keys))
    split_of = {
        key: "train" if i < n_train else "validation" if i < n_train + n_val else "test"
        for i, key in enumerate(keys)
    }
    return [split_of[groups[i] if groups is not None else i] for i in range(n)]


def split_pairs(
    pairs: Pairs,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> dict[str, Pairs]:
    """Split pairs into train/validation/test.

    A source's own split labels win; a missing validation split is carved from train
    (seeded, by group); a source without labels is split by ``fractions``.

    Args:
        pairs: all pairs.
        seed: seeds any split that is not given by the source.
        fractions: train, validation, test shares used when the source gives no split.

    Returns:
        {"train": ..., "validation": ..., "test": ...}; a split may be empty.
    """
    labels = list(pairs.splits) if pairs.splits is not None else None
    if labels is None or not set(labels) & set(SPLITS):
        labels = assign_splits(len(pairs), pairs.groups, seed, fractions)
    elif "validation" not in labels and "train" in labels:
        train_idx = [i for i, s in enumerate(labels) if s == "train"]
        sub_groups = [pairs.groups[i] for i in train_idx] if pairs.groups else None
        carved = assign_splits(len(train_idx), sub_groups, seed, (0.9, 0.1, 0.0))
        for i, label in zip(train_idx, carved):
            labels[i] = label
    return {name: pairs.select(i for i, s in enumerate(labels) if s == name) for name in SPLITS}


def load_pairs(
    source: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    seed: int = 0,
    **read_options: object,
) -> Pairs:
    """Load cleaned pairs, optionally one split of them.

    Args:
        source: "default"/None (the embedded dataset), a file, a folder or a hub dataset id.
        split: "train", "validation" or "test" (aliases "dev", "val"); None = all rows.
        seed: seeds the split when the source does not define one.
        **read_options: passed to :func:`read_pairs` (question_column, answer_column, ...).

    Returns:
        The pairs; ``pairs.report`` says what cleaning changed.

    Raises:
        QAError: a bad source, or a split that is empty.
    """
    pairs = read_pairs(source, **read_options)
    if split is None:
        return pairs
    split = _SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise QAError(f"unknown split {split!r}: use one of {list(SPLITS)}")
    part = split_pairs(pairs, seed=seed)[split]
    if not len(part):
        raise QAError(f"{pairs.name}: the {split!r} split is empty; choose another split")
    return part
