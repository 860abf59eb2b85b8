"""One head's computation for one query token, step by step, with the real numbers. Pure NumPy; no I/O.

The steps are computed the way they are written on paper, one query vector at a time: the attention input at each
token (LN(x_j) for GPT-2 and GPTBigCode, RMS(x_j) for Llama and Mistral, x_j itself for OLMo), q_I from this
query head's slice of the query projection, k_j and v_j from the slices of the K/V head it reads (GQA/MQA: shared
with the other query heads of its group), QK-norm (OLMo's over the whole projection, Gemma 3's per head), RoPE as
explicit rotations of coordinate pairs by position x frequency, the scores q_I . k_j over the visible keys (j <= I,
and within the sliding window where the layer has one), scaled and, where the layer caps them (Gemma 2), soft-capped
to cap * tanh(scaled / cap), their softmax, the weighted sum of the values, then every head's output at
token I concatenated and projected by the output projection. None of this goes through the batched code: the
family's `block`, the very function the forward runs (its attention kernel, mhacli.engine.attention), is run afterwards
on the whole text and every intermediate it computed is compared with the steps: the explanation doubles as a
check of the forward.

Shapes: n_key = query_index + 1 keys up to the query (those outside a sliding window get weight 0); vectors are
float32 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mhacli.analyses.heads import check_selection
from mhacli.config import ModelConfig, RopeConfig
from mhacli.engine.arch.common import Projection, norm_gain
from mhacli.engine.arch.rope import inv_freq
from mhacli.engine.blocks import F32, Params, merge_heads
from mhacli.engine.forward import embed, family, forward
from mhacli.errors import UsageError

# The step-by-step numbers match the batched forward when every difference is within this, per unit of
# max(1, max |reference|): both are float32, summed in different orders, so they agree to rounding only.
MATCH_RTOL = 1e-4


def resolve_query(query: int | None, n_seq: int) -> int:
    """The query: None is the last token, negative counts from the end; out of range is a UsageError."""
    if query is None:
        return n_seq - 1
    if not -n_seq <= query < n_seq:
        raise UsageError(
            f"{{query}} {query} is out of range: the text has tokens 0..{n_seq - 1} (or -{n_seq}..-1)",
            params=("query",),
        )
    return query + n_seq if query < 0 else query


# --- the steps, one vector at a time ----------------------------------------------------------------------------


def layer_norm_vector(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float
) -> tuple[np.ndarray, np.float32, np.float32]:
    """[n_embd] -> ([n_embd], mean, biased variance): (x - mean) / sqrt(var + eps) * w + b"""
    mean = x.mean()
    var = np.square(x - mean).mean()
    return (x - mean) / np.sqrt(var + F32(eps)) * w + b, mean, var


def rms_norm_vector(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.float32]:
    """[n] -> ([n], mean square): x / sqrt(mean(x^2) + eps) * w (w: the gain, 1 + weight for Gemma)"""
    mean_square = np.square(x).mean()
    return x / np.sqrt(mean_square + F32(eps)) * w, mean_square


@dataclass(frozen=True)
class RopeStep:
    """The rotations of one layer at positions 0..I:

    coordinate c of a head is paired with c + d_head/2, and the pair at position j turned by the angle j *
    inv_freq[c] (then scaled by attention_scaling, 1 but for yarn and longrope)."""

    rope_type: str
    rope_theta: float
    inv_freq: np.ndarray  # [d_head // 2]
    attention_scaling: float
    angles: np.ndarray  # [n_key, d_head // 2] position j x inv_freq

    @property
    def cos(self) -> np.ndarray:
        """[n_key, d_head], as HF's rotary embedding returns it (both halves, scaled)"""
        c = np.cos(self.angles) * F32(self.attention_scaling)
        return np.concatenate([c, c], axis=-1)

    @property
    def sin(self) -> np.ndarray:
        s = np.sin(self.angles) * F32(self.attention_scaling)
        return np.concatenate([s, s], axis=-1)

    @property
    def rotary_dim(self) -> int:
        """How many values of a head are rotated (the first ones): d_head, fewer with partial rotary (GPT-NeoX)."""
        return 2 * len(self.inv_freq)

    def rotate(self, x: np.ndarray, positions: np.ndarray | int) -> np.ndarray:
        """x [d_head] at one position, or [n, d_head] at n positions -> the same vectors, each pair rotated.

        Coordinate c < rotary_dim / 2 is paired with c + rotary_dim / 2; values past rotary_dim pass unchanged."""
        half = self.rotary_dim // 2
        a, b, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
        cos = np.cos(self.angles[positions]) * F32(self.attention_scaling)
        sin = np.sin(self.angles[positions]) * F32(self.attention_scaling)
        return np.concatenate([a * cos - b * sin, b * cos + a * sin, rest], axis=-1)


