"""The peer systems the benchmarks measure qa_lib against, as small adapters over qa_lib itself.

BM25 is :func:`qa_lib.evaluate.bm25_metrics`; a sentence-transformers model is
wrapped as an encoder (:class:`STEncoder`) and measured by :func:`qa_lib.evaluate.evaluate`, so
every system is ranked and summarised by the same code. ``st_model`` and ``train_mnrl`` build and
fine-tune the sentence-transformers model for both benchmarks (quality.py and throughput.py).

Heavy packages are imported inside the functions: a throughput worker that runs none of these
loads none of them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence


class STEncoder:
    """A sentence-transformers model as :func:`qa_lib.evaluate.evaluate` reads an encoder.

    One shared tower and cosine scores (normalised embeddings): a question's echo is its own
    text encoded as a document, and no question flag.
    """

    def __init__(self, model):
        self.model = model

    def encode_questions(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False):
        """Normalised embeddings on the CPU. Shape (len(texts), dim)."""
        return self.model.encode(
            list(texts),
            convert_to_tensor=True,
            normalize_embeddings=True,
            batch_size=batch_size,
            show_progress_bar=progress,
        ).cpu()

    encode_answers = encode_questions  # one tower


def st_model(model_dir: str, max_seq_length: int, device: str):
    """A sentence-transformers model over ``model_dir``'s transformer with mean pooling."""
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(model_dir, max_seq_length=max_seq_length)
    pooling = models.Pooling(word.get_word_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[word, pooling], device=device)


def train_mnrl(model, questions, answers, callbacks=None, **arguments) -> None:
    """Fine-tune ``model`` on the pairs with MultipleNegativesRankingLoss (in-batch negatives).

    Args:
        model: a sentence-transformers model (see :func:`st_model`).
        questions: the anchors.
        answers: their positives.
        callbacks: ``transformers.TrainerCallback`` objects (timers), or None.
        **arguments: ``SentenceTransformerTrainingArguments`` besides the shared ones (10%
            warm-up, nothing saved or reported, no progress bars, a last partial batch dropped).
    """
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    with tempfile.TemporaryDirectory() as tmp:
        args = SentenceTransformerTrainingArguments(
            output_dir=tmp,
            warmup_ratio=0.1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_drop_last=True,
            **arguments,
        )
        data = Dataset.from_dict({"anchor": list(questions), "positive": list(answers)})
        loss = losses.MultipleNegativesRankingLoss(model)
        trainer = SentenceTransformerTrainer(
            model=model, args=args, train_dataset=data, loss=loss, callbacks=callbacks
        )
        trainer.train()
