"""Which heads carry the difference between two prompts: activation patching and direct path patching per head.

Pure NumPy; no I/O. Two runs of the same length: the *target* run (the corrupted prompt when denoising, the clean
one with `noise`) and the *source* run whose activations are patched in. Each evaluation replaces one head's
activation (a site: its output z, query q, key k, value v or attention pattern) in the target run by the source's,
at every position or at one, and measures the metric at the end. The `resid` site is not a head's: it replaces the
residual stream entering a layer (TransformerLens' `resid_pre`), at one position or at all of them (then the rerun
is the source run itself from that layer on: the source's metric, exactly).

Every site is patched as an edit of the heads' outputs z before W_O of that one layer: a changed query, key, value
or pattern changes only the z of the heads that read it, recomputed here from the layer's recorded q, k, v (after
RoPE / QK norm, as scored; patching before or after a position-wise rotation is the same since both runs rotate
the same positions). Layers before the patched one compute what the target run computed, so each evaluation reruns
the model from the patched layer on the target run's cached residual stream, and the units of one layer (its heads,
or heads x positions) run as one batch of variants.

Several short pairs run as one pack (mhacli.engine.segments): each pair is recorded alone, then every rerun takes the
pack's target runs end to end, each attending only to itself with its positions from 0, a unit patched in every pair
of the pack at once (its own rows, from its own source) and the metric read in each pair's own rows. The pairs being
independent, each pair's numbers are those of its unpacked run to float32 rounding.

Direct path patching (sender S, receiver site q|k|v): the sender's write changes by d = (z_src[S] - z_tgt[S]) W_O[S]
at every position; the receiver head (a K/V head for k/v on GQA models) alone reads x + d, the layer's input plus d,
through its own norm and projection; every other reader sees the target run. This is the exact edge patch of
TransformerLens 4.3's `patching.get_act_patch_direct_path` (its `hook_{q,k,v}_input` fork): no linearised norm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from mhacli.analyses.loss import output_head
from mhacli.analyses.readout import metric
from mhacli.engine.arch.common import grouped_attention, grouped_mix
from mhacli.engine.attention import DISCARD, one_blas_thread
from mhacli.engine.blocks import Params
from mhacli.engine.forward import embed, family, forward_from
from mhacli.engine.segments import PACK_TOKENS, Segments, pack_groups
from mhacli.errors import UsageError

HEAD_SITES = ("z", "q", "k", "v", "pattern")
SITES = (*HEAD_SITES, "resid")
DIRECTIONS = ("denoise", "noise")
RECEIVER_SITES = ("q", "k", "v")
# (layer, head: a query head, a K/V head for k/v sites, None for resid; position or None: every position)
Unit = tuple[int, int | None, int | None]
# Rows (variants x tokens) of one packed rerun at most: packs hold at most PACK_ROWS // (a layer's variants run at
# once) tokens. Measured on GPT-2 small and SmolLM2 (docs/commands/patch.md): 8 pairs x 14 tokens x 9-12 heads
# used 10-15% less CPU than each pair alone; x 64 variants (--by-pos) 20-25% more, and one 900-token pack run one
# variant at a time gained nothing.
PACK_ROWS = 1536


@dataclass(frozen=True)
class Pair:
    """One clean/corrupt pair: token ids of the same length, and the answer and wrong token ids."""

    clean: np.ndarray
    corrupt: np.ndarray
    answer: int
    wrong: int | None


@dataclass(frozen=True)
class Acts:
    """One layer's attention intermediates in one run: q [n_head, n, d], k/v [n_kv, n, d], probs, z."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    probs: np.ndarray
    z: np.ndarray


def _discard(layer: int):
    return DISCARD


def layer_acts(params: Params, x: np.ndarray, layer: int) -> Acts:
    """The layer's q, k, v, pattern and z on the residual stream x [n, n_embd] entering it."""
    fam = family(params.config)
    w = params.layer(layer)
    parts = fam.attention_parts(fam.attention_input(x, w, params.config), w, params.config, layer)
    assert parts.probs is not None  # attention_parts keeps the map
    return Acts(parts.q, parts.k, parts.v, parts.probs, parts.z)


