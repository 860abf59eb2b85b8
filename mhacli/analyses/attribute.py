"""Direct logit attribution (`mha attribute`): what each component wrote into the residual stream, read as a logit.

At one position I the last layer's residual x is a sum of writes: the embeddings, then per layer every query head's
output (its slice z_h of the concatenated head outputs times its rows of W_O), the attention output bias, and the
MLP. Read through the final norm frozen at x's real scale (mhacli.analyses.readout.FrozenNorm: affine in what is
written), the answer's logit, or the difference answer - wrong, is the sum of each write's share plus the final
norm's bias and the unembedding bias. Float64 from the float32 forward.

Components (the order of `Attribution.components`: model order):
- `embed`: the residual stream entering layer 0 at I (token and learned position embeddings, as the family embeds);
- `head` (layer, head): z_h[I] @ W_O[rows of h] (+ b_V[kv(h)] @ W_O[rows of h] unless fold_value_bias: then that
  moves into the layer's `attn_bias`, as TransformerLens' fold_value_biases does; attention rows sum to 1, so b_V
  reaches z_h unchanged);
- `attn_bias` (layer): the attention output projection's bias (plus the folded value biases); only where there is
  one;
- `remainder` (layer): post-norm families (a family declaring ATTENTION_OUT_NORM, e.g. OLMo 2/3) normalise the
  attention output before the residual add, a norm over every head at once. Heads are split linearly at the norm's
  actual scale s at I (the norm frozen there, as the final norm is): head h's share is z_h W_O,h * s * g. At the
  actual scale that split is exact, so the remainder is only what the float32 forward's normed output differs from
  the float64 sum of the shares by (rounding, ~1e-7 of the write); it is reported so the sum closes on the
  forward's own numbers and nothing is hidden;
- `mlp` (layer): what the block wrote minus what its attention wrote (x after the block - x before - attention);
- `norm_bias`: the final norm's bias (LayerNorm families); `unembed_bias`: the output head's bias, where there is one.

The sum closes by construction: embed + per layer (attention + mlp) telescopes to x, and the frozen norm of x is the
model's own final norm of x. `value` is the model's logit (difference) from x, float64.

Promoted and suppressed tokens: a head's write through the frozen norm times the unembedding, [vocab]: the tokens it
raises and lowers most.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mhacli.analyses.loss import output_head
from mhacli.analyses.readout import (
    F64,
    check_answer_pair,
    check_position,
    freeze_final_norm,
    logit_direction,
    norm_gain,
)
from mhacli.analyses.stats import StatsAccumulator, head_stats
from mhacli.engine.arch.common import rms_norm
from mhacli.engine.attention import DISCARD, Sink
from mhacli.engine.blocks import F32, Params
from mhacli.engine.forward import embed, family, final_norm, forward
from mhacli.errors import UsageError

COMPONENTS = ("embed", "head", "attn_bias", "remainder", "mlp", "norm_bias", "unembed_bias")
HEAD_BLOCK = 64  # heads whose promoted tokens are ranked at once: [64, vocab] float32


@dataclass(frozen=True)
class Component:
    """One write into the residual stream and its share of the metric (float64)."""

    component: str  # one of COMPONENTS
    layer: int | None
    head: int | None
    attribution: float


@dataclass(frozen=True)
class TokenEffect:
    """A token a head's write raises (or lowers): its id and the change of its logit."""

    id: int
    value: float


