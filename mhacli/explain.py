"""One head's computation for one query token, step by step, with the real numbers. Pure NumPy; no I/O.

The steps are computed the way they are written on paper, one query vector at a time: LN(x_I), q_I, k_j and v_j
from this head's slices of c_attn, the scores q_I . k_j over the visible keys j <= I, their softmax, the weighted
sum of the values, then every head's output at token I concatenated and projected by c_proj. None of this goes
through the batched code (`model.gpt2_attention_parts`), which is run afterwards on the whole text and compared
with it: the explanation doubles as a check of the batched forward.

Shapes: n_key = query_index + 1 visible keys; vectors are float32 throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mhacli.errors import UsageError
from mhacli.heads import check_selection
from mhacli.model import F32, Params, embed, forward, gpt2_attention_parts, layer_norm, merge_heads

# The step-by-step numbers match the batched forward when every difference is within this, per unit of
# max(1, max |reference|): both are float32, summed in different orders, so they agree to rounding only.
MATCH_RTOL = 1e-4


def resolve_query(query: int | None, n_seq: int) -> int:
    """--query: None is the last token, negative counts from the end; out of range is a UsageError."""
    if query is None:
        return n_seq - 1
    if not -n_seq <= query < n_seq:
        raise UsageError(f"--query {query} is out of range: the text has tokens 0..{n_seq - 1} (or -{n_seq}..-1)")
    return query + n_seq if query < 0 else query


# --- the steps, one vector at a time ----------------------------------------------------------------------------


def layer_norm_vector(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> tuple[np.ndarray, np.float32, np.float32]:
    """[n_embd] -> ([n_embd], mean, biased variance): (x - mean) / sqrt(var + eps) * w + b"""
    mean = x.mean()
    var = np.square(x - mean).mean()
    return (x - mean) / np.sqrt(var + F32(eps)) * w + b, mean, var


def head_columns(n_embd: int, d_head: int, head: int) -> dict[str, tuple[int, int]]:
    """This head's column ranges [start, end) in c_attn.weight [n_embd, 3 * n_embd], for W_Q, W_K and W_V."""
    lo = head * d_head
    return {"q": (lo, lo + d_head), "k": (n_embd + lo, n_embd + lo + d_head), "v": (2 * n_embd + lo, 2 * n_embd + lo + d_head)}


@dataclass(frozen=True)
class HeadStep:
    """One head at one query token: the query, the visible keys and values, scores, weights and output."""

    query: np.ndarray  # [d_head]
    keys: np.ndarray  # [n_key, d_head]
    values: np.ndarray  # [n_key, d_head]
    scores: np.ndarray  # [n_key] q . k_j
    scaled_scores: np.ndarray  # [n_key] scale * q . k_j
    attention: np.ndarray  # [n_key] softmax over the visible keys
    output: np.ndarray  # [d_head] sum_j a_j v_j


def head_step(ln_rows: np.ndarray, c_attn_w: np.ndarray, c_attn_b: np.ndarray, head: int, d_head: int, scale: float) -> HeadStep:
    """ln_rows [n_key, n_embd] (LN(x_j), j = 0..I; the last row is the query token) -> this head's step."""
    cols = head_columns(ln_rows.shape[1], d_head, head)
    (q0, q1), (k0, k1), (v0, v1) = cols["q"], cols["k"], cols["v"]
    query = ln_rows[-1] @ c_attn_w[:, q0:q1] + c_attn_b[q0:q1]  # [n_embd] @ [n_embd, d_head] -> [d_head]
    keys = ln_rows @ c_attn_w[:, k0:k1] + c_attn_b[k0:k1]  # [n_key, d_head]
    values = ln_rows @ c_attn_w[:, v0:v1] + c_attn_b[v0:v1]  # [n_key, d_head]
    scores = np.array([np.dot(query, k) for k in keys], dtype=F32)  # [n_key]
    scaled = scores * F32(scale)
    e = np.exp(scaled - scaled.max())  # keys j > I are not here at all: the causal mask
    attention = e / e.sum()
    output = (attention[:, None] * values).sum(axis=0)  # [d_head]
    return HeadStep(query, keys, values, scores, scaled, attention, output)


# --- the explanation ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    layer: int
    head: int
    kv_head: int
    query_index: int
    token_id: int  # the query token's id
    n_seq: int
    n_head: int
    d_head: int
    n_embd: int
    scale: float
    scale_attn_weights: bool
    scale_attn_by_inverse_layer_idx: bool
    layer_norm_epsilon: float
    input: np.ndarray  # [n_embd] residual stream entering the layer at the query token
    ln_mean: float
    ln_var: float
    ln_input: np.ndarray  # [n_embd] after ln_1
    step: HeadStep  # this head
    heads_output: np.ndarray  # [n_head, d_head] every head's output at the query token
    concat: np.ndarray  # [n_embd] heads_output concatenated
    head_share: np.ndarray  # [n_embd] this head's part of the projection: z_H @ W_O[rows of head H]
    output: np.ndarray  # [n_embd] concat @ c_proj.weight + c_proj.bias
    diffs: dict[str, float]  # max |step-by-step - batched forward| per quantity
    bounds: dict[str, float]  # the allowed difference per quantity (MATCH_RTOL * max(1, max |reference|))

    @property
    def columns(self) -> dict[str, tuple[int, int]]:
        return head_columns(self.n_embd, self.d_head, self.head)

    @property
    def head_rows(self) -> tuple[int, int]:
        """This head's rows of c_proj.weight [n_embd, n_embd] (and its columns of concat)."""
        return self.head * self.d_head, (self.head + 1) * self.d_head

    @property
    def max_abs_diff(self) -> float:
        return max(self.diffs.values())

    @property
    def matches(self) -> bool:
        return all(self.diffs[k] <= self.bounds[k] for k in self.diffs)

    def to_dict(self) -> dict:
        s = self.step
        return {
            "layer": self.layer,
            "head": self.head,
            "kv_head": self.kv_head,
            "query_index": self.query_index,
            "n_head": self.n_head,
            "d_head": self.d_head,
            "n_embd": self.n_embd,
            "scale": self.scale,
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "columns": {f"w_{k}": list(v) for k, v in self.columns.items()},
            "masked_keys": list(range(self.query_index + 1, self.n_seq)),
            "input": floats(self.input),
            "ln_mean": float(self.ln_mean),
            "ln_var": float(self.ln_var),
            "ln_input": floats(self.ln_input),
            "query": floats(s.query),
            "keys": floats(s.keys),
            "values": floats(s.values),
            "scores": floats(s.scores),
            "scaled_scores": floats(s.scaled_scores),
            "attention": floats(s.attention),
            "head_output": floats(s.output),
            "concat": floats(self.concat),
            "head_share": floats(self.head_share),
            "output": floats(self.output),
            "max_abs_diff_vs_forward": self.max_abs_diff,
            "diff_vs_forward": dict(self.diffs),
            "matches_forward": self.matches,
        }


