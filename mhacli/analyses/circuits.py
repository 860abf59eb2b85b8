"""Heads read from their weights alone: QK and OV circuits, composition scores and copying scores. Pure NumPy.

Row-vector convention (x W, as TransformerLens): query head h of a layer has W_Q, W_K, W_V [n_embd, d_head] (on
grouped or multi-query models, W_K and W_V of the K/V head it reads) and W_O [d_head, n_embd], its rows of the
output projection. Its QK circuit is W_QK = W_Q W_Kᵀ, its OV circuit W_OV = W_V W_O; neither [n_embd, n_embd]
product is ever formed, and neither is a [vocab, vocab] matrix:

- composition of an earlier head h1 into a later head h2 (Elhage et al. 2021): ‖W_OV(h1) R‖_F / (‖W_OV(h1)‖_F
  ‖R‖_F), R = W_QK(h2) (Q), W_QK(h2)ᵀ (K), W_OV(h2) (V). A product A B with A [n_embd, d] and B [d, n_embd] has
  the Frobenius norm of R_A B, A = Q_A R_A with Q_A's columns orthonormal and R_A [d, d] (R_Aᵀ R_A = Aᵀ A, from
  the [d, d] Gram matrix), and likewise on the right; so every score is the norm of a [d_head, d_head] product of
  "cores" (R_A(h1) W_O(h1)) (W(h2) R_B(h2)ᵀ), computed for all pairs of a later layer with one matrix product.
  Exact, in float64.
- the baseline: the mean score of BASELINE_SAMPLES pairs of random products of the same shapes and rank
  ([n_embd, d_head] times [d_head, n_embd], entries standard normal, seeded with (BASELINE_SEED, mode index)).
  A composition score means little without it: for random factors it is close to 1 / sqrt(n_embd) (the expected
  squares are n_embd³ d_head² over (n_embd² d_head)²), whatever d_head.
- copying (Elhage et al.): Re(Σλ) / Σ|λ| over the eigenvalues λ of the full OV circuit W_E W_OV W_U
  [vocab, vocab], which are (its nonzero ones) those of the [d_head, d_head] matrix W_O (W_U W_E) W_V; W_U W_E
  [n_embd, n_embd] is summed once over blocks of the vocabulary. W_U is the output head (tied: W_Eᵀ).
- what a head reads and writes in tokens: the leading singular directions of the full OV circuit W_E W_OV W_U
  (attend to token a, raise token b) and of the full QK circuit W_E W_QK W_Eᵀ (query token a, key token b), from
  the [d_head, d_head] core of each factorisation (Gram matrices of the factors over the vocabulary); the i-th
  pair is the largest entry σ_i u_i[a] v_i[b] of the i-th singular term.

Weights are the checkpoint's own (raw) unless `fold_ln`: then, as TransformerLens' default weight processing
(fold_ln, center_writing_weights, center_unembed), each layer's attention norm gain is folded into W_Q, W_K, W_V
and the final norm's into W_U; on LayerNorm models the reading weights are centred over n_embd (LayerNorm removes
the mean) and so are the writing weights W_O and W_E; W_U is centred over the vocabulary. OLMo's QK-norm gains are
always folded into W_Q and W_K (its per-vector RMS scale, positive, is not linear and is left out). Positions
(learned or rotary) are not part of these circuits, as in TransformerLens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from mhacli.analyses import readout
from mhacli.analyses.heads import check_selection
from mhacli.engine.arch.common import Projection, norm_gain
from mhacli.engine.blocks import Params
from mhacli.engine.forward import family
from mhacli.errors import ModelError, UsageError

MODES = ("Q", "K", "V")
BASELINE_SEED = 0
BASELINE_SAMPLES = 64
VOCAB_BLOCK = 8192  # vocabulary rows per block of the sums over the vocabulary
RANK_RTOL = 1e-10  # a factor's Gram eigenvalue below this times the largest is a direction it does not have


# --- the factors of every head -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Factors:
    """Every query head's W_Q, W_K, W_V [n_embd, d_head] and W_O [d_head, n_embd], float64, heads flattened.

    Index i = layer * n_head + head; on grouped K/V heads each query head holds its K/V head's W_K and W_V."""

    n_layer: int
    n_head: int
    kv_head: tuple[int, ...]  # [n_head] the K/V head each query head of a layer reads
    w_q: np.ndarray  # [n_layer * n_head, n_embd, d_head]
    w_k: np.ndarray
    w_v: np.ndarray
    w_o: np.ndarray  # [n_layer * n_head, d_head, n_embd]

    @property
    def layers(self) -> np.ndarray:
        """[n_layer * n_head] the layer of each flattened head."""
        return np.repeat(np.arange(self.n_layer), self.n_head)


