"""Next-token loss in NumPy: the output head and a log-softmax streamed over the vocabulary. Pure, float32.

The output head is the input embedding when the model ties them (`tie_word_embeddings`, GPT-2's default), else
the checkpoint's own `lm_head.weight` [vocab_size, n_embd]; either way logits = final_norm(x) @ W^T, soft-capped to
cap * tanh(logits / cap) where the model caps them (Gemma 2: config.logit_softcap, as its *ForCausalLM does). The
log-softmax runs over row blocks of W (VOCAB_BLOCK tokens at a time) with a running maximum and sum of
exponentials, so GPT-2 XL's 50,257 x 1,600 head at T = 1,024 never needs the whole [T, vocab] logits matrix.

Loss, as in the contract: the mean over target positions t >= max(1, loss_from) of -ln p(t_t | t_<t), token-weighted
over texts (sums and counts here; callers divide once).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mhacli.engine.blocks import F32, Params
from mhacli.engine.forward import family, final_norm
from mhacli.errors import ModelError, UsageError

VOCAB_BLOCK = 8192  # output-head rows per logits block: [n_targets, 8192] float32 at a time


def output_head(params: Params) -> np.ndarray:
    """[vocab_size, n_embd] float32: the tied input embedding, or the untied lm_head.weight."""
    c = params.config
    arch = family(c)
    if c.tie_word_embeddings:
        return params.get(arch.EMBEDDING)
    if arch.LM_HEAD not in getattr(params, "tensors", {}):
        raise ModelError(
            "this checkpoint has no lm_head.weight and does not tie it to the embeddings (a base model without its "
            "output head): the loss needs the output head"
        )
    return params.get(arch.LM_HEAD)


def first_target(n_seq: int, loss_from: int = 1) -> int:
    """The first scored position, max(1, loss_from); a UsageError when no position is left to score."""
    start = max(1, loss_from)
    if n_seq < 2:
        raise UsageError("the text is one token long: there is no next token to score (the loss needs at least two)")
    if start >= n_seq:
        raise UsageError(
            f"{{loss_from}} {loss_from} is past the text: it has tokens 0..{n_seq - 1}, so nothing is scored",
            params=("loss_from",),
        )
    return start


def soft_cap(logits: np.ndarray, cap: float | None) -> np.ndarray:
    """cap * tanh(logits / cap) in place (float32, HF's order: divide, tanh, multiply); logits themselves for None."""
    if cap is not None:
        logits /= F32(cap)
        np.tanh(logits, out=logits)
        logits *= F32(cap)
    return logits


def logsumexp_rows(h: np.ndarray, w: np.ndarray, block: int = VOCAB_BLOCK, cap: float | None = None) -> np.ndarray:
    """h [n, n_embd], w [vocab, n_embd] -> [n] float32 ln sum_v exp(h . w_v), streamed over blocks of w's rows.

    `cap`: each logit soft-capped first (soft_cap)."""
    n = h.shape[0]
    running_max = np.full(n, -np.inf, dtype=F32)
    running_sum = np.zeros(n, dtype=F32)
    for a in range(0, w.shape[0], block):
        logits = soft_cap(h @ w[a : a + block].T, cap)  # [n, block]
        new_max = np.maximum(running_max, logits.max(axis=1))
        running_sum *= np.exp(running_max - new_max)
        logits -= new_max[:, None]
        np.exp(logits, out=logits)
        running_sum += logits.sum(axis=1)
        running_max = new_max
    return running_max + np.log(running_sum)


def token_losses(
    h: np.ndarray, w: np.ndarray, targets: np.ndarray, block: int = VOCAB_BLOCK, cap: float | None = None
) -> np.ndarray:
    """h [n, n_embd] final-normed states of the predicting positions, targets [n] ids -> [n] float32 -ln p(target)."""
    target_logits = soft_cap(np.einsum("ne,ne->n", h, w[targets]), cap)  # [n]
    return logsumexp_rows(h, w, block, cap) - target_logits


def text_losses(
    params: Params, residual: np.ndarray, ids: np.ndarray, loss_from: int = 1, w: np.ndarray | None = None
) -> np.ndarray:
    """The last layer's residual stream [n_seq, n_embd] -> the losses of targets t >= max(1, loss_from), [n_targets].

    A batch of variants [B, n_seq, n_embd] -> [B, n_targets] (scored_losses: the output head one GEMM per block)."""
    return scored_losses(params, residual, np.asarray(ids), scored_positions([len(ids)], loss_from), w)


def scored_positions(lengths: Sequence[int], loss_from: int = 1) -> np.ndarray:
    """The positions whose next token is scored, in texts of these lengths laid end to end (a pack, or one text).

    Each text's t - 1 for its targets t >= max(1, loss_from), in its own coordinates: [n_targets] int64, in order;
    a UsageError when a text has no target (first_target)."""
    out, offset = [], 0
    for n in lengths:
        out.append(np.arange(offset + first_target(n, loss_from) - 1, offset + n - 1, dtype=np.int64))
        offset += n
    return np.concatenate(out)


def scored_losses(
    params: Params, residual: np.ndarray, ids: np.ndarray, scored: np.ndarray, w: np.ndarray | None = None
) -> np.ndarray:
    """-ln p(next token) at the `scored` positions (scored_positions) of ids [n_seq].

    residual: the last layer's stream [n_seq, n_embd] -> [n_targets], or a batch of variants' [B, n_seq, n_embd]
    -> [B, n_targets] (the output head one GEMM per block over every variant's rows)."""
    w = output_head(params) if w is None else w
    n_embd = residual.shape[-1]
    h = final_norm(params, residual[..., scored, :]).reshape(-1, n_embd)  # position t - 1 predicts token t
    targets = np.tile(ids[scored + 1], h.shape[0] // len(scored))
    losses = token_losses(h, w, targets, cap=params.config.logit_softcap)
    return losses if residual.ndim == 2 else losses.reshape(residual.shape[0], -1)


def logits(params: Params, residual: np.ndarray) -> np.ndarray:
    """[n_seq, n_embd] -> [n_seq, vocab_size] float32, the whole matrix (for `verify` against HF's)."""
    return soft_cap(final_norm(params, residual) @ output_head(params).T, params.config.logit_softcap)