def floats(a: np.ndarray) -> list:
    """float32 array -> nested lists of the shortest decimals that read back as the same float32."""
    a = np.asarray(a, dtype=np.float32)
    if a.ndim > 1:
        return [floats(row) for row in a]
    return [float(str(x)) for x in a]


def layer_input_and_attention(params: Params, ids: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """The batched forward up to `layer`: the residual stream entering it [n_seq, n_embd] (the embeddings for layer
    0) and its attention [n_head, n_seq, n_seq]."""
    x = embed(params, ids)
    for trace in forward(params, ids, n_layers=layer + 1):
        if trace.layer < layer:
            x = trace.residual
        else:
            return x, trace.attention
    raise AssertionError("unreachable: forward yields every layer up to n_layers")  # pragma: no cover


def explain(params: Params, ids: np.ndarray | list[int], layer: int, head: int, query: int | None = None) -> Explanation:
    c = params.config
    ids = np.asarray(ids, dtype=np.int64)
    check_selection(c.n_layer, c.n_head, [layer], [head])
    i = resolve_query(query, len(ids))
    p = params.layer(layer)
    scale = c.attn_scale(layer)
    x, forward_attention = layer_input_and_attention(params, ids, layer)  # [n_seq, n_embd], [n_head, n_seq, n_seq]

    # Steps 1-5 for token i, from the vectors x_0..x_i alone.
    ln = [layer_norm_vector(x[j], p["ln_1.weight"], p["ln_1.bias"], c.layer_norm_epsilon) for j in range(i + 1)]
    ln_rows = np.stack([row for row, _, _ in ln])  # [n_key, n_embd]
    steps = [head_step(ln_rows, p["attn.c_attn.weight"], p["attn.c_attn.bias"], h, c.d_head, scale) for h in range(c.n_head)]
    heads_output = np.stack([s.output for s in steps])  # [n_head, d_head]
    concat = heads_output.reshape(-1)  # [n_embd]
    w_o, b_o = p["attn.c_proj.weight"], p["attn.c_proj.bias"]  # [n_embd, n_embd], [n_embd]
    output = concat @ w_o + b_o
    r0, r1 = head * c.d_head, (head + 1) * c.d_head
    head_share = steps[head].output @ w_o[r0:r1]  # [d_head] @ [d_head, n_embd] -> [n_embd]

    # Step 6: the batched forward over the whole text.
    batched_ln = layer_norm(x, p["ln_1.weight"], p["ln_1.bias"], c.layer_norm_epsilon)  # [n_seq, n_embd]
    parts = gpt2_attention_parts(batched_ln, p, c.n_head, scale)
    s = steps[head]
    pairs = {
        "ln_input": (ln_rows[-1], batched_ln[i]),
        "query": (s.query, parts.q[head, i]),
        "keys": (s.keys, parts.k[head, : i + 1]),
        "values": (s.values, parts.v[head, : i + 1]),
        "scores": (s.scores, parts.scores[head, i, : i + 1]),
        "attention": (s.attention, forward_attention[head, i, : i + 1]),
        "masked_attention": (np.zeros(len(ids) - i - 1, F32), forward_attention[head, i, i + 1 :]),
        "head_output": (s.output, parts.z[head, i]),
        "concat": (concat, merge_heads(parts.z)[i]),
        "output": (output, parts.out[i]),
    }
    diffs, bounds = {}, {}
    for name, (ours, ref) in pairs.items():
        diffs[name] = float(np.abs(ours - ref).max()) if ref.size else 0.0
        bounds[name] = MATCH_RTOL * max(1.0, float(np.abs(ref).max()) if ref.size else 0.0)

    _, mean, var = ln[-1]
    return Explanation(
        layer=layer, head=head, kv_head=head * c.n_kv_head // c.n_head, query_index=i, token_id=int(ids[i]), n_seq=len(ids),
        n_head=c.n_head, d_head=c.d_head, n_embd=c.n_embd, scale=scale, scale_attn_weights=c.scale_attn_weights,
        scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx, layer_norm_epsilon=c.layer_norm_epsilon,
        input=x[i], ln_mean=float(mean), ln_var=float(var), ln_input=ln_rows[-1], step=s, heads_output=heads_output,
        concat=concat, head_share=head_share, output=output, diffs=diffs, bounds=bounds,
    )  # fmt: skip
