"""Check an export against the sentence-transformers on sys.path (one the suite does not test).

PYTHONPATH=/tmp/st500:. .venv/bin/python benchmarks/st_compat.py
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import sentence_transformers as st

from qa_lib import DualEncoder, EncoderConfig
from qa_lib.export import export_model

TINY = (
    ("hidden_size", 32),
    ("num_hidden_layers", 2),
    ("num_attention_heads", 2),
    ("intermediate_size", 64),
)
BASE = EncoderConfig(pretrained=False, model_overrides=TINY, max_q_len=24, max_a_len=48)
QUESTIONS = ["who wrote hamlet", "what is the tallest mountain in the world " * 6]
ANSWERS = ["William Shakespeare wrote Hamlet.", "Mount Everest is the tallest mountain. " * 12]
VARIANTS = [{}, {"proj_dim": 8}, {"tied": True}]
VARIANTS.append({"normalize": False, "pooling": "cls", "proj_dim": 8})


def largest_difference(changes: dict, folder: Path) -> float:
    model = DualEncoder.from_config(replace(BASE, **changes), seed=0)
    model.save(folder / "model")
    export_model(folder / "model", folder / "st", "sentence-transformers")
    model.precision = "fp32"
    loaded = st.SentenceTransformer(str(folder / "st"), device="cpu")
    width = model.dim - model.has_question_flag
    q = loaded.encode_query(QUESTIONS, convert_to_tensor=True)
    a = loaded.encode_document(ANSWERS, convert_to_tensor=True)
    return max(
        (q - model.encode_questions(QUESTIONS)[:, :width]).abs().max().item(),
        (a - model.encode_answers(ANSWERS)[:, :width]).abs().max().item(),
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        worst = max(largest_difference(c, Path(tmp) / str(i)) for i, c in enumerate(VARIANTS))
    print(f"sentence-transformers {st.__version__}: largest difference {worst:.2e}")