def rope_step(rope: RopeConfig, config: ModelConfig, n_key: int, n_seq: int) -> RopeStep:
    """Positions 0..n_key-1 of a text of n_seq tokens (longrope and dynamic choose their frequencies by n_seq)."""
    inv, scaling = inv_freq(rope, config.rotary_dim, config.n_positions, n_seq)
    angles = np.arange(n_key, dtype=F32)[:, None] * inv[None, :]
    return RopeStep(rope.rope_type, rope.rope_theta, inv, scaling, angles)


@dataclass(frozen=True)
class QKNormStep:
    """q_norm and k_norm: RMSNorms over the whole q_proj / k_proj output, or over each head's values.

    OLMo's cover every head, before the slices; Gemma 3's and Qwen 3's (per_head) each head's d_head values, one
    weight shared by every head."""

    q_weight: str
    k_weight: str
    query_rms: float  # sqrt(mean(q^2) + eps) of the normalised values (the whole q_proj(x_I), or this head's)
    key_rms: np.ndarray  # [n_key] the same for each key's k_proj(x_j) (whole, or its K/V head's slice)
    per_head: bool = False  # True: each head's q and k normalised on their own, before RoPE


@dataclass(frozen=True)
class HeadStep:
    """One head at one query token: the query, the keys and values up to it, scores, weights and output."""

    query: np.ndarray  # [d_head] as scored (after RoPE where the model has it)
    keys: np.ndarray  # [n_key, d_head] as scored
    values: np.ndarray  # [n_key, d_head]
    scores: np.ndarray  # [n_key] q . k_j
    scaled_scores: np.ndarray  # [n_key] scale * q . k_j
    attention: np.ndarray  # [n_key] softmax over the visible keys, 0 outside the window
    output: np.ndarray  # [d_head] sum_j a_j v_j
    query_pre_rope: np.ndarray | None = None  # [d_head] before the rotation (None: no RoPE)
    keys_pre_rope: np.ndarray | None = None  # [n_key, d_head]
    capped_scores: np.ndarray | None = None  # [n_key] cap * tanh(scaled / cap), what the softmax reads (None: no cap)


def qk_norm_per_head(p: dict[str, np.ndarray], qk_norm: tuple[str, str], d_head: int) -> bool:
    """Whether q_norm's weight is one head's (Qwen 3: RMSNorm over each head) rather than the whole projection's.

    (OLMo: over every head at once.) With one head the two are the same computation."""
    return p[qk_norm[0]].shape[0] == d_head


def project_qk(
    a_rows: np.ndarray,
    p: dict[str, np.ndarray],
    proj: dict[str, Projection],
    qk_norm: tuple[str, str] | None,
    eps: float,
    offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, float | None, np.ndarray | None]:
    """a_rows [n_key, n_in] -> (q [d_head] at the last row, k [n_key, d_head], q's rms, the keys' rms) before RoPE.

    With QK-norm over the whole projection (OLMo), the whole q_proj / k_proj output of a row is normalised first, then
    the head's slice taken; with a per-head one (a weight of d_head values: Gemma 3, Qwen 3), the head's slice is
    normalised on its own. The gain is the weight plus the family's `offset` (NORM_GAIN_OFFSET: Gemma 1, Qwen 0).
    """
    q, k = proj["q"], proj["k"]
    if qk_norm is None:
        return q.apply(a_rows[-1:], p)[0], k.apply(a_rows, p), None, None
    if qk_norm_per_head(p, qk_norm, q.end - q.start):  # per head: each head's d_head values normalised on their own
        q_head, k_head = q.apply(a_rows[-1:], p)[0], k.apply(a_rows, p)  # [d_head], [n_key, d_head]
        q_rms1 = np.sqrt(np.square(q_head).mean() + F32(eps))
        k_rms1 = np.sqrt(np.square(k_head).mean(axis=-1) + F32(eps))  # [n_key]
        query = q_head / q_rms1 * norm_gain(p[qk_norm[0]], q.start, q.end, offset)
        keys = k_head / k_rms1[:, None] * norm_gain(p[qk_norm[1]], k.start, k.end, offset)
        return query, keys, float(q_rms1), k_rms1
    q_all = Projection(q.weight, q.bias, 0, p[q.weight].shape[0], q.in_out).apply(a_rows[-1:], p)[
        0
    ]  # [n_head * d_head]
    k_all = Projection(k.weight, k.bias, 0, p[k.weight].shape[0], k.in_out).apply(
        a_rows, p
    )  # [n_key, n_kv_head * d_head]
    q_rms = np.sqrt(np.square(q_all).mean() + F32(eps))
    k_rms = np.sqrt(np.square(k_all).mean(axis=-1) + F32(eps))  # [n_key]
    query = q_all[q.start : q.end] / q_rms * norm_gain(p[qk_norm[0]], q.start, q.end, offset)
    keys = k_all[:, k.start : k.end] / k_rms[:, None] * norm_gain(p[qk_norm[1]], k.start, k.end, offset)
    return query, keys, float(q_rms), k_rms


