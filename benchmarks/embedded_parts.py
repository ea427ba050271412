"""Recall@1 of the factoid and aspect parts of the embedded test split, untrained vs trained.

Each part is ranked against its own answers. Pass the folders of trained towers to compare with the
untrained ones (README, The embedded dataset):

    python benchmarks/embedded_parts.py runs/demo/best
"""

import sys

from make_default_pairs import read_aspects  # benchmarks/: the aspect pairs' one reader

from qa_lib import DualEncoder, EncoderConfig, evaluate, load_pairs
from qa_lib.data import default_data_path


def test_parts() -> dict:
    """The embedded test split's factoid and aspect pairs (by topic: an aspect entity or not)."""
    test = load_pairs(str(default_data_path()), "test")
    aspects = set(read_aspects())
    return {
        "factoid": test.select(i for i, g in enumerate(test.groups) if g not in aspects),
        "aspect": test.select(i for i, g in enumerate(test.groups) if g in aspects),
    }


def main(folders: list[str]) -> None:
    parts = test_parts()
    models = {"untrained": DualEncoder.from_config(EncoderConfig())}
    models.update({folder: DualEncoder.load(folder) for folder in folders})
    for name, model in models.items():
        model.eval()
        for part, pairs in parts.items():
            recall = evaluate(model, pairs)["recall@1"]
            print(f"{name:40s} {part:8s} n={len(pairs):4d} recall@1 {recall:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