@dataclass
class Run:
    """One prompt's run: the residual stream entering each layer (n_layer + 1 arrays) and each layer's Acts."""

    ids: np.ndarray
    inputs: list[np.ndarray]
    acts: list[Acts]


def record(params: Params, ids: np.ndarray) -> Run:
    x = embed(params, np.asarray(ids, dtype=np.int64))
    inputs, acts = [x], []
    for layer in range(params.config.n_layer):
        acts.append(layer_acts(params, x, layer))
        x = next(forward_from(params, x, layer, layer + 1, sinks=_discard)).residual
        inputs.append(x)
    return Run(np.asarray(ids), inputs, acts)


def attend(params: Params, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """z [n_head, n, d] of the layer's attention over these q, k, v (the family's mask, window and soft-cap)."""
    c = params.config
    window, cap = c.sliding_window(layer), c.attn_softcap(layer)
    _, _, z = grouped_attention(q, k, v, c.attn_scale(layer), window, keep_scores=True, softcap=cap)
    return z


def group(params: Params, kv_head: int) -> np.ndarray:
    g = params.config.n_head // params.config.n_kv_head
    return np.arange(kv_head * g, (kv_head + 1) * g)


def patched_z(params: Params, layer: int, site: str, head: int, pos: int | None, tgt: Acts, src: Acts) -> np.ndarray:
    """The target layer's z [n_head, n, d] with `site` of `head` (a K/V head for k/v) at `pos` (None: all) from src."""
    rows = slice(None) if pos is None else slice(pos, pos + 1)
    z = tgt.z.copy()
    if site == "z":
        z[head, rows] = src.z[head, rows]
        return z
    if site == "pattern":
        probs = tgt.probs[[head]].copy()
        probs[0, rows] = src.probs[head, rows]
        kv = params.config.kv_head(head)
        z[head] = grouped_mix(probs, tgt.v[[kv]])[0]
        return z
    q, k, v = tgt.q, tgt.k, tgt.v
    if site == "q":
        q = q.copy()
        q[head, rows] = src.q[head, rows]
        heads = np.asarray([head])
    else:
        heads = group(params, head)
        if site == "k":
            k = k.copy()
            k[head, rows] = src.k[head, rows]
        else:
            v = v.copy()
            v[head, rows] = src.v[head, rows]
    kv = params.config.kv_head(int(heads[0]))
    new = attend(params, layer, q[heads], k[[kv]], v[[kv]])
    z[heads] = new
    return z


def units_of(params: Params, site: str, layers: Sequence[int], n_seq: int, by_pos: bool) -> list[Unit]:
    c = params.config
    positions: list[int | None] = list(range(n_seq)) if by_pos else [None]
    if site == "resid":
        return [(layer, None, p) for layer in layers for p in positions]
    n = c.n_kv_head if site in ("k", "v") else c.n_head
    return [(layer, h, p) for layer in layers for h in range(n) for p in positions]


def patched_resid(tgt: Run, src: Run, layer: int, positions: Sequence[int | None]) -> np.ndarray:
    """[B, n, n_embd]: the target's residual stream entering `layer`, row positions[b] (None: all) from src."""
    xs = np.repeat(tgt.inputs[layer][None], len(positions), axis=0)
    for b, pos in enumerate(positions):
        rows = slice(None) if pos is None else slice(pos, pos + 1)
        xs[b, rows] = src.inputs[layer][rows]
    return xs


def _head(unit: Unit) -> int:
    assert unit[1] is not None  # head sites' units name a head
    return unit[1]


def _rerun(
    params: Params, x: np.ndarray, layer: int, zs: list[np.ndarray] | None, segments: Segments | None
) -> np.ndarray:
    """The last layer's output [B, n, n_embd] of variants rerun from `layer`.

    x: the residual stream entering `layer`, [B, n, n_embd] variants themselves (zs None), or the target's [n,
    n_embd] whose layer `layer` outputs z = zs[b] [n_head, n, d_head]. n: one pair, or a pack (`segments`)."""
    edits = None if zs is None else {layer: lambda z: np.stack(zs)}
    out = x
    for trace in forward_from(params, x, layer, params.config.n_layer, edits=edits, sinks=_discard, segments=segments):
        out = trace.residual
    return out


@dataclass(frozen=True)
class PatchResult:
    """Means over pairs: the clean and corrupt metric, and each unit's patched metric (units in `units` order)."""

    clean_value: float
    corrupt_value: float
    units: list[Unit]
    values: list[float]

    def score(self, value: float) -> float | None:
        """(value - corrupt) / (clean - corrupt); None when clean = corrupt (nothing to restore)."""
        span = self.clean_value - self.corrupt_value
        return None if span == 0.0 else (value - self.corrupt_value) / span


def check_site(site: str, receiver: bool = False) -> None:
    names = RECEIVER_SITES if receiver else SITES
    param = "receiver_site" if receiver else "site"
    if site not in names:
        raise UsageError(f"unknown {{{param}}} {site!r}: one of {', '.join(names)}", params=(param,))


def check_sender(params: Params, sender: tuple[int, int]) -> None:
    c = params.config
    layer, head = sender
    if not 0 <= layer < c.n_layer or not 0 <= head < c.n_head:
        raise UsageError(
            f"{{sender}} {layer}.{head} is not a head of this model (layers 0..{c.n_layer - 1}, heads "
            f"0..{c.n_head - 1})",
            params=("sender",),
        )
    if layer == c.n_layer - 1:
        raise UsageError(
            f"{{sender}} {layer}.{head} is in the last layer: no later head receives its write", params=("sender",)
        )


def sender_write(params: Params, layer: int, head: int, dz: np.ndarray) -> np.ndarray:
    """What head `head` of `layer` writes into the residual stream for its output change dz [n, d_head] (no bias)."""
    c = params.config
    proj = family(c).out_projection(c)
    w = params.layer(layer)[proj.weight]
    cols = slice(head * c.d_head, (head + 1) * c.d_head)
    return dz @ (w[cols] if proj.in_out else w[:, cols].T)


def patch(
    params: Params,
    pairs: Sequence[Pair],
    *,
    metric_kind: str = "logit_diff",
    site: str = "z",
    by_pos: bool = False,
    direction: str = "denoise",
    sender: tuple[int, int] | None = None,
    receiver_site: str = "q",
    batch: int = 64,
    pack_tokens: int = PACK_TOKENS,
) -> PatchResult:
    """Patch every head (or head x position) of every layer (after the sender's, with one) over `pairs`.

    site "resid": the residual stream entering each layer instead of a head, at all positions at once or (by_pos)
    at each position. Values are means over pairs of the metric; a pair's two prompts have the same length (checked
    by the caller). Consecutive pairs run packed, up to `pack_tokens` tokens per rerun (1: each alone) and PACK_ROWS
    rows (the pack's tokens times the variants run at once).
    """
    if direction not in DIRECTIONS:
        raise UsageError(f"{{direction}} {direction!r}: one of {', '.join(DIRECTIONS)}", params=("direction",))
    check_site(site)
    if sender is not None:
        check_site(receiver_site, receiver=True)
        check_sender(params, sender)
    if pack_tokens < 1:
        raise UsageError(f"{{pack_tokens}} {pack_tokens} must be at least 1", params=("pack_tokens",))
    c = params.config
    n_seq = len(pairs[0].clean)
    if by_pos and any(len(p.clean) != n_seq for p in pairs):
        raise UsageError("{by_pos} needs every pair of the same length", params=("by_pos",))
    head_w = output_head(params)
    first = 0 if sender is None else sender[0] + 1
    unit_site = receiver_site if sender is not None else site
    units = units_of(params, unit_site, range(first, c.n_layer), n_seq, by_pos and sender is None)
    totals = np.zeros(len(units))
    clean_total = corrupt_total = 0.0
    at_once = min(batch, len(units) // (c.n_layer - first))  # variants per rerun
    pack_tokens = min(pack_tokens, max(1, PACK_ROWS // at_once))
    with one_blas_thread():
        for group in pack_groups([len(p.clean) for p in pairs], pack_tokens):
            runs: list[tuple[Run, Run]] = []
            scores: list[Callable[[np.ndarray], float]] = []
            for pair in (pairs[i] for i in group):

                def score(x: np.ndarray, ids: np.ndarray, pair: Pair = pair) -> float:
                    return metric(params, x, ids, metric_kind, pair.answer, pair.wrong, head=head_w)

                clean, corrupt = record(params, pair.clean), record(params, pair.corrupt)
                clean_total += score(clean.inputs[-1], clean.ids)
                corrupt_total += score(corrupt.inputs[-1], corrupt.ids)
                tgt, src = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
                runs.append((tgt, src))
                scores.append(partial(score, ids=tgt.ids))
            totals += _pack_values(params, runs, units, unit_site, sender, batch, scores)
    n = len(pairs)
    return PatchResult(clean_total / n, corrupt_total / n, units, list(totals / n))


def _sources(params: Params, runs: list[tuple[Run, Run]], layer: int, sender: tuple[int, int] | None) -> list[Acts]:
    """Each pair's source activations of `layer`.

    The source run's; with a sender (path patching), the layer's on the target plus the sender's changed write."""
    if sender is None:
        return [src.acts[layer] for _, src in runs]
    s_layer, s_head = sender
    sources = []
    for tgt, src in runs:
        dz = src.acts[s_layer].z[s_head] - tgt.acts[s_layer].z[s_head]
        sources.append(layer_acts(params, tgt.inputs[layer] + sender_write(params, s_layer, s_head, dz), layer))
    return sources


def _pack_values(
    params: Params,
    runs: list[tuple[Run, Run]],
    units: list[Unit],
    site: str,
    sender: tuple[int, int] | None,
    batch: int,
    scores: list[Callable[[np.ndarray], float]],
) -> np.ndarray:
    """The sum over the pack's pairs (target, source) of each unit's metric (scores[t] reads pair t's own rows).

    Every rerun covers the whole pack: unit u patched in every pair at once, each pair's part from its own source."""
    segments = Segments.of([tgt.ids for tgt, _ in runs]) if len(runs) > 1 else None
    bounds = [(0, len(runs[0][0].ids))] if segments is None else segments.bounds
    by_layer: dict[int, list[int]] = {}
    for i, (layer, _, _) in enumerate(units):
        by_layer.setdefault(layer, []).append(i)
    values = np.zeros(len(units))
    for layer, members in by_layer.items():
        sources = _sources(params, runs, layer, sender)
        for a in range(0, len(members), batch):
            chunk = members[a : a + batch]
            if site == "resid":
                positions = [units[i][2] for i in chunk]
                xs = np.concatenate([patched_resid(tgt, src, layer, positions) for tgt, src in runs], axis=1)
                out = _rerun(params, xs, layer, None, segments)
            else:
                zs = [
                    np.concatenate(
                        [
                            patched_z(params, layer, site, _head(units[i]), units[i][2], tgt.acts[layer], source)
                            for (tgt, _), source in zip(runs, sources)
                        ],
                        axis=1,
                    )
                    for i in chunk
                ]  # [n_head, n_pack, d_head] each
                x = np.concatenate([tgt.inputs[layer] for tgt, _ in runs])
                out = _rerun(params, x, layer, zs, segments)
            values[chunk] = [sum(f(out[b, s:e]) for f, (s, e) in zip(scores, bounds)) for b in range(len(chunk))]
    return values
