"""Reading the residual stream out as a prediction: the final norm frozen at its real scale, and the metrics.

Shared by direct logit attribution and the logit lens (`attribute`, `lens`) and by patching (`patch`). Pure NumPy,
no I/O. Computed in float64 from the float32 forward, so sums of many components close to ~1e-12 relative.

The final norm is frozen at the real residual x of each position (its scale, and for LayerNorm its mean, are
constants taken from x), which makes it affine in what is written into the residual stream:

    LayerNorm:  norm(v) = (v - mean(v)) * s * g + b,   s = 1 / sqrt(var(x) + eps)
    RMSNorm:    norm(v) = v * s * g,                   s = 1 / sqrt(mean(x^2) + eps)

with g the family's effective gain (the checkpoint's weight, or 1 + weight where a family stores it that way: the
family's NORM_GAIN_OFFSET). Since x is the sum of every component's write, the frozen norm of
x equals the sum of the frozen norms of the components plus the bias: direct logit attribution's completeness.
`FrozenNorm(x)` equals the family's own final_norm(x) (a test checks it for every family).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mhacli.analyses.loss import logsumexp_rows, output_head, text_losses
from mhacli.engine.blocks import Params
from mhacli.engine.forward import family, final_norm
from mhacli.errors import UsageError

F64 = np.float64

# The metrics of a prediction at one position, as `patch --metric` names them (`logit` is attribution's without a
# wrong token).
METRICS = ("logit_diff", "logprob", "prob", "loss")


@dataclass(frozen=True)
class FrozenNorm:
    """The final norm frozen at real residuals: an affine map per position, float64.

    center: LayerNorm subtracts the mean of what it reads; RMSNorm does not.
    scale: [n] 1/σ (LayerNorm) or 1/rms (RMSNorm) of the real residual at each position, eps included.
    gain: [n_embd] the effective gain; bias: [n_embd] or None.
    """

    center: bool
    scale: np.ndarray
    gain: np.ndarray
    bias: np.ndarray | None

    def linear(self, v: np.ndarray) -> np.ndarray:
        """A component's write v [..., n, n_embd] at the frozen positions -> its share of the normed output.

        No bias: the sum over components of linear(v) plus `bias` is the normed residual."""
        v = np.asarray(v, dtype=F64)
        if self.center:
            v = v - v.mean(axis=-1, keepdims=True)
        return v * self.scale[:, None] * self.gain

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The whole normed output of x [n, n_embd] (at the frozen scale)."""
        out = self.linear(x)
        return out if self.bias is None else out + self.bias


def norm_gain(params: Params, weight: np.ndarray) -> np.ndarray:
    """A norm's effective gain [n_embd] float64: its stored weight plus the family's NORM_GAIN_OFFSET (Gemma: 1 + w)."""
    return weight.astype(F64) + family(params.config).NORM_GAIN_OFFSET


def freeze_final_norm(params: Params, x: np.ndarray) -> FrozenNorm:
    """The final norm frozen at the real residuals x [n, n_embd] (the last layer's output at those positions)."""
    kind, weight, bias = family(params.config).FINAL_NORM
    x = np.asarray(x, dtype=F64)
    center = kind == "layer_norm"
    xc = x - x.mean(axis=-1, keepdims=True) if center else x
    scale = 1.0 / np.sqrt(np.square(xc).mean(axis=-1) + params.config.norm_eps)
    return FrozenNorm(
        center, scale, norm_gain(params, params.get(weight)), None if bias is None else params.get(bias).astype(F64)
    )


def check_position(pos: int, n_seq: int, param: str = "pos") -> int:
    """A position in a text of n_seq tokens (negative counts from the end) -> 0..n_seq-1; a UsageError outside."""
    if not -n_seq <= pos < n_seq:
        raise UsageError(
            f"{{{param}}} {pos} is outside the text: it has {n_seq} tokens (positions 0..{n_seq - 1}, or -1..-{n_seq} "
            "from the end)",
            params=(param,),
        )
    return pos % n_seq


def check_answer_pair(answer: int, wrong: int | None, vocab_size: int) -> None:
    """The answer and wrong token ids are in the vocabulary and differ (UsageErrors naming `answer` / `wrong`)."""
    for name, token in (("answer", answer), ("wrong", wrong)):
        if token is not None and not 0 <= token < vocab_size:
            raise UsageError(
                f"{{{name}}} token id {token} is outside the vocabulary (0..{vocab_size - 1})", params=(name,)
            )
    if wrong is not None and wrong == answer:
        raise UsageError(
            f"{{wrong}} is the same token as {{answer}} (id {answer}): the logit difference would be 0 by definition",
            params=("answer", "wrong"),
        )


def logit_direction(head: np.ndarray, answer: int, wrong: int | None = None) -> np.ndarray:
    """The unembedding direction of the metric, [n_embd] float64: W_U[answer], minus W_U[wrong] when given."""
    d = head[answer].astype(F64)
    return d if wrong is None else d - head[wrong].astype(F64)


def metric(
    params: Params,
    residual: np.ndarray,
    ids: np.ndarray,
    kind: str,
    answer: int,
    wrong: int | None = None,
    *,
    pos: int = -1,
    head: np.ndarray | None = None,
) -> float:
    """One metric of the prediction at `pos` from the last layer's residual stream [n_seq, n_embd], as a float.

    logit_diff: logit(answer) - logit(wrong) (the answer's logit when wrong is None); logprob: ln p(answer);
    prob: p(answer); loss: the text's mean next-token loss (every target position; answer and wrong unused).
    Logits are the model's own: soft-capped where the model caps them (so, there, not linear in the residual).
    """
    if kind not in METRICS:
        raise UsageError(f"unknown {{metric}} {kind!r}: one of {', '.join(METRICS)}", params=("metric",))
    head = output_head(params) if head is None else head
    if kind == "loss":
        return float(text_losses(params, residual, np.asarray(ids), 1, head).astype(F64).mean())
    cap = params.config.logit_softcap
    h = final_norm(params, residual[[pos]])  # [1, n_embd]
    tokens = [answer] if wrong is None else [answer, wrong]
    logits = h[0].astype(F64) @ head[tokens].astype(F64).T
    if cap is not None:
        logits = cap * np.tanh(logits / cap)
    if kind == "logit_diff":
        return float(logits[0] - (0.0 if wrong is None else logits[1]))
    logprob = float(logits[0]) - float(logsumexp_rows(h, head, cap=cap)[0])
    return logprob if kind == "logprob" else float(np.exp(logprob))