def _reads(proj: Projection, p: dict[str, np.ndarray]) -> np.ndarray:
    """A head's slice of a q/k/v projection, as the row-vector factor [n_embd, d_head], float64."""
    w = p[proj.weight]
    sliced = w[:, proj.start : proj.end] if proj.in_out else w[proj.start : proj.end].T
    return sliced.astype(np.float64)


def _writes(out: Projection, p: dict[str, np.ndarray], head: int, d_head: int) -> np.ndarray:
    """A head's part of the output projection, [d_head, n_embd] float64 (its inputs are the concatenated heads)."""
    w = p[out.weight]
    r0, r1 = head * d_head, (head + 1) * d_head
    return (w[r0:r1] if out.in_out else w[:, r0:r1].T).astype(np.float64)


def _fold_reading(w: np.ndarray, p: dict[str, np.ndarray], norm: tuple | None, offset: float = 0.0) -> np.ndarray:
    """[n_embd, d_head]: the attention norm's gain folded in; LayerNorm's: centred over n_embd too.

    The gain is the weight plus the family's NORM_GAIN_OFFSET (Gemma: 1 + weight)."""
    if norm is None:
        return w
    kind, weight, _ = norm
    w = w * (p[weight].astype(np.float64) + offset)[:, None]
    return w - w.mean(axis=0, keepdims=True) if kind == "layer_norm" else w