@dataclass(frozen=True)
class Attribution:
    """The metric at `pos` split into its components (model order), and what each head promotes and suppresses."""

    pos: int
    answer: int
    wrong: int | None
    value: float  # the model's logit (difference) at pos, float64 from the float32 forward
    fold_value_bias: bool
    components: list[Component]
    kinds: dict[tuple[int, int], str] = field(default_factory=dict)  # (layer, head) -> kind, as `stats` finds it
    promotes: dict[tuple[int, int], list[TokenEffect]] = field(default_factory=dict)
    suppresses: dict[tuple[int, int], list[TokenEffect]] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return "logit" if self.wrong is None else "logit_diff"

    @property
    def sum(self) -> float:
        return float(np.sum([c.attribution for c in self.components], dtype=F64))

    @property
    def completeness_error(self) -> float:
        return abs(self.sum - self.value)

    def heads(self) -> np.ndarray:
        """[n_layer, n_head] float64: each head's attribution."""
        heads = [c for c in self.components if c.component == "head"]
        shape = (1 + max(c.layer or 0 for c in heads), 1 + max(c.head or 0 for c in heads)) if heads else (0, 0)
        out = np.zeros(shape)
        for c in heads:
            out[c.layer, c.head] = c.attribution
        return out


def out_rows(p: dict[str, np.ndarray], config: Any, head: int) -> np.ndarray:
    """Head `head`'s rows of the output projection: [d_head, n_embd] float64 (z_h @ them is its write)."""
    proj = family(config).out_projection(config)
    w = p[proj.weight]
    lo, hi = head * config.d_head, (head + 1) * config.d_head
    rows = w[lo:hi] if proj.in_out else w[:, lo:hi].T  # Conv1D [in, out]; nn.Linear [out, in]
    return rows.astype(F64)


def out_bias(p: dict[str, np.ndarray], config: Any) -> np.ndarray | None:
    """The output projection's bias [n_embd] float64, None where it has none."""
    bias = family(config).out_projection(config).bias
    return None if bias is None else p[bias].astype(F64)


def value_bias(p: dict[str, np.ndarray], config: Any, head: int) -> np.ndarray | None:
    """The constant part [d_head] float64 of the values query head `head` reads; None where there is none.

    b_V of its K/V head, plus, where the norm before attention has a bias b, b @ W_V: what TransformerLens folds
    into b_O after folding that norm into W_V (fold_ln, then fold_value_biases)."""
    arch = family(config)
    v = arch.head_projections(config, head)["v"]
    own = None if v.bias is None else p[v.bias][v.start : v.end].astype(F64)
    norm = arch.ATTENTION_NORM
    if norm is None or norm[2] is None:
        return own
    w = p[v.weight]
    w_v = w[:, v.start : v.end] if v.in_out else w[v.start : v.end].T  # [n_embd, d_head]
    folded = p[norm[2]].astype(F64) @ w_v.astype(F64)
    return folded if own is None else folded + own


def attention_out_norm(params: Params) -> tuple[str, str] | None:
    """(kind, weight) of the norm a post-norm family applies to the attention output; None: pre-norm."""
    return getattr(family(params.config), "ATTENTION_OUT_NORM", None)


@dataclass(frozen=True)
class LayerWrites:
    """What one layer wrote at position I, float64 [.., n_embd]: each head, the bias, the remainder, the MLP."""

    heads: np.ndarray  # [n_head, n_embd]
    bias: np.ndarray | None
    remainder: np.ndarray | None
    mlp: np.ndarray


def layer_writes(
    params: Params, layer: int, z: np.ndarray, before: np.ndarray, after: np.ndarray, fold_value_bias: bool
) -> LayerWrites:
    """One layer's writes at I: z [n_head, d_head] its heads' outputs there, before/after the residual [n_embd]."""
    c = params.config
    p = params.layer(layer)
    rows = [out_rows(p, c, h) for h in range(c.n_head)]
    heads = np.stack([z[h].astype(F64) @ rows[h] for h in range(c.n_head)])  # [n_head, n_embd]
    bias = out_bias(p, c)
    if fold_value_bias:
        for h in range(c.n_head):
            b_v = value_bias(p, c, h)
            if b_v is not None:
                moved = b_v @ rows[h]
                heads[h] -= moved
                bias = moved if bias is None else bias + moved
    remainder = None
    attention = heads.sum(axis=0) + (0.0 if bias is None else bias)
    norm = attention_out_norm(params)
    if norm is not None:  # post-norm: the heads' shares at the norm's actual scale, the rest as the remainder
        kind, weight = norm
        if kind != "rms_norm":  # pragma: no cover - every post-norm family so far uses RMSNorm
            raise NotImplementedError(f"attention output norm {kind!r}")
        out = split_out(params, p, z)  # [n_embd] float32, as the forward projects
        gain = norm_gain(params, p[weight])
        s = 1.0 / np.sqrt(np.mean(np.square(out.astype(F64))) + c.norm_eps)
        heads = heads * s * gain
        bias = None if bias is None else bias * s * gain
        written = rms_norm(out[None], gain.astype(F32), c.norm_eps)[0].astype(F64)  # what the forward added
        remainder = written - heads.sum(axis=0) - (0.0 if bias is None else bias)
        attention = written
    mlp = after.astype(F64) - before.astype(F64) - attention
    return LayerWrites(heads, bias, remainder, mlp)


