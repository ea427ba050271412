"""Write the aspect pairs into the embedded dataset (README "The embedded dataset").

``qa_lib/embedded/default_pairs.jsonl`` holds the original 603 factoid pairs (32 topics) and the
aspect pairs of ``benchmarks/aspect_pairs.tsv``, written for this project: entities (diseases,
elements, landmarks, scientists, countries, rivers) with 7-8 questions each, told apart only by
the aspect asked (cause / treatment / date / place ...), every answer naming its entity, as
MedQuAD's answers do. The TSV's columns are ``group entity aspect question answer``; the entity
becomes the row's ``topic``. This script keeps the original rows as they are, drops any earlier
aspect rows, and appends the aspect pairs with their fixed split, so running it twice gives the
same file byte for byte:

    python benchmarks/make_default_pairs.py            # rewrite the file
    python benchmarks/make_default_pairs.py --check    # exit 1 if the file is not up to date

Split rule (``entity_splits``): the entities are held out whole. Within each group (diseases,
elements, ...) a shuffle seeded by the group's name sends ``TEST_PER_GROUP`` entities to test,
``VALIDATION_PER_GROUP`` to validation and the rest to train, so a test question meets all of its
entity's other answers, told apart only by the aspect, in the pool, and the towers must have
learned the aspects from other entities. (Splitting inside each entity instead, 2 test pairs per
entity, left the untrained towers at Recall@1 0.950 on the test split: too little room to learn;
46 entities with 2 per group in test and 1 in validation left the 127 factoid test questions, which
the untrained towers already answer, the larger share of the test split, and training gained 4.8
points; 58 entities, 3 in test and 2 in validation per group, give the aspects the larger share.)
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILE = HERE.parent / "qa_lib" / "embedded" / "default_pairs.jsonl"
ASPECTS = HERE / "aspect_pairs.tsv"
SEED = 13  # the seed of the original topics' split
TEST_PER_GROUP = 3  # held-out test entities per group (of 8-10)
VALIDATION_PER_GROUP = 2  # validation entities per group


def entity_splits(groups: dict[str, list[str]], seed: int = SEED) -> dict[str, str]:
    """Each entity's split: per group, a seeded shuffle, then test, validation, train."""
    split_of = {}
    for group, entities in groups.items():
        order = list(entities)
        random.Random(f"{seed}:{group}").shuffle(order)
        for i, entity in enumerate(order):
            held = i < TEST_PER_GROUP + VALIDATION_PER_GROUP
            split_of[entity] = ("test" if i < TEST_PER_GROUP else "validation") if held else "train"
    return split_of


def read_aspects(path: Path = ASPECTS) -> dict[str, list[dict[str, str]]]:
    """The aspect pairs, entity by entity, in the TSV's order."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    entities: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        entities.setdefault(row["entity"], []).append(row)
    return entities


def aspect_rows(seed: int = SEED) -> list[dict[str, str]]:
    """Every aspect pair as a row of the embedded file, entity by entity."""
    aspects = read_aspects()
    groups: dict[str, list[str]] = {}
    for entity, items in aspects.items():
        groups.setdefault(items[0]["group"], []).append(entity)
    split_of = entity_splits(groups, seed)
    keys = ("question", "answer")
    return [
        {**{k: item[k] for k in keys}, "topic": entity, "split": split_of[entity]}
        for entity, items in aspects.items()
        for item in items
    ]


def build_text(current: str) -> str:
    """The file's new text: its rows that are not aspect rows, then the aspect rows."""
    rows = aspect_rows()
    entities = {row["topic"] for row in rows}
    kept = [line for line in current.splitlines() if json.loads(line)["topic"] not in entities]
    new = [json.dumps(row, ensure_ascii=False) for row in rows]
    return "\n".join(kept + new) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=FILE)
    parser.add_argument("--check", action="store_true", help="only check that it is up to date")
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    text = build_text(current)
    if args.check:
        print("up to date" if text == current else f"{args.path} is stale: rerun without --check")
        return 0 if text == current else 1
    args.path.write_text(text, encoding="utf-8")
    print(f"wrote {args.path}: {text.count(chr(10))} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