def layer_factors(
    p: dict[str, np.ndarray], params: Params, fold_ln: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One layer's (W_Q, W_K, W_V [n_head, n_embd, d_head], W_O [n_head, d_head, n_embd]), float64."""
    c = params.config
    arch = family(c)
    d = c.d_head
    qs, ks, vs, os_ = [], [], [], []
    out = arch.out_projection(c)
    for h in range(c.n_head):
        proj = arch.head_projections(c, h)
        q, k, v = (_reads(proj[name], p) for name in "qkv")
        if arch.QK_NORM is not None:  # RMSNorm over the projection or each head: its gain, per feature, is linear
            g, offset = c.kv_head(h), arch.NORM_GAIN_OFFSET
            q = q * norm_gain(p[arch.QK_NORM[0]], h * d, (h + 1) * d, offset).astype(np.float64)
            k = k * norm_gain(p[arch.QK_NORM[1]], g * d, (g + 1) * d, offset).astype(np.float64)
        o = _writes(out, p, h, d)
        if fold_ln:
            q, k, v = (_fold_reading(w, p, arch.ATTENTION_NORM, arch.NORM_GAIN_OFFSET) for w in (q, k, v))
            if arch.FINAL_NORM[0] == "layer_norm":
                o = o - o.mean(axis=1, keepdims=True)
        qs.append(q)
        ks.append(k)
        vs.append(v)
        os_.append(o)
    return np.stack(qs), np.stack(ks), np.stack(vs), np.stack(os_)


def head_factors(params: Params, *, fold_ln: bool = False) -> Factors:
    """Every head's factors, read layer by layer from the checkpoint (raw, or folded as the module says)."""
    c = params.config
    parts = [layer_factors(params.layer(layer), params, fold_ln) for layer in range(c.n_layer)]
    w_q, w_k, w_v, w_o = (np.concatenate([part[i] for part in parts]) for i in range(4))
    kv = tuple(c.kv_head(h) for h in range(c.n_head))
    return Factors(c.n_layer, c.n_head, kv, w_q, w_k, w_v, w_o)


# --- composition scores ----------------------------------------------------------------------------------------


def _r_factor(a: np.ndarray) -> np.ndarray:
    """[n, n_embd, d] -> R [n, d, d] with Rᵀ R = aᵀ a, so ‖a M‖_F = ‖R M‖_F for every M.

    From the eigendecomposition of the [d, d] Gram matrix (R = Λ^½ Vᵀ): one batched product and d x d
    eigenproblems, where a QR of each [n_embd, d] factor costs ten times as much here."""
    lam, vec = np.linalg.eigh(a.transpose(0, 2, 1) @ a)  # [n, d], [n, d, d]
    return np.sqrt(np.clip(lam, 0.0, None))[:, :, None] * vec.transpose(0, 2, 1)


def left_cores(w_v: np.ndarray, w_o: np.ndarray) -> np.ndarray:
    """W_OV = W_V W_O with W_V's orthonormal factor dropped: [n, n_embd, d] x [n, d, n_embd] -> [n, d, n_embd].

    W_V = Q R (Q orthonormal columns, R [d, d]): ‖W_OV M‖_F = ‖R W_O M‖_F for every M."""
    return _r_factor(w_v) @ w_o


def right_cores(a: np.ndarray, b_t: np.ndarray) -> np.ndarray:
    """A Bᵀ with B's orthonormal factor dropped: a, b_t [n, n_embd, d] -> [n, n_embd, d].

    B = Q R (Q orthonormal columns): ‖M A Bᵀ‖_F = ‖M A Rᵀ‖_F for every M."""
    return a @ _r_factor(b_t).transpose(0, 2, 1)


def mode_cores(f: Factors, mode: str) -> np.ndarray:
    """The right-hand matrix of `mode` for every head as a core [n, n_embd, d_head]: R = A Bᵀ."""
    if mode == "Q":  # W_QK = W_Q W_Kᵀ
        return right_cores(f.w_q, f.w_k)
    if mode == "K":  # W_QKᵀ = W_K W_Qᵀ
        return right_cores(f.w_k, f.w_q)
    if mode == "V":  # W_OV = W_V W_O = W_V (W_Oᵀ)ᵀ
        return right_cores(f.w_v, f.w_o.transpose(0, 2, 1))
    raise UsageError(f"{{mode}} {mode!r} is not one of Q, K, V", params=("mode",))


def pair_norms(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """‖left[i] @ right[j]‖_F for every pair: left [n1, d, n_embd], right [n2, n_embd, d] -> [n1, n2].

    One [n1 * d, n2 * d] matrix product; each d x d block's norm."""
    n1, d1, e = left.shape
    n2, _, d2 = right.shape
    prod = left.reshape(n1 * d1, e) @ right.transpose(1, 0, 2).reshape(e, n2 * d2)  # [n1 * d1, n2 * d2]
    return np.sqrt(np.square(prod.reshape(n1, d1, n2, d2)).sum(axis=(1, 3)))


def composition_scores(f: Factors, mode: str) -> np.ndarray:
    """[n_layer, n_head, n_layer, n_head]: score of head (l1, h1) into head (l2, h2) for l1 < l2; NaN elsewhere."""
    left = left_cores(f.w_v, f.w_o)  # [n, d, n_embd]
    right = mode_cores(f, mode)  # [n, n_embd, d]
    l_norm = np.sqrt(np.square(left).sum(axis=(1, 2)))  # [n] ‖W_OV(h1)‖_F
    r_norm = np.sqrt(np.square(right).sum(axis=(1, 2)))  # [n] ‖R(h2)‖_F
    nh = f.n_head
    scores = np.full((f.n_layer * nh, f.n_layer * nh), np.nan)
    for l2 in range(1, f.n_layer):
        later = slice(l2 * nh, (l2 + 1) * nh)
        norms = pair_norms(left[: l2 * nh], right[later])  # [l2 * n_head, n_head]
        with np.errstate(divide="ignore", invalid="ignore"):  # a head with zero weights scores NaN
            scores[: l2 * nh, later] = norms / l_norm[: l2 * nh, None] / r_norm[None, later]
    return scores.reshape(f.n_layer, nh, f.n_layer, nh)


def baseline(mode: str, n_embd: int, d_head: int, samples: int = BASELINE_SAMPLES, seed: int = BASELINE_SEED) -> float:
    """The mean composition score of `samples` pairs of random [n_embd, d_head] x [d_head, n_embd] products.

    Entries standard normal, drawn from numpy's default_rng((seed, index of mode in MODES))."""
    rng = np.random.default_rng((seed, MODES.index(mode)))
    total = 0.0
    for _ in range(samples):
        a1, a2, b2 = (rng.standard_normal((1, n_embd, d_head)) for _ in range(3))
        b1 = rng.standard_normal((1, d_head, n_embd))
        left, right = left_cores(a1, b1), right_cores(a2, b2)
        total += float(pair_norms(left, right)[0, 0] / np.linalg.norm(left) / np.linalg.norm(right))
    return total / samples


# --- the vocabulary side: W_E and W_U ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocab:
    """W_E and the output head as stored ([vocab, n_embd] each; head None: no output head) and how they are folded.

    `center`: W_E and W_U centred over n_embd (LayerNorm models, fold_ln); `gain`: the final norm's gain folded
    into W_U; `center_vocab`: W_U centred over the vocabulary (TransformerLens' center_unembed)."""

    embed: np.ndarray  # [vocab, n_embd] W_E
    head: np.ndarray | None  # [vocab, n_embd] W_Uᵀ (tied: the embedding); None: the checkpoint has none
    gain: np.ndarray | None = None  # [n_embd]
    center: bool = False
    center_vocab: bool = False
    head_mean: np.ndarray | None = field(default=None, repr=False)  # [n_embd] over the vocabulary, once folded

    def _embed_rows(self, s: slice) -> np.ndarray:
        e = self.embed[s].astype(np.float64)
        return e - e.mean(axis=1, keepdims=True) if self.center else e

    def _head_rows(self, s: slice, with_mean: bool = True) -> np.ndarray:
        assert self.head is not None  # callers ask only when there is a head
        u = self.head[s].astype(np.float64)
        if self.gain is not None:
            u = u * self.gain.astype(np.float64)
        if self.center:
            u = u - u.mean(axis=1, keepdims=True)
        if with_mean and self.head_mean is not None:
            u = u - self.head_mean
        return u

    def blocks(self) -> Iterator[tuple[slice, np.ndarray, np.ndarray | None]]:
        """(rows, W_E rows [b, n_embd], W_U columns as rows [b, n_embd] or None), float64, folded."""
        n = self.embed.shape[0]
        for start in range(0, n, VOCAB_BLOCK):
            s = slice(start, min(n, start + VOCAB_BLOCK))
            yield s, self._embed_rows(s), None if self.head is None else self._head_rows(s)


def vocab_side(params: Params, *, fold_ln: bool = False, need_head: bool = True) -> Vocab:
    """W_E and the output head of `params`, folded as the module says; a ModelError if a needed head is missing."""
    c = params.config
    arch = family(c)
    embed = params.get(arch.EMBEDDING)
    head: np.ndarray | None = None
    if need_head:
        if c.tie_word_embeddings:
            head = embed
        elif arch.LM_HEAD in getattr(params, "tensors", {}):
            head = params.get(arch.LM_HEAD)
        else:
            raise ModelError(
                "this checkpoint has no lm_head.weight and does not tie it to the embeddings (a base model without "
                "its output head): the copying scores and OV token pairs need it; {no_unembed} reports the rest "
                "(composition scores, QK token pairs)",
                params=("no_unembed",),
            )
    if not fold_ln:
        return Vocab(embed, head)
    kind, weight, _ = arch.FINAL_NORM
    gain = readout.norm_gain(params, params.get(weight))  # Gemma's final norm scales by 1 + weight
    # W_U centred over the vocabulary shifts every logit of a position equally: nothing changes after a softmax, but
    # a soft-cap (Gemma 2) is not shift-invariant, so soft-capped models keep W_U as it is (TransformerLens too)
    center_vocab = c.logit_softcap is None
    v = Vocab(embed, head, gain, center=kind == "layer_norm", center_vocab=center_vocab)
    if head is None or not center_vocab:
        return v
    total = np.zeros(embed.shape[1])
    for start in range(0, head.shape[0], VOCAB_BLOCK):
        total += v._head_rows(slice(start, start + VOCAB_BLOCK), with_mean=False).sum(axis=0)
    return Vocab(embed, head, v.gain, v.center, True, total / head.shape[0])


@dataclass(frozen=True)
class Grams:
    """Sums over the vocabulary, [n_embd, n_embd] float64: W_Eᵀ W_E, W_U W_Uᵀ and W_U W_E (None without a head)."""

    embed: np.ndarray
    head: np.ndarray | None
    head_embed: np.ndarray | None


def grams(vocab: Vocab) -> Grams:
    e = vocab.embed.shape[1]
    g_e = np.zeros((e, e))
    g_u = None if vocab.head is None else np.zeros((e, e))
    m = None if vocab.head is None else np.zeros((e, e))
    for _, emb, head in vocab.blocks():
        g_e += emb.T @ emb
        if head is not None and g_u is not None and m is not None:
            g_u += head.T @ head
            m += head.T @ emb
    return Grams(g_e, g_u, m)


def copying_scores(f: Factors, g: Grams) -> np.ndarray:
    """[n_layer, n_head] Re(Σλ) / Σ|λ| of each full OV circuit W_E W_OV W_U, from W_O (W_U W_E) W_V [d, d]."""
    assert g.head_embed is not None  # callers check the head first (vocab_side)
    eig = full_ov_eigenvalues(f, g)  # [n, d_head]
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = eig.real.sum(axis=1) / np.abs(eig).sum(axis=1)
    return scores.reshape(f.n_layer, f.n_head)


def full_ov_eigenvalues(f: Factors, g: Grams) -> np.ndarray:
    """[n, d_head] complex: the eigenvalues of W_O (W_U W_E) W_V, the nonzero spectrum of W_E W_OV W_U."""
    assert g.head_embed is not None
    return np.linalg.eigvals(f.w_o @ g.head_embed @ f.w_v)


def ov_eigenvalues(f: Factors) -> np.ndarray:
    """[n, d_head] complex: the eigenvalues of W_O W_V, the nonzero spectrum of each OV circuit W_V W_O."""
    return np.linalg.eigvals(f.w_o @ f.w_v)


def qk_eigenvalues(f: Factors) -> np.ndarray:
    """[n, d_head] complex: the eigenvalues of W_Kᵀ W_Q, the nonzero spectrum of each QK circuit W_Q W_Kᵀ."""
    return np.linalg.eigvals(f.w_k.transpose(0, 2, 1) @ f.w_q)


# --- token pairs from the leading singular directions -----------------------------------------------------------


@dataclass(frozen=True)
class TokenPair:
    """One singular term's largest entry: token `first` (attended to / query) and `second` (written / key)."""

    first: int
    second: int
    value: float  # σ_i u_i[first] v_i[second]
    singular_value: float


def _whiten(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Gram matrix Xᵀ X [d, d] -> (R [k, d] with Rᵀ R = Xᵀ X, W [d, k] with X W orthonormal), k = its rank."""
    lam, vec = np.linalg.eigh(gram)
    keep = lam > RANK_RTOL * max(float(lam.max(initial=0.0)), np.finfo(float).tiny)
    lam, vec = lam[keep], vec[:, keep]
    root = np.sqrt(lam)
    return root[:, None] * vec.T, vec / root


def leading_directions(
    a: np.ndarray, gram_a: np.ndarray, b_t: np.ndarray, gram_b: np.ndarray, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top singular directions of X A (Y B)ᵀ for vocabulary maps X, Y, from A, B [n_embd, d] and the Grams.

    gram_a = (X A)ᵀ X A, gram_b = (Y B)ᵀ Y B [d, d]. Returns (σ [k], P [n_embd, k], Q [n_embd, k]): the left
    singular vectors are X P, the right ones Y Q (unit vectors over the vocabulary)."""
    r_a, w_a = _whiten(a.T @ gram_a @ a)
    r_b, w_b = _whiten(b_t.T @ gram_b @ b_t)
    u, s, vt = np.linalg.svd(r_a @ r_b.T)  # X A Bᵀ Yᵀ = (X A W_a)(R_a R_bᵀ)(Y B W_b)ᵀ
    k = min(top, int((s > RANK_RTOL * max(float(s.max(initial=0.0)), np.finfo(float).tiny)).sum()))
    return s[:k], a @ w_a @ u[:, :k], b_t @ w_b @ vt[:k].T


@dataclass
class _Extremes:
    """Running max/argmax and min/argmin of every column of X V over the vocabulary blocks."""

    hi: np.ndarray
    hi_at: np.ndarray
    lo: np.ndarray
    lo_at: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Extremes:
        z = np.zeros(n, dtype=np.int64)
        return cls(np.full(n, -np.inf), z, np.full(n, np.inf), z.copy())

    def update(self, block: np.ndarray, start: int) -> None:
        if not block.size:
            return
        hi_at, lo_at = block.argmax(axis=0), block.argmin(axis=0)
        cols = np.arange(block.shape[1])
        hi, lo = block[hi_at, cols], block[lo_at, cols]
        self.hi_at = np.where(hi > self.hi, hi_at + start, self.hi_at)
        self.hi = np.maximum(hi, self.hi)
        self.lo_at = np.where(lo < self.lo, lo_at + start, self.lo_at)
        self.lo = np.minimum(lo, self.lo)


def token_pairs(
    f: Factors, vocab: Vocab, g: Grams, heads: Sequence[int], top: int
) -> tuple[list[list[TokenPair]], list[list[TokenPair]]]:
    """Per flattened head index in `heads`: (OV pairs: attend, write), (QK pairs: query, key), `top` each at most.

    OV pairs are empty without an output head. One pass over the vocabulary reads every head's directions."""
    directions = []  # (σ, vectors read by W_E [n_embd, k], vectors read by the head side [n_embd, k], by W_U?)
    for i in heads:
        if g.head is not None:
            s, p, q = leading_directions(f.w_v[i], g.embed, f.w_o[i].T, g.head, top)
            directions.append((s, p, q, True))
        s, p, q = leading_directions(f.w_q[i], g.embed, f.w_k[i], g.embed, top)
        directions.append((s, p, q, False))
    e = vocab.embed.shape[1]
    read_e = np.concatenate(
        [np.zeros((e, 0))] + [p for _, p, _, _ in directions] + [q for _, _, q, by_u in directions if not by_u], 1
    )
    read_u = np.concatenate([np.zeros((e, 0))] + [q for _, _, q, by_u in directions if by_u], axis=1)
    on_e, on_u = _Extremes.empty(read_e.shape[1]), _Extremes.empty(read_u.shape[1])
    for s_, emb, head in vocab.blocks():
        on_e.update(emb @ read_e, s_.start)
        if head is not None:
            on_u.update(head @ read_u, s_.start)
    ov: list[list[TokenPair]] = []
    qk: list[list[TokenPair]] = []
    n_p = sum(p.shape[1] for _, p, _, _ in directions)
    at_p, at_qe, at_qu = 0, n_p, 0
    for s, p, q, by_u in directions:
        k = len(s)
        first = range(at_p, at_p + k)
        if by_u:
            ov.append(_pairs(s, on_e, first, on_u, range(at_qu, at_qu + k)))
            at_qu += k
        else:
            qk.append(_pairs(s, on_e, first, on_e, range(at_qe, at_qe + k)))
            at_qe += k
        at_p += k
    if g.head is None:
        ov = [[] for _ in heads]
    return ov, qk


def _pairs(s: np.ndarray, first: _Extremes, cols_a: range, second: _Extremes, cols_b: range) -> list[TokenPair]:
    """For each singular term i: its largest entry, max u · max v or min u · min v (columns cols_a[i], cols_b[i])."""
    pairs = []
    for i, (ca, cb) in enumerate(zip(cols_a, cols_b, strict=True)):
        if first.hi[ca] * second.hi[cb] >= first.lo[ca] * second.lo[cb]:
            a, b, value = first.hi_at[ca], second.hi_at[cb], first.hi[ca] * second.hi[cb]
        else:
            a, b, value = first.lo_at[ca], second.lo_at[cb], first.lo[ca] * second.lo[cb]
        pairs.append(TokenPair(int(a), int(b), float(s[i] * value), float(s[i])))
    return pairs


# --- everything, for a selection of heads ----------------------------------------------------------------------


@dataclass(frozen=True)
class HeadCircuit:
    layer: int
    head: int
    kv_head: int
    copying: float | None  # None: no output head (or a head with zero OV circuit)
    ov_top: list[TokenPair]  # attend -> write
    qk_top: list[TokenPair]  # query -> key


@dataclass(frozen=True)
class Circuits:
    """Composition scores of the requested modes, their baselines, and the selected heads' circuits."""

    fold_ln: bool
    modes: tuple[str, ...]
    scores: dict[str, np.ndarray]  # mode -> [n_layer, n_head, n_layer, n_head], NaN where not earlier -> later
    baseline: dict[str, float]
    heads: list[HeadCircuit]
    selected: np.ndarray  # [n_layer, n_head] bool: the heads asked for

    def pairs(self, mode: str) -> list[tuple[int, int, int, int, float]]:
        """Every earlier -> later pair with a selected end, largest score first.

        Rows (from layer, from head, to layer, to head, score)."""
        s = self.scores[mode]
        rows = []
        for l1, h1, l2, h2 in zip(*np.nonzero(~np.isnan(s)), strict=True):
            if self.selected[l1, h1] or self.selected[l2, h2]:
                rows.append((int(l1), int(h1), int(l2), int(h2), float(s[l1, h1, l2, h2])))
        return sorted(rows, key=lambda r: (-r[4], r[:4]))


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    """The requested modes in MODES' order, each once; a UsageError for an unknown one or none."""
    if not modes:
        raise UsageError("{mode}: none given; ask for one or more of Q, K, V", params=("mode",))
    for m in modes:
        if m not in MODES:
            raise UsageError(f"{{mode}} {m!r} is not one of Q, K, V", params=("mode",))
    return tuple(m for m in MODES if m in modes)


def circuits(
    params: Params,
    *,
    modes: Sequence[str] = MODES,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    top: int = 3,
    fold_ln: bool = False,
    unembed: bool = True,
) -> Circuits:
    """Composition scores, baselines, copying scores and token pairs, from the weights alone.

    Composition: every earlier -> later pair (`Circuits.pairs` keeps those with an end in `layers` x `heads`);
    copying scores and token pairs: the heads in `layers` x `heads` (None: all). `unembed=False`: the output head
    is not read (no copying scores, no OV pairs)."""
    c = params.config
    modes = check_modes(modes)
    check_selection(c.n_layer, c.n_head, layers, heads)
    if top < 0:
        raise UsageError(f"{{top}} {top} is negative", params=("top",))
    vocab = vocab_side(params, fold_ln=fold_ln, need_head=unembed)
    f = head_factors(params, fold_ln=fold_ln)
    selected = np.zeros((c.n_layer, c.n_head), dtype=bool)
    selected[np.ix_(list(layers or range(c.n_layer)), list(heads or range(c.n_head)))] = True
    scores = {m: composition_scores(f, m) for m in modes}
    base = {m: baseline(m, c.n_embd, c.d_head) for m in modes}
    g = grams(vocab)
    copying = copying_scores(f, g) if g.head is not None else None
    chosen = [int(i) for i in np.flatnonzero(selected.reshape(-1))]
    ov, qk = token_pairs(f, vocab, g, chosen, top) if top else ([[] for _ in chosen], [[] for _ in chosen])
    circuits_ = []
    for n, i in enumerate(chosen):
        layer, head = divmod(i, c.n_head)
        cs = None if copying is None or np.isnan(copying[layer, head]) else float(copying[layer, head])
        circuits_.append(HeadCircuit(layer, head, c.kv_head(head), cs, ov[n], qk[n]))
    return Circuits(fold_ln, modes, scores, base, circuits_, selected)