def split_out(params: Params, p: dict[str, np.ndarray], z: np.ndarray) -> np.ndarray:
    """The attention output projection at I, float32 as the forward computes it: z [n_head, d_head] -> [n_embd]."""
    proj = family(params.config).out_projection(params.config)
    concat = z.reshape(1, -1)  # [1, n_head * d_head]
    w = p[proj.weight]
    out = concat @ w if proj.in_out else concat @ w.T
    return (out if proj.bias is None else out + p[proj.bias])[0]


def unembed_bias(params: Params) -> np.ndarray | None:
    """The output head's bias [vocab] float64, where the family declares one and the checkpoint has it."""
    name = getattr(family(params.config), "LM_HEAD_BIAS", None)
    if name is None or name not in getattr(params, "tensors", {}):
        return None
    return params.get(name).astype(F64)


@dataclass
class _Run:
    """The forward at one position: each layer's head outputs and the residual before and after, and head kinds."""

    x0: np.ndarray  # [n_embd] entering layer 0
    z: list[np.ndarray]  # per layer [n_head, d_head]
    after: list[np.ndarray]  # per layer [n_embd]
    last: np.ndarray  # [n_seq, n_embd] the last layer's residual (the default answer reads it)
    kinds: dict[tuple[int, int], str]


def run_at(params: Params, ids: np.ndarray, pos: int, kinds: bool) -> _Run:
    """One forward, keeping position `pos` of every layer; with kinds, every head's kind from streamed statistics."""
    c = params.config
    streams: dict[int, StatsAccumulator] = {}

    def sink(layer: int) -> Sink:
        if not kinds:
            return DISCARD
        streams[layer] = StatsAccumulator(c.n_head, ids)
        return streams[layer]

    found: dict[tuple[int, int], str] = {}
    z, after = [], []
    last = None
    for trace in forward(params, ids, sinks=sink):
        z.append(trace.z[:, pos].copy())
        after.append(trace.residual[pos].copy())
        last = trace.residual
        if kinds:
            for s in head_stats(trace.layer, streams.pop(trace.layer).result()):
                found[(s.layer, s.head)] = s.kind
    assert last is not None  # a model has at least one layer (checked at load)
    return _Run(embed(params, ids)[pos], z, after, last, found)


def top_prediction(params: Params, residual: np.ndarray, pos: int) -> int:
    """The model's most likely next token at `pos` from the last layer's residual [n_seq, n_embd]."""
    logits = final_norm(params, residual[[pos]]) @ output_head(params).T
    b = unembed_bias(params)
    return int(np.argmax(logits[0] + (0.0 if b is None else b)))