def head_step(
    a_rows: np.ndarray,
    p: dict[str, np.ndarray],
    proj: dict[str, Projection],
    scale: float,
    *,
    qk_norm: tuple[str, str] | None = None,
    eps: float = 0.0,
    rope: RopeStep | None = None,
    window: int | None = None,
    offset: float = 0.0,
    softcap: float | None = None,
) -> HeadStep:
    """a_rows [n_key, n_in] -> this head's step.

    a_rows is the attention input at tokens 0..I; the last row is the query token."""
    n_key = len(a_rows)
    query, keys, _, _ = project_qk(a_rows, p, proj, qk_norm, eps, offset)  # [d_head], [n_key, d_head]
    values = proj["v"].apply(a_rows, p)  # [n_key, d_head]
    pre_q = pre_k = None
    if rope is not None:
        pre_q, pre_k = query, keys
        query, keys = rope.rotate(query, n_key - 1), rope.rotate(keys, np.arange(n_key))
    scores = np.array([np.dot(query, k) for k in keys], dtype=F32)  # [n_key]
    scaled = scores * F32(scale)
    capped = None if softcap is None else np.tanh(scaled / F32(softcap)) * F32(softcap)  # [n_key]
    logits = scaled if capped is None else capped
    visible = np.ones(n_key, dtype=bool) if window is None else np.arange(n_key) > n_key - 1 - window
    e = np.exp(logits[visible] - logits[visible].max())  # keys j > I are not here at all: the causal mask
    attention = np.zeros(n_key, dtype=F32)
    attention[visible] = e / e.sum()
    output = (attention[:, None] * values).sum(axis=0)  # [d_head]
    return HeadStep(query, keys, values, scores, scaled, attention, output, pre_q, pre_k, capped)


