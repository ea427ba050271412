"""qa_lib: train two BERT encoders for question-answer retrieval, and measure them honestly.

Typical use::

    from qa_lib import DualEncoder, TrainConfig, evaluate, fit, load_pairs

    train, test = load_pairs("default", "train"), load_pairs("default", "test")
    model = DualEncoder.from_config()
    history = fit(model, train, config=TrainConfig(num_epochs=1))
    print(evaluate(model, test))
"""

from __future__ import annotations

__version__ = "0.1.0"

from qa_lib.config import EncoderConfig, TrainConfig, preset
from qa_lib.data import Pairs, load_pairs, split_pairs
from qa_lib.encoders import DualEncoder
from qa_lib.errors import QAError
from qa_lib.evaluate import demo_scores, evaluate
from qa_lib.experiments import VARIANTS, train_variant
from qa_lib.hybrid import hybrid_scores, tune_lexical_weight
from qa_lib.index import build_index, open_index, search
from qa_lib.losses import in_batch_loss
from qa_lib.metrics import METRIC_KEYS, metrics_from_scores
from qa_lib.train import History, fit

__all__ = [
    "METRIC_KEYS",
    "VARIANTS",
    "DualEncoder",
    "EncoderConfig",
    "History",
    "Pairs",
    "QAError",
    "build_index",
    "TrainConfig",
    "demo_scores",
    "evaluate",
    "fit",
    "hybrid_scores",
    "in_batch_loss",
    "load_pairs",
    "metrics_from_scores",
    "open_index",
    "preset",
    "search",
    "split_pairs",
    "train_variant",
    "tune_lexical_weight",
]
