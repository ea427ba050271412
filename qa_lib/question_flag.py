"""The question flag (notebook 03): the answer tower marks question-shaped texts as such.

Taught in section 9 of notebook 03. A dual encoder scores ``q_emb · a_emb``. A question's own text,
read by the answer tower (its *echo*), shares every word with the question, so a tower that ranks
by topic ranks the echo first. The flag is one more embedding column: questions carry a constant
1 there and every passage a penalty that grows with the probability that it is a question, so

    score(q, a) = cosine(q, a) - penalty(p_question(a))

It is a query-independent prior on the answer side, learned from the training questions and
answers (the echoes are its positives, the answers its negatives) and from one *form view* per pair
that length cannot label (:func:`qa_lib.batching.form_views`: answer sentences as long as a
question, questions in the other style or closed by a full stop, FAQ-style answers, questions
after a sentence). It flags
question-shaped passages too, so it suits question → answer search, not a search for similar
questions.
Training uses the smooth ``-p`` for the detector's loss; search uses a ramp from 0 at p = 0.5 to
-1 at p = 1 (:func:`search_column`).
"""

from __future__ import annotations

import torch
from torch import nn

from qa_lib.errors import QAError

FLAG_FEATURES = ("mean", "mean+ends", "mean+first+last")  # EncoderConfig.flag_features


def flag_features(hidden: torch.Tensor, attention_mask: torch.Tensor, kind: str) -> torch.Tensor:
    """What the detector reads of the answer tower's middle layer.

    Args:
        hidden: the middle layer's token vectors. Shape (batch, seq, hidden).
        attention_mask: 1 for real tokens. Shape (batch, seq).
        kind: "mean", the mean over the tokens (qa_lib 0.1); "mean+ends", that mean beside the
            vectors of ``[CLS]`` and the final ``[SEP]`` (question flag v2 and v3);
            "mean+first+last" (the default), the mean beside ``[CLS]`` and the text's own last
            token before ``[SEP]``: how the text begins and how it ends, its closing word or
            punctuation (a question asked after a statement ends as a question; an answer after
            its restated question ends as an answer).

    Returns:
        Shape (batch, hidden) or (batch, 3 * hidden).
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if kind == "mean":
        return mean
    last = attention_mask.sum(1).long() - (1 if kind == "mean+ends" else 2)
    ends = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp(min=0)]
    return torch.cat([mean, hidden[:, 0], ends], dim=-1)


class QuestionFlag(nn.Module):
    """A linear question detector on the answer tower's middle layer (:func:`flag_features`).

    The middle layer still shows the surface form of a text (an interrogative, word order); the
    last layer's meaning-based vectors tell questions from answers much worse. The detector
    starts at zero (p = 0.5 everywhere: undecided, it flags nothing) and sends no gradients back:
    the towers are trained by the in-batch loss alone.
    """

    def __init__(self, hidden_size: int, features: str = "mean+first+last"):
        super().__init__()
        if features not in FLAG_FEATURES:
            raise QAError(f"unknown flag_features {features!r}: use one of {FLAG_FEATURES}")
        self.probe = nn.Linear(hidden_size * (1 if features == "mean" else 3), 1)
        nn.init.zeros_(self.probe.weight)
        nn.init.zeros_(self.probe.bias)

    def forward(self, middle: torch.Tensor) -> torch.Tensor:
        """The flag column, in [-1, 0]: minus the probability that the text is a question.

        Args:
            middle: :func:`flag_features` of the answer tower's middle layer. Shape (batch, f).

        Returns:
            Shape (batch, 1), fp32.
        """
        with torch.autocast(middle.device.type, enabled=False):  # fp32: bf16 rounds p to 1 early
            return -torch.sigmoid(self.probe(middle.detach().float()))


def flag_layer(num_layers: int, depth: float) -> int:
    """The hidden layer the detector reads (0 = the token embeddings), at ``depth`` of the stack."""
    return max(1, min(num_layers, round(depth * num_layers)))


# search: no penalty up to the first probability, all of 1 at the second
FLAG_RAMP = (0.5, 1.0)


def search_column(column: torch.Tensor, ramp: tuple[float, float] = FLAG_RAMP) -> torch.Tensor:
    """The flag as search uses it: 0 for a likely answer, -1 for a sure question, a ramp between.

    With ``p`` the detector's probability (``column = -p``), the penalty is 0 for ``p <= 0.5``,
    so answers (and every text, while the detector is untrained and undecided) keep the order of
    the towers' cosines exactly, without the detector's small doubts added; it grows linearly to
    1 at ``p = 1``, so a text the detector is sure about (p > 0.99 for echoes, once trained) ranks
    below every answer of similar cosine, and a text near the threshold loses a little: rounding
    that moves ``p`` by 0.01 moves its score by 0.02, never by a whole point.

    Args:
        column: the training column, ``-p``. Shape (n,).
        ramp: the probabilities where the penalty starts and where it is full.

    Returns:
        The search column, in [-1, 0]. Shape (n,).
    """
    low, high = ramp
    return -((-column - low) / (high - low)).clamp(0.0, 1.0)


def flag_loss(answer_column: torch.Tensor, echo_column: torch.Tensor) -> torch.Tensor:
    """Teach the detector that answers are answers and echoed questions are questions.

    The column is ``-p``; this is the binary cross-entropy of ``p`` (answers: 0, echoes: 1),
    the two sides weighted equally.

    Args:
        answer_column: the flag column of texts that are answers: the batch's answers, and the
            answer-like form views (:func:`qa_lib.batching.form_views`). Shape (n_answers,).
        echo_column: the flag column of texts that are questions, read by the answer tower: the
            batch's questions, and the question-like form views. Shape (n_questions,).

    Returns:
        A scalar; ``ln 2`` for a detector that cannot tell them apart (p = 0.5 everywhere).
    """
    tiny = 1e-7
    p_answer = (-answer_column).clamp(tiny, 1 - tiny)
    p_echo = (-echo_column).clamp(tiny, 1 - tiny)
    return -(torch.log1p(-p_answer).mean() + torch.log(p_echo).mean()) / 2


def flag_column(model, a_emb: torch.Tensor) -> torch.Tensor | None:
    """The question flag's search column of answer-tower embeddings (None: the model has none).

    Args:
        model: the dual encoder that made ``a_emb``.
        a_emb: answer-tower embeddings, the search column (in [-1, 0]) last. Shape (n, dim).

    Returns:
        The column: 0 unflagged, -1 fully flagged. Shape (n,).
    """
    return a_emb[:, -1] if getattr(model, "has_question_flag", False) else None


def flag_rate(column: torch.Tensor | None) -> float:
    """The share of texts the flag penalises at all (search column below 0: p > 0.5)."""
    return 0.0 if column is None or not len(column) else (column < 0).double().mean().item()