# --- the explanation ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    layer: int
    head: int
    kv_head: int  # the K/V head this query head reads
    query_index: int
    token_id: int  # the query token's id
    n_seq: int
    n_head: int
    n_kv_head: int
    d_head: int
    n_embd: int
    model_type: str
    scale: float
    scale_attn_weights: bool
    scale_attn_by_inverse_layer_idx: bool
    layer_norm_epsilon: float  # the epsilon of the norm before attention (or of OLMo's QK-norm)
    norm_gain_offset: float  # the norms' gain is weight + this (Gemma: 1)
    softcap: float | None  # attention logit soft-cap of this layer (Gemma 2); None: not capped
    norm: str | None  # "layer_norm", "rms_norm", or None (OLMo: no norm before attention)
    norm_weight: str | None  # e.g. h.0.ln_1.weight, layers.0.input_layernorm.weight
    layer_prefix: str  # h.0. / layers.0.: the projections' keys are relative to it
    projections: dict[str, Projection]  # q (this query head), k and v (its K/V head)
    projections_note: str  # the family's sentence introducing them (not in the JSON)
    out_projection: Projection
    input: np.ndarray  # [n_embd] residual stream entering the layer at the query token
    embed_scale: float  # layer 0 of a rotary model: input = embedding row x this (Gemma: sqrt(n_embd)); else 1
    ln_mean: float | None  # LayerNorm's mean (None for RMSNorm and OLMo)
    ln_var: float | None  # LayerNorm's variance; RMSNorm's mean square
    ln_input: np.ndarray  # [n_embd] what the projections read at the query token
    qk_norm: QKNormStep | None
    rope: RopeStep | None
    window: int | None  # this layer's sliding window (None: every earlier key is visible)
    step: HeadStep  # this head
    heads_output: np.ndarray  # [n_head, d_head] every head's output at the query token
    concat: np.ndarray  # [n_head * d_head] heads_output concatenated
    head_share: np.ndarray  # [n_embd] this head's part of the projection: z_H @ W_O[rows of head H]
    output: np.ndarray  # [n_embd] concat @ W_O + b_O
    diffs: dict[str, float]  # max |step-by-step - batched forward| per quantity
    bounds: dict[str, float]  # the allowed difference per quantity (MATCH_RTOL * max(1, max |reference|))

    @property
    def columns(self) -> dict[str, tuple[int, int]]:
        """The feature ranges [start, end) of q, k and v (columns of GPT-2's c_attn, rows of nn.Linear weights)."""
        return {k: (p.start, p.end) for k, p in self.projections.items()}

    @property
    def head_rows(self) -> tuple[int, int]:
        """This head's rows of the output projection's weight, and its columns of concat.

        Rows of GPT-2's c_proj.weight [n_embd, n_embd]; columns of an nn.Linear o_proj."""
        return self.head * self.d_head, (self.head + 1) * self.d_head

    @property
    def group_size(self) -> int:
        return self.n_head // self.n_kv_head

    @property
    def layout(self) -> str:
        return "MHA" if self.n_kv_head == self.n_head else ("MQA" if self.n_kv_head == 1 else "GQA")

    @property
    def kv_group(self) -> list[int]:
        """The query heads that read the same K/V head as this one."""
        return list(range(self.kv_head * self.group_size, (self.kv_head + 1) * self.group_size))

    @property
    def window_masked_keys(self) -> list[int]:
        """Keys up to the query that lie outside its sliding window."""
        if self.window is None:
            return []
        return list(range(0, max(0, self.query_index - self.window + 1)))

    @property
    def max_abs_diff(self) -> float:
        return max(self.diffs.values())

    @property
    def matches(self) -> bool:
        return all(self.diffs[k] <= self.bounds[k] for k in self.diffs)

    def to_dict(self) -> dict:
        s, lp = self.step, self.layer_prefix
        return {
            "layer": self.layer,
            "head": self.head,
            "kv_head": self.kv_head,
            "query_index": self.query_index,
            "model_type": self.model_type,
            "layout": self.layout,
            "n_head": self.n_head,
            "n_kv_head": self.n_kv_head,
            "group_size": self.group_size,
            "kv_group": self.kv_group,
            "d_head": self.d_head,
            "n_embd": self.n_embd,
            "scale": self.scale,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "columns": {f"w_{k}": list(v) for k, v in self.columns.items()},
            "projections": {f"w_{k}": p.to_dict() | {"weight": lp + p.weight, "bias": p.bias and lp + p.bias}
                            for k, p in self.projections.items()},
            "output_projection": self.out_projection.to_dict() | {
                "weight": lp + self.out_projection.weight,
                "bias": self.out_projection.bias and lp + self.out_projection.bias,
                "head_slice": list(self.head_rows)},
            "norm": {"type": self.norm, "weight": self.norm_weight, "eps": self.layer_norm_epsilon,
                     "gain_offset": self.norm_gain_offset},
            "softcap": self.softcap,
            "window": self.window,
            "masked_keys": self.window_masked_keys + list(range(self.query_index + 1, self.n_seq)),
            "window_masked_keys": self.window_masked_keys,
            "input": floats(self.input),
            "embed_scale": self.embed_scale,
            "ln_mean": None if self.ln_mean is None else float(self.ln_mean),
            "ln_var": None if self.ln_var is None else float(self.ln_var),
            "ln_input": floats(self.ln_input),
            "qk_norm": None if self.qk_norm is None else {
                "q_weight": lp + self.qk_norm.q_weight, "k_weight": lp + self.qk_norm.k_weight,
                "query_rms": self.qk_norm.query_rms, "key_rms": floats(self.qk_norm.key_rms),
                "per_head": self.qk_norm.per_head},
            "query_pre_rope": None if s.query_pre_rope is None else floats(s.query_pre_rope),
            "keys_pre_rope": None if s.keys_pre_rope is None else floats(s.keys_pre_rope),
            "rope": None if self.rope is None else {
                "rope_type": self.rope.rope_type, "rope_theta": self.rope.rope_theta,
                "rotary_dim": self.rope.rotary_dim,
                "attention_scaling": self.rope.attention_scaling, "inv_freq": floats(self.rope.inv_freq),
                "angles": floats(self.rope.angles), "cos": floats(self.rope.cos), "sin": floats(self.rope.sin)},
            "query": floats(s.query),
            "keys": floats(s.keys),
            "values": floats(s.values),
            "scores": floats(s.scores),
            "scaled_scores": floats(s.scaled_scores),
            "capped_scores": None if s.capped_scores is None else floats(s.capped_scores),
            "attention": floats(s.attention),
            "head_output": floats(s.output),
            "concat": floats(self.concat),
            "head_share": floats(self.head_share),
            "output": floats(self.output),
            "max_abs_diff_vs_forward": self.max_abs_diff,
            "diff_vs_forward": dict(self.diffs),
            "matches_forward": self.matches,
        }  # fmt: skip