def attribute(
    params: Params,
    ids: np.ndarray,
    answer: int | None = None,
    wrong: int | None = None,
    pos: int = -1,
    *,
    fold_value_bias: bool = False,
    top_tokens: int = 0,
    kinds: bool = True,
) -> Attribution:
    """Direct logit attribution of the answer's logit (or answer - wrong) at `pos` (negative: from the end).

    answer None: the model's top prediction there. top_tokens: each head's promoted and suppressed tokens (K each).
    """
    ids = np.asarray(ids, dtype=np.int64)
    c = params.config
    pos = check_position(pos, len(ids))
    if top_tokens < 0:
        raise UsageError(f"{{top_tokens}} {top_tokens} must be 0 or more", params=("top_tokens",))
    if answer is not None:
        check_answer_pair(answer, wrong, c.vocab_size)  # before the forward
    run = run_at(params, ids, pos, kinds)
    if answer is None:
        answer = top_prediction(params, run.last, pos)
    check_answer_pair(answer, wrong, c.vocab_size)
    head = output_head(params)
    frozen = freeze_final_norm(params, run.after[-1][None])
    direction = logit_direction(head, answer, wrong)  # [n_embd]

    def share(v: np.ndarray) -> np.ndarray:
        """writes [k, n_embd] -> their shares of the metric [k]"""
        return frozen.linear(v[:, None, :])[:, 0] @ direction

    comps = [Component("embed", None, None, float(share(run.x0[None].astype(F64))[0]))]
    head_writes = []
    before = run.x0
    for layer in range(c.n_layer):
        w = layer_writes(params, layer, run.z[layer], before, run.after[layer], fold_value_bias)
        head_writes.append(w.heads)
        comps += [Component("head", layer, h, float(v)) for h, v in enumerate(share(w.heads))]
        if w.bias is not None:
            comps.append(Component("attn_bias", layer, None, float(share(w.bias[None])[0])))
        if w.remainder is not None:
            comps.append(Component("remainder", layer, None, float(share(w.remainder[None])[0])))
        comps.append(Component("mlp", layer, None, float(share(w.mlp[None])[0])))
        before = run.after[layer]
    if frozen.bias is not None:
        comps.append(Component("norm_bias", None, None, float(frozen.bias @ direction)))
    b_u = unembed_bias(params)
    if b_u is not None:
        comps.append(Component("unembed_bias", None, None, float(b_u[answer] - (0.0 if wrong is None else b_u[wrong]))))
    value = float(frozen(run.after[-1][None])[0] @ direction)
    if b_u is not None:
        value += float(b_u[answer] - (0.0 if wrong is None else b_u[wrong]))
    promotes, suppresses = token_effects(frozen, head, np.stack(head_writes), top_tokens)
    return Attribution(pos, answer, wrong, value, fold_value_bias, comps, run.kinds, promotes, suppresses)


def token_effects(
    frozen, head: np.ndarray, writes: np.ndarray, k: int
) -> tuple[dict[tuple[int, int], list[TokenEffect]], dict[tuple[int, int], list[TokenEffect]]]:
    """Each head's write [n_layer, n_head, n_embd] through the frozen norm and the unembedding: top and bottom k.

    The logit changes [heads, vocab] are float32 (a ranking), HEAD_BLOCK heads at a time."""
    if k == 0:
        return {}, {}
    n_layer, n_head, n_embd = writes.shape
    normed = frozen.linear(writes.reshape(-1, 1, n_embd))[:, 0].astype(F32)  # [n_layer * n_head, n_embd]
    k = min(k, head.shape[0])
    up: dict[tuple[int, int], list[TokenEffect]] = {}
    down: dict[tuple[int, int], list[TokenEffect]] = {}
    for a in range(0, len(normed), HEAD_BLOCK):
        logits = normed[a : a + HEAD_BLOCK] @ head.T  # [block, vocab]
        for r, row in enumerate(logits):
            key = divmod(a + r, n_head)
            up[key] = [TokenEffect(int(i), float(row[i])) for i in top_k(row, k)]
            down[key] = [TokenEffect(int(i), float(row[i])) for i in top_k(-row, k)]
    return up, down


def top_k(row: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest values of `row`, largest first (ties: the smaller index first)."""
    part = np.argpartition(-row, k - 1)[:k] if k < len(row) else np.arange(len(row))
    return part[np.lexsort((part, -row[part]))]
