"""Property-based tests: no file, however broken, crashes the loaders with a traceback.

Every generated file either loads as cleaned pairs (non-empty, stripped, single-spaced text,
no duplicate pairs) or raises ``QAError`` with a one-line message. Any other exception is a bug.
Run ``pytest tests/test_data_fuzz.py --hypothesis-show-statistics`` to see how many cases ran
and how they ended (``loaded`` / ``QAError`` events).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qa_lib import QAError, load_pairs
from qa_lib.cli import main

# Deterministic in CI (derandomize), no example database, no per-example time limit.
FUZZ = dict(deadline=None, derandomize=True, database=None, print_blob=True)
SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

SUFFIXES = (".tsv", ".csv", ".txt", ".tab", ".jsonl", ".json", ".ndjson", ".tsv.gz", ".jsonl.gz")
COLUMNS = ("question", "answer", "Question ", "ANSWERS", "query", "passage", "q", "a", "split")
COLUMNS += ("topic", "title", "text", "foo", "", "question\tanswer", "spl\nit")
SPECIAL_TEXTS = (
    "",
    " ",
    "\t\n",
    "\r\n",
    "\x00",
    "a\x00b",
    "\ufeffq",  # a BOM inside a field
    "e\u0301\u0301\u0301",  # combining marks
    "\u202eright-to-left override",
    "مرحبا بالعالم",  # RTL script
    "👍🏽 👨‍👩‍👧",  # emoji with skin tone and ZWJ
    "\u2028line\u2029para\x85",  # Unicode line breaks
    "Ã©tÃ© â€” caf\u00e9",  # mojibake
    '"quoted, with delimiter"',
    'a "stray quote',
    "Q\u00a0A",
)
HUGE = st.sampled_from((5_000, 70_000)).map(lambda n: "x" * n + " é" * (n // 10))  # huge fields
# Random text without lone surrogates (a UTF-8 file cannot hold them), mixed with edge cases.
RANDOM_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
TEXT = st.one_of(RANDOM_TEXT, st.sampled_from(SPECIAL_TEXTS), HUGE)
# A table cell: mostly ordinary words, sometimes random or hostile text.
WORDS = st.lists(st.sampled_from(("what", "is", "Paris", "the", "río", "42", "?")), min_size=1)
CELL = st.one_of(WORDS.map(" ".join), WORDS.map(" ".join), RANDOM_TEXT, TEXT)
JSON_SCALAR = st.one_of(TEXT, st.integers(), st.floats(allow_nan=True), st.booleans(), st.none())
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
JSON_FIELD = st.one_of(st.sampled_from(COLUMNS), TEXT)

_WHITESPACE_RUN = re.compile(r"[^\S ]|  ")


def _assert_clean(pairs) -> None:
    """The invariants every successfully loaded source must satisfy."""
    assert len(pairs) > 0 and len(pairs.questions) == len(pairs.answers)
    for text in pairs.questions + pairs.answers:
        assert isinstance(text, str) and text and text == text.strip(), repr(text[:80])
        assert not _WHITESPACE_RUN.search(text), repr(text[:80])
        assert "\x00" not in text
        text.encode("utf-8")  # no lone surrogates: the tokenizer and fingerprint need this
    assert len(set(zip(pairs.questions, pairs.answers))) == len(pairs)
    assert len(pairs.fingerprint()) == 16


def _assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message, repr(message)
    assert len(message) < 1000, f"message of {len(message)} characters"


def check_source(path: Path, split: str | None) -> None:
    """Load ``path``; it must give clean pairs or a one-line QAError."""
    try:
        pairs = load_pairs(str(path), split)
    except QAError as exc:
        _assert_one_line(str(exc))
        kind = re.sub(r"\S*/tmp\S*|\d+|\(.*|'.*?'", "", str(exc).replace(str(path), ""))
        event(f"QAError: {kind[:40]}")
        return
    event("loaded")
    _assert_clean(pairs)


def _write(folder: str, suffix: str, data: bytes) -> Path:
    path = Path(folder) / f"data{suffix}"
    path.write_bytes(gzip.compress(data, mtime=0) if suffix.endswith(".gz") else data)
    return path


def _encode(text: str, encoding: str, spliced: bytes) -> bytes:
    """Encode a file, possibly with foreign bytes spliced into the middle (mixed encodings)."""
    if encoding == "utf-8-sig":
        return b"\xef\xbb\xbf" + text.encode("utf-8")
    data = text.encode(encoding, errors="replace")
    middle = len(data) // 2
    return data[:middle] + spliced + data[middle:]


@settings(max_examples=250, suppress_health_check=SUPPRESS, **FUZZ)
@given(
    data=st.binary(max_size=600),
    suffix=st.sampled_from(SUFFIXES),
    split=st.sampled_from((None, "train")),
)
def test_random_bytes(data, suffix, split):
    with tempfile.TemporaryDirectory() as folder:
        check_source(_write(folder, suffix, data), split)


@st.composite
def delimited_files(draw) -> tuple[str, bytes]:
    """CSV/TSV with wrong delimiters, missing/extra columns, CRLF, BOMs and mixed encodings."""
    usual = st.just(["question", "answer"])
    header = draw(st.one_of(usual, usual, st.lists(JSON_FIELD, min_size=1, max_size=4)))
    width = st.sampled_from((0, 0, 0, -1, 1)).map(lambda d: max(1, len(header) + d))
    rows = draw(st.lists(width.flatmap(lambda w: st.lists(CELL, min_size=w, max_size=w))))
    suffix = draw(st.sampled_from((".tsv", ".csv", ".txt", ".tab", ".tsv.gz")))
    right = "," if suffix == ".csv" else "\t"
    delimiter = draw(st.sampled_from((right, right, right, ",", "\t", ";", "|")))  # or wrong
    newline = draw(st.sampled_from(("\n", "\r\n", "\r")))
    if draw(st.booleans()):  # properly quoted
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=delimiter, lineterminator=newline).writerows([header, *rows])
        text = buffer.getvalue()
    else:  # naive join: stray quotes, delimiters and newlines inside fields break the structure
        text = newline.join(delimiter.join(r) for r in [header, *rows]) + newline
    encoding = draw(st.sampled_from(("utf-8",) * 6 + ("utf-8-sig", "cp1252", "latin-1")))
    spliced = draw(st.sampled_from((b"",) * 12 + (b"\xe9", b"caf\xe9 \x93q\x94", b"\x00", b"\xff")))
    return suffix, _encode(text, encoding, spliced)


@settings(max_examples=250, suppress_health_check=SUPPRESS, **FUZZ)
@given(file=delimited_files(), split=st.sampled_from((None, None, "train")))
def test_delimited_files(file, split):
    suffix, data = file
    with tempfile.TemporaryDirectory() as folder:
        check_source(_write(folder, suffix, data), split)


def _with_some(draw, rows: list, odd: st.SearchStrategy, at_most: int = 1) -> list:
    """``rows`` with up to ``at_most`` odd rows inserted at random places (in 1 of 3 files)."""
    rows = list(rows)
    if draw(st.integers(0, 2)) == 0:
        for item in draw(st.lists(odd, min_size=1, max_size=at_most)):
            rows.insert(draw(st.integers(0, len(rows))), item)
    return rows


@st.composite
def json_files(draw) -> tuple[str, bytes]:
    """JSONL, JSON lists and SQuAD files, mostly well-formed with the odd broken row."""
    good = st.fixed_dictionaries({"question": CELL, "answer": CELL})
    odd = st.one_of(st.dictionaries(JSON_FIELD, JSON_VALUE, max_size=4), JSON_VALUE)
    rows = _with_some(draw, draw(st.lists(good, max_size=6)), odd)
    kind = draw(st.sampled_from(("jsonl", "list", "squad")))
    if kind == "jsonl":
        text = "\n".join(json.dumps(r, ensure_ascii=draw(st.booleans())) for r in rows)
        return draw(st.sampled_from((".jsonl", ".ndjson", ".jsonl.gz"))), text.encode()
    if kind == "squad":
        qas = st.lists(st.fixed_dictionaries({"question": CELL}), min_size=1, max_size=3)
        paragraph = st.fixed_dictionaries({"context": CELL, "qas": qas})
        article = st.fixed_dictionaries(
            {"title": JSON_VALUE, "paragraphs": st.lists(paragraph, max_size=2)}
        )
        odd_article = st.one_of(
            JSON_VALUE,
            st.fixed_dictionaries({"paragraphs": st.lists(JSON_VALUE, max_size=2)}),
            st.fixed_dictionaries({"paragraphs": st.just([{"context": 1, "qas": [{}]}])}),
        )
        rows = {"data": _with_some(draw, draw(st.lists(article, max_size=3)), odd_article)}
    return ".json", json.dumps(rows).encode()


@settings(max_examples=200, suppress_health_check=SUPPRESS, **FUZZ)
@given(file=json_files(), split=st.sampled_from((None, "validation")))
def test_json_files(file, split):
    suffix, data = file
    with tempfile.TemporaryDirectory() as folder:
        check_source(_write(folder, suffix, data), split)


@st.composite
def hostile_json(draw) -> tuple[str, bytes]:
    """JSON that the standard library itself chokes on: deep nesting, giant numbers."""
    depth = draw(st.integers(1, 5000))
    digits = draw(st.integers(1, 6000))
    kind = draw(st.sampled_from(("nest", "number", "lone_surrogate")))
    if kind == "nest":
        text = '{"question": "q", "answer": ' + "[" * depth + "]" * depth + "}"
    elif kind == "number":
        text = '{"question": "q", "answer": "a", "id": ' + "9" * digits + "}"
    else:
        text = '{"question": "\\ud800 half an emoji \\udfff", "answer": "a"}'
    suffix = draw(st.sampled_from((".jsonl", ".json")))
    if suffix == ".json":
        text = f"[{text}]"
    return suffix, text.encode()


@settings(max_examples=30, suppress_health_check=SUPPRESS, **FUZZ)
@given(file=hostile_json())
def test_hostile_json(file):
    suffix, data = file
    with tempfile.TemporaryDirectory() as folder:
        check_source(_write(folder, suffix, data), None)


@st.composite
def beir_folders(draw) -> dict[str, bytes]:
    """A BEIR folder with damaged rows: unknown ids, odd scores, broken JSON lines."""
    ids = st.sampled_from(("1", "2", "2", "", "x"))  # mostly ids that exist
    doc = st.builds(lambda i, t: json.dumps({"_id": i, "text": t}), ids, CELL)
    odd_doc = st.one_of(TEXT, st.builds(lambda i: json.dumps({"_id": i}), JSON_VALUE))
    score = st.sampled_from(("1", "1", "0", "-1", "2.5", "nan", "", "high"))
    qrel = st.builds("\t".join, st.tuples(ids, ids, score))

    def lines(rows: st.SearchStrategy, odd: st.SearchStrategy) -> bytes:
        return "\n".join(
            _with_some(draw, draw(st.lists(rows, min_size=1, max_size=4)), odd)
        ).encode()

    return {
        "corpus.jsonl": lines(doc, odd_doc),
        "queries.jsonl": lines(doc, odd_doc),
        "qrels/test.tsv": b"query-id\tcorpus-id\tscore\n" + lines(qrel, TEXT),
    }


@settings(max_examples=60, suppress_health_check=SUPPRESS, **FUZZ)
@given(files=beir_folders())
def test_beir_folders(files):
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).parent.mkdir(exist_ok=True)
            (Path(folder) / name).write_bytes(data)
        check_source(Path(folder), None)


@settings(max_examples=25, suppress_health_check=SUPPRESS, **FUZZ)
@given(file=st.one_of(delimited_files(), json_files(), st.tuples(st.just(".tsv"), st.binary())))
def test_cli_never_shows_a_traceback(file, tiny_bert_dir):
    suffix, data = file
    err = io.StringIO()
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(err):
        path = _write(folder, suffix, data)
        argv = ["--quiet", "evaluate", "--data", str(path), "--model", str(tiny_bert_dir)]
        with contextlib.redirect_stdout(io.StringIO()):
            status = main(argv)
    assert status in (0, 2)
    lines = [x for x in err.getvalue().splitlines() if x.startswith("error: ")]
    if status == 2:
        assert len(lines) == 1 and "Traceback" not in err.getvalue()
        _assert_one_line(lines[0])
    event(f"exit {status}")