def floats(a: np.ndarray) -> list:
    """float32 array -> nested lists of the shortest decimals that read back as the same float32."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim > 1:
        return [floats(row) for row in a]
    return [float(str(x)) for x in a]


def embedding_scale(params: Params, x: np.ndarray, token: int) -> float:
    """The factor the family's embed multiplies the token's embedding row by, read off its output x [n_embd].

    1 for Llama and the others; sqrt(n_embd) rounded to float32 for Gemma. Read from the numbers, so the explanation
    says what the forward did."""
    row = params.get(family(params.config).EMBEDDING)[token].astype(np.float64)
    norm = float(row @ row)
    return 1.0 if norm == 0.0 else float(x.astype(np.float64) @ row / norm)


def layer_input(params: Params, ids: np.ndarray, layer: int) -> np.ndarray:
    """The batched forward up to `layer`: the residual stream entering it [n_seq, n_embd].

    For layer 0, the embeddings."""
    x = embed(params, ids)
    for trace in forward(params, ids, n_layers=layer):
        x = trace.residual
    return x


def attention_inputs(
    x: np.ndarray, p: dict[str, np.ndarray], c: ModelConfig, norm: tuple | None, offset: float = 0.0
) -> tuple[np.ndarray, float | None, float | None]:
    """The attention input of each row, and the query row's norm statistics.

    x [n_key, n_embd] -> (the attention input row by row [n_key, n_embd], the query row's mean, its variance or
    mean square)."""
    if norm is None:
        return x, None, None
    kind, weight, bias = norm
    if kind == "layer_norm":
        rows = [layer_norm_vector(row, p[weight], p[bias], c.norm_eps) for row in x]
        return np.stack([r for r, _, _ in rows]), float(rows[-1][1]), float(rows[-1][2])
    gain = p[weight] + F32(offset) if offset else p[weight]  # Gemma's RMSNorm scales by 1 + weight
    rms_rows = [rms_norm_vector(row, gain, c.norm_eps) for row in x]
    return np.stack([r for r, _ in rms_rows]), None, float(rms_rows[-1][1])


def explain(
    params: Params, ids: np.ndarray | list[int], layer: int, head: int, query: int | None = None
) -> Explanation:
    c = params.config
    arch = family(c)
    ids = np.asarray(ids, dtype=np.int64)
    check_selection(c.n_layer, c.n_head, [layer], [head])
    i = resolve_query(query, len(ids))
    p = params.layer(layer)
    scale = c.attn_scale(layer)
    window = c.sliding_window(layer)
    x = layer_input(params, ids, layer)  # [n_seq, n_embd]

    # Steps 1-5 for token i, from the vectors x_0..x_i alone.
    offset, softcap = arch.NORM_GAIN_OFFSET, c.attn_softcap(layer)
    a_rows, mean, var = attention_inputs(x[: i + 1], p, c, arch.ATTENTION_NORM, offset)  # [n_key, n_embd]
    rope_config = arch.rope_at(c, layer)
    rope = None if rope_config is None else rope_step(rope_config, c, i + 1, len(ids))
    steps = [
        head_step(
            a_rows,
            p,
            arch.head_projections(c, h),
            scale,
            qk_norm=arch.QK_NORM,
            eps=c.norm_eps,
            rope=rope,
            window=window,
            offset=offset,
            softcap=softcap,
        )
        for h in range(c.n_head)
    ]
    heads_output = np.stack([s.output for s in steps])  # [n_head, d_head]
    concat = heads_output.reshape(-1)  # [n_head * d_head]
    out = arch.out_projection(c)
    w_o = p[out.weight]  # Conv1D [n_head * d_head, n_embd] or nn.Linear [n_embd, n_head * d_head]
    r0, r1 = head * c.d_head, (head + 1) * c.d_head
    if out.in_out:
        output, head_share = concat @ w_o, steps[head].output @ w_o[r0:r1]  # [d_head] @ [d_head, n_embd]
    else:
        output, head_share = concat @ w_o.T, steps[head].output @ w_o[:, r0:r1].T
    if out.bias is not None:
        output = output + p[out.bias]
    qk = None
    if arch.QK_NORM is not None:
        proj = arch.head_projections(c, head)
        _, _, q_rms, k_rms = project_qk(a_rows, p, proj, arch.QK_NORM, c.norm_eps, offset)
        assert q_rms is not None and k_rms is not None  # with QK-norm, project_qk computes both
        per_head = qk_norm_per_head(p, arch.QK_NORM, c.d_head)
        qk = QKNormStep(arch.QK_NORM[0], arch.QK_NORM[1], q_rms, k_rms, per_head)

    # Step 6: the forward's own block over the whole text, every intermediate as the forward computes it (the
    # attention kernel keeps no raw scores: those are q . k of the forward's own q and k).
    batched_in = arch.attention_input(x, p, c)  # [n_seq, n_embd]
    _, parts = arch.block(x, p, c, layer)
    s, g = steps[head], c.kv_head(head)
    assert parts.probs is not None  # no sink: the block keeps the map
    pairs = {
        "ln_input": (a_rows[-1], batched_in[i]),
        "query": (s.query, parts.q[head, i]),
        "keys": (s.keys, parts.k[g, : i + 1]),
        "values": (s.values, parts.v[g, : i + 1]),
        "scores": (s.scores, parts.k[g, : i + 1] @ parts.q[head, i]),
        "attention": (s.attention, parts.probs[head, i, : i + 1]),
        "masked_attention": (np.zeros(len(ids) - i - 1, F32), parts.probs[head, i, i + 1 :]),
        "head_output": (s.output, parts.z[head, i]),
        "concat": (concat, merge_heads(parts.z)[i]),
        "output": (output, parts.out[i]),
    }
    if rope is not None:
        assert parts.q_pre_rope is not None and parts.k_pre_rope is not None  # kept by every rotary family
        assert s.query_pre_rope is not None and s.keys_pre_rope is not None
        pairs["query_pre_rope"] = (s.query_pre_rope, parts.q_pre_rope[head, i])
        pairs["keys_pre_rope"] = (s.keys_pre_rope, parts.k_pre_rope[g, : i + 1])
    diffs, bounds = {}, {}
    for name, (ours, ref) in pairs.items():
        diffs[name] = float(np.abs(ours - ref).max()) if ref.size else 0.0
        bounds[name] = MATCH_RTOL * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)

    prefix = arch.LAYER_PREFIX.format(layer)
    norm = arch.ATTENTION_NORM
    return Explanation(
        layer=layer,
        head=head,
        kv_head=g,
        query_index=i,
        token_id=int(ids[i]),
        n_seq=len(ids),
        n_head=c.n_head,
        n_kv_head=c.n_kv_head,
        d_head=c.d_head,
        n_embd=c.n_embd,
        model_type=c.model_type,
        scale=scale,
        scale_attn_weights=getattr(c, "scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=getattr(c, "scale_attn_by_inverse_layer_idx", False),
        layer_norm_epsilon=c.norm_eps,
        norm_gain_offset=offset,
        softcap=softcap,
        norm=None if norm is None else norm[0],
        norm_weight=None if norm is None else prefix + norm[1],
        layer_prefix=prefix,
        projections=arch.head_projections(c, head),
        projections_note=arch.projections_note(c, head, g),
        out_projection=out,
        input=x[i],
        embed_scale=embedding_scale(params, x[i], int(ids[i])) if layer == 0 and rope is not None else 1.0,
        ln_mean=mean,
        ln_var=var,
        ln_input=a_rows[-1],
        qk_norm=qk,
        rope=rope,
        window=window,
        step=s,
        heads_output=heads_output,
        concat=concat,
        head_share=head_share,
        output=output,
        diffs=diffs,
        bounds=bounds,
    )
