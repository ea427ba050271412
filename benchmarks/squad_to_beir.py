"""Write SQuAD v1.1 as a BEIR folder: the command-line path a user takes on BEIR data.

One passage per paragraph (``corpus.jsonl``, titled by its article), one query per question
(``queries.jsonl``), and ``qrels/train.tsv`` / ``qrels/test.tsv`` split by article: every
``--test-every``-th article is a test article, so no test paragraph is trained on.

    python benchmarks/squad_to_beir.py ../shared/data/squad-v1.1/dev-v1.1.json runs/squad-beir
    python -m qa_lib train --data runs/squad-beir --split train --out runs/beir
    python -m qa_lib evaluate --model runs/beir --data runs/squad-beir --split test --bm25
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_beir(squad: dict, out: Path, test_every: int = 5) -> dict[str, int]:
    """Write ``squad`` (a parsed SQuAD json) into the BEIR folder ``out``; returns the counts."""
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    for a, article in enumerate(squad["data"]):
        split = "test" if a % test_every == 0 else "train"
        for p, paragraph in enumerate(article["paragraphs"]):
            doc = f"d{a}_{p}"
            title = article["title"].replace("_", " ")
            corpus.append({"_id": doc, "title": title, "text": paragraph["context"]})
            for qa in paragraph["qas"]:
                queries.append({"_id": qa["id"], "text": qa["question"]})
                qrels[split].append(f"{qa['id']}\t{doc}\t1")
    for name, rows in (("corpus", corpus), ("queries", queries)):
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (out / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    for split, rows in qrels.items():
        text = "query-id\tcorpus-id\tscore\n" + "".join(row + "\n" for row in rows)
        (out / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return {"passages": len(corpus), **{f"{k} queries": len(v) for k, v in qrels.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("squad", type=Path, help="a SQuAD v1.1 json file")
    parser.add_argument("out", type=Path, help="the BEIR folder to write")
    parser.add_argument("--test-every", type=int, default=5, help="every n-th article is test")
    args = parser.parse_args()
    squad = json.loads(args.squad.read_text(encoding="utf-8"))
    print(write_beir(squad, args.out, args.test_every))


if __name__ == "__main__":
    main()
