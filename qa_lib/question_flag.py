"""The question flag (notebook 03): the answer tower marks question-shaped texts as such.

Taught in section 9 of notebook 03. A dual encoder scores ``q_emb · a_emb``. A question's own text,
read by the answer tower (its *echo*), shares every word with the question, so a tower that ranks
by topic ranks the echo first. The flag is one more embedding column: questions carry a constant
1 there and every passage carries minus the probability that it is a question, so

    score(q, a) = cosine(q, a) - p_question(a)

It is a query-independent prior on the answer side, learned from the training questions and
answers (the echoes are its positives, the answers its negatives); it flags question-shaped
passages too, so it suits question → answer search. Training uses the smooth ``-p`` for the
detector's loss; search uses the hard flag (-1 or 0, :func:`harden`).
"""

from __future__ import annotations

import torch
from torch import nn


class QuestionFlag(nn.Module):
    """A linear question detector on the answer tower's mean-pooled middle layer.

    The middle layer still shows the surface form of a text (an interrogative, word order); the
    last layer's meaning-based vectors tell questions from answers much worse. The detector
    starts at zero (p = 0.5 everywhere: undecided, it flags nothing) and sends no gradients back:
    the towers are trained by the in-batch loss alone.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.probe = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.probe.weight)
        nn.init.zeros_(self.probe.bias)

    def forward(self, middle: torch.Tensor) -> torch.Tensor:
        """The flag column, in [-1, 0]: minus the probability that the text is a question.

        Args:
            middle: the answer tower's mean-pooled middle layer. Shape (batch, hidden).

        Returns:
            Shape (batch, 1), fp32.
        """
        with torch.autocast(middle.device.type, enabled=False):  # fp32: bf16 rounds p to 1 early
            return -torch.sigmoid(self.probe(middle.detach().float()))


def flag_layer(num_layers: int, depth: float) -> int:
    """The hidden layer the detector reads (0 = the token embeddings), at ``depth`` of the stack."""
    return max(1, min(num_layers, round(depth * num_layers)))


def harden(column: torch.Tensor) -> torch.Tensor:
    """The flag as search uses it: -1 for a text the detector calls a question, else 0.

    A text flagged as a question loses 1 from every score, so it ranks below every real answer
    of similar cosine, and the answers themselves keep the order of the towers' cosines exactly,
    without the detector's small doubts added to it.
    """
    return -(column < -0.5).to(column.dtype)


def flag_loss(answer_column: torch.Tensor, echo_column: torch.Tensor) -> torch.Tensor:
    """Teach the detector that answers are answers and echoed questions are questions.

    The column is ``-p``; this is the binary cross-entropy of ``p`` (answers: 0, echoes: 1),
    the two sides weighted equally.

    Args:
        answer_column: the flag column of the batch's answers. Shape (n_answers,).
        echo_column: the flag column of the batch's questions read by the answer tower.
            Shape (batch,).

    Returns:
        A scalar; ``ln 2`` for a detector that cannot tell them apart (p = 0.5 everywhere).
    """
    tiny = 1e-7
    p_answer = (-answer_column).clamp(tiny, 1 - tiny)
    p_echo = (-echo_column).clamp(tiny, 1 - tiny)
    return -(torch.log1p(-p_answer).mean() + torch.log(p_echo).mean()) / 2


def flagged(model, a_emb: torch.Tensor) -> torch.Tensor | None:
    """Which answer-tower embeddings carry the question flag (None: the model has no flag).

    Args:
        model: the dual encoder that made ``a_emb``.
        a_emb: answer-tower embeddings, the hard flag (-1 or 0) in the last column.
            Shape (n, dim).

    Returns:
        True where flagged. Shape (n,).
    """
    return a_emb[:, -1] < 0 if getattr(model, "has_question_flag", False) else None
