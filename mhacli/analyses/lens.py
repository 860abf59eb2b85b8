"""The logit lens (`mha lens`): the final norm and the unembedding applied to the residual stream after every layer.

Layer -1 is the embeddings (the stream entering layer 0), then 0..n_layer-1 after each block. At every position the
residual is normalised by the model's own final norm at its own scale (not frozen: each layer's stream read as if it
were the last), times the output head, plus its bias where there is one; float32 as the model computes its logits, so
the last layer's distribution is the model's own. Probabilities from a log-softmax over the whole vocabulary (float64
sums); the rank of a token is 1 + the number of tokens with a larger logit. Pure NumPy, no I/O.

Memory: the logits of POS_BLOCK positions at a time, [POS_BLOCK, vocab] float32; nothing of size [layers, n_seq,
vocab] is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mhacli.analyses.attribute import top_k, unembed_bias
from mhacli.analyses.loss import output_head, soft_cap
from mhacli.analyses.readout import check_position
from mhacli.engine.attention import DISCARD
from mhacli.engine.blocks import Params
from mhacli.engine.forward import embed, final_norm, forward
from mhacli.errors import UsageError

POS_BLOCK = 256  # positions whose logits are held at once


@dataclass(frozen=True)
class LensCell:
    """One layer at one position: the top-k next tokens with their probabilities, and the actual next token's."""

    pos: int
    top_ids: list[int]
    top_probs: list[float]
    next_id: int | None  # None at the last position
    next_prob: float | None
    next_rank: int | None  # 1: the most likely token


@dataclass(frozen=True)
class Lens:
    """Every layer (-1: the embeddings) at every requested position."""

    positions: list[int]
    layers: list[tuple[int, list[LensCell]]]  # (layer, one cell per position)


def read_out(
    h: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    targets: Sequence[int | None],
    k: int,
    cap: float | None = None,
) -> list[tuple[list[int], list[float], float | None, int | None]]:
    """Final-normed rows h [n, n_embd] -> per row (top ids, their probs, the target's prob and rank).

    `cap`: the model's final logit soft-cap (Gemma 2), applied as the model applies it."""
    logits = h @ w.T  # [n, vocab] float32, as the model's own logits
    if bias is not None:
        logits = (logits + bias).astype(np.float32)
    logits = soft_cap(logits, cap)
    out: list[tuple[list[int], list[float], float | None, int | None]] = []
    for row, target in zip(logits, targets, strict=True):
        row64 = row.astype(np.float64)
        top = float(row64.max())
        lse = top + float(np.log(np.exp(row64 - top).sum()))
        ids = top_k(row, k)
        probs = [float(np.exp(row64[i] - lse)) for i in ids]
        if target is None:
            out.append(([int(i) for i in ids], probs, None, None))
        else:
            rank = 1 + int(np.count_nonzero(row > row[target]))
            out.append(([int(i) for i in ids], probs, float(np.exp(row64[target] - lse)), rank))
    return out


def lens(params: Params, ids: np.ndarray, top: int = 5, positions: Sequence[int] | None = None) -> Lens:
    """The logit lens of `ids` at `positions` (default every one; negative counts from the end), `top` tokens each."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    if top < 1:
        raise UsageError(f"{{top}} {top} must be at least 1", params=("top",))
    chosen = sorted({check_position(p, n) for p in positions}) if positions is not None else list(range(n))
    w = output_head(params)
    bias = unembed_bias(params)
    cap = params.config.logit_softcap
    k = min(top, w.shape[0])
    targets: list[int | None] = [int(ids[p + 1]) if p + 1 < n else None for p in chosen]

    def cells(x: np.ndarray) -> list[LensCell]:
        found: list[LensCell] = []
        for a in range(0, len(chosen), POS_BLOCK):
            rows = chosen[a : a + POS_BLOCK]
            h = final_norm(params, x[rows])  # [block, n_embd] the model's own final norm, each row at its scale
            block = targets[a : a + POS_BLOCK]
            for p, t, (t_ids, t_probs, prob, rank) in zip(
                rows, block, read_out(h, w, bias, block, k, cap), strict=True
            ):
                found.append(LensCell(p, t_ids, t_probs, t, prob, rank))
        return found

    layers = [(-1, cells(embed(params, ids)))]
    for trace in forward(params, ids, sinks=lambda _: DISCARD):
        layers.append((trace.layer, cells(trace.residual)))
    return Lens(chosen, layers)
