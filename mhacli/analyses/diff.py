"""Per-head divergence between two models on the same token ids. Pure NumPy (scipy for the assignment); no I/O.

Two models of the same shape (n_layer, n_head) are compared head by head ("paired"). Models of different shapes
get a divergence matrix between every head of A and every head of B, a one-to-one matching that minimises the
total divergence (the Hungarian assignment) and, for each B head, its nearest A head ("matched").

Heads are numbered layer-major: flat index = layer * n_head + head. Maps are [n_head, q_pos, k_pos] float32 as the
forward yields them; every reduction here is float64. Divergences of several texts are the plain mean over texts.

Metrics, each 0 for identical maps:
- `js`: Jensen-Shannon divergence of each query row, in bits (base-2 logs, so within [0, 1]), mean over rows;
- `tv`: total variation 0.5 * sum_j |p_j - q_j| of each query row (within [0, 1]), mean over rows;
- `cosine`: 1 - cosine similarity of the two flattened [n_seq, n_seq] maps (within [0, 1]: weights are >= 0).
"""

from __future__ import annotations

import math
import queue
import threading
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mhacli.analyses.stats import STAT_NAMES, LayerStats, StatsAccumulator, TextIndex, head_stats, layer_stats
from mhacli.engine.attention import KeepMap, block_rows, one_blas_thread
from mhacli.engine.blocks import Params, ZEdit
from mhacli.engine.forward import forward
from mhacli.engine.segments import PackSink, Segments, end_to_end
from mhacli.errors import UsageError

METRICS: dict[str, str] = {
    "js": "Jensen-Shannon divergence (bits, mean over query rows)",
    "tv": "total variation distance (mean over query rows)",
    "cosine": "cosine distance (1 - cosine similarity of the flattened maps)",
}
MODES = ("paired", "matched")
# The largest [.., n_seq, n_seq] float64 block divergence_matrix builds at once (32 MiB per temporary).
MAX_BLOCK_ELEMENTS = 1 << 22


class TokenizerMismatchError(UsageError):
    """The two models' tokenizers give different token ids for the same text."""


# --- metrics: [..., n_seq, n_seq] x [..., n_seq, n_seq] (broadcast) -> [...] -----------------------------------


def _sum_plog2p(p: np.ndarray) -> np.ndarray:
    """[..., n_seq, n_seq] float64 -> [..., n_seq]: sum_j p_j log2 p_j of each row, with 0 log 0 = 0."""
    plogp = np.zeros_like(p)
    np.log2(p, out=plogp, where=p > 0)
    plogp *= p
    return plogp.sum(axis=-1)


def _js_rows(p: np.ndarray, q: np.ndarray, hp: np.ndarray, hq: np.ndarray) -> np.ndarray:
    """float64 maps [..., n_seq, n_seq] and their _sum_plog2p rows [..., n_seq] -> JS in bits, mean over rows.

    JS = H(m) - (H(p) + H(q)) / 2 with m = (p + q) / 2, row by row."""
    rows = 0.5 * (hp + hq) - _sum_plog2p(0.5 * (p + q))  # [..., n_seq]
    return np.clip(rows, 0.0, 1.0).mean(axis=-1)  # rounding can leave -1e-17 where p == q


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence in bits (base-2 logs: within [0, 1]), mean over query rows."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    return _js_rows(p, q, _sum_plog2p(p), _sum_plog2p(q))


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """0.5 * sum_j |p_j - q_j| of each query row, mean over rows."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    return 0.5 * np.abs(p - q).sum(axis=-1).mean(axis=-1)


def cosine_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """1 - <p, q> / (|p| |q|) of the flattened maps."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    dot = (p * q).sum(axis=(-2, -1))
    norms = np.sqrt((p * p).sum(axis=(-2, -1)) * (q * q).sum(axis=(-2, -1)))
    return np.clip(1.0 - dot / norms, 0.0, 1.0)


METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "js": js_divergence,
    "tv": total_variation,
    "cosine": cosine_distance,
}


def check_metric(metric: str) -> str:
    if metric not in METRIC_FNS:
        raise UsageError(f"{{metric}} {metric!r} is not one of: {', '.join(METRICS)}", params=("metric",))
    return metric


def divergence(p: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """[..., n_seq, n_seq] x [..., n_seq, n_seq] -> [...] float64 (the leading axes broadcast)."""
    return METRIC_FNS[check_metric(metric)](p, q)


def divergence_matrix(
    a: np.ndarray, b: np.ndarray, metric: str, *, max_elements: int = MAX_BLOCK_ELEMENTS
) -> np.ndarray:
    """[na, n_seq, n_seq] x [nb, n_seq, n_seq] -> [na, nb]: every head of A against every head of B.

    Vectorised over blocks of head pairs; a block's float64 temporaries hold at most `max_elements` values each.
    """
    check_metric(metric)
    na, nb, n_seq = a.shape[0], b.shape[0], a.shape[-1]
    per_pair = n_seq * n_seq
    step_b = min(nb, max(1, max_elements // per_pair))
    step_a = min(na, max(1, max_elements // (step_b * per_pair)))
    out = np.empty((na, nb), dtype=np.float64)
    if metric == "js":  # each head's own sum p log p once, not once per pair
        ha = np.concatenate(
            [_sum_plog2p(a[i : i + step_a].astype(np.float64)) for i in range(0, na, step_a)]
        )  # [na, n_seq]
        hb = np.concatenate(
            [_sum_plog2p(b[j : j + step_b].astype(np.float64)) for j in range(0, nb, step_b)]
        )  # [nb, n_seq]
    for i in range(0, na, step_a):
        pa = a[i : i + step_a, None].astype(np.float64)  # [step_a, 1, n_seq, n_seq]
        for j in range(0, nb, step_b):
            pb = b[None, j : j + step_b].astype(np.float64)  # [1, step_b, n_seq, n_seq]
            if metric == "js":
                block = _js_rows(pa, pb, ha[i : i + step_a, None], hb[None, j : j + step_b])
            else:
                block = divergence(pa, pb, metric)
            out[i : i + step_a, j : j + step_b] = block  # [step_a, step_b]
    return out


class DivergenceAccumulator:
    """Paired divergences (head h of A against head h of B) from the two maps given block by block:

    rows a..b-1 of both over the same keys. Per row in float64 as the whole-map functions above, so the result
    equals theirs."""

    def __init__(self, n_head: int, n_seq: int, metric: str):
        self.metric, self.n_seq = check_metric(metric), n_seq
        self.rows = np.zeros((n_head, n_seq))  # js, tv: each row's divergence
        self.sums = np.zeros((3, n_head))  # cosine: <p, q>, <p, p>, <q, q>

    def add(self, a: int, b: int, p: np.ndarray, q: np.ndarray) -> None:
        """p, q [n_head, b - a, keys] float32: the same rows and keys of A and of B."""
        p, q = p.astype(np.float64), q.astype(np.float64)
        if self.metric == "js":
            self.rows[:, a:b] = np.clip(0.5 * (_sum_plog2p(p) + _sum_plog2p(q)) - _sum_plog2p(0.5 * (p + q)), 0.0, 1.0)
        elif self.metric == "tv":
            self.rows[:, a:b] = 0.5 * np.abs(p - q).sum(axis=-1)
        else:
            self.sums += [(p * q).sum(axis=(-2, -1)), (p * p).sum(axis=(-2, -1)), (q * q).sum(axis=(-2, -1))]

    def result(self) -> np.ndarray:
        """[n_head] float64"""
        if self.metric == "cosine":
            dot, pp, qq = self.sums
            return np.clip(1.0 - dot / np.sqrt(pp * qq), 0.0, 1.0)
        return self.rows.mean(axis=-1)


# --- matching -------------------------------------------------------------------------------------------------


def assign(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[na, nb] -> (rows, cols): the one-to-one matching of min(na, nb) pairs with the least total divergence."""
    from scipy.optimize import linear_sum_assignment  # imported only when shapes differ

    rows, cols = linear_sum_assignment(np.asarray(matrix, dtype=np.float64))
    return rows.astype(np.int64), cols.astype(np.int64)


def nearest(matrix: np.ndarray) -> np.ndarray:
    """[na, nb] -> [nb]: the A head with the least divergence from each B head (the first on ties)."""
    return np.argmin(matrix, axis=0)


# --- tokens ---------------------------------------------------------------------------------------------------


def first_difference(ids_a: Sequence[int], ids_b: Sequence[int]) -> int | None:
    """The first position where two token id sequences differ (the shorter length if one is a prefix); None if equal."""
    for i, (x, y) in enumerate(zip(ids_a, ids_b)):
        if int(x) != int(y):
            return i
    return None if len(ids_a) == len(ids_b) else min(len(ids_a), len(ids_b))


def check_same_tokens(
    ids_a: Sequence[int],
    ids_b: Sequence[int],
    show_a: Callable[[list[int]], list[str]],
    show_b: Callable[[list[int]], list[str]],
    where: str = "the text",
) -> None:
    """Raise TokenizerMismatchError, naming the first differing token, unless both models tokenize alike."""
    i = first_difference(ids_a, ids_b)
    if i is None:
        return

    def token(ids: Sequence[int], show: Callable[[list[int]], list[str]]) -> str:
        return f"{show([int(ids[i])])[0]!r} (id {int(ids[i])})" if i < len(ids) else "the end of the text"

    raise TokenizerMismatchError(
        f"the two models' tokenizers disagree on {where} at token {i}: MODEL_A has {token(ids_a, show_a)}, "
        f"MODEL_B has {token(ids_b, show_b)}; diff needs the same token ids for both"
    )


# --- one text -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDiff:
    """One text's comparison. Heads are flat (layer-major); NA heads in A, NB in B."""

    divergence: np.ndarray  # paired: [NA] (head i against head i); matched: [NA, NB]
    stats_a: np.ndarray  # [n_stat, NA] float64, NaN where undefined
    stats_b: np.ndarray  # [n_stat, NB]
    kinds_a: list[str]  # [NA]
    kinds_b: list[str]  # [NB]


def _layer_record(layer: int, attn: np.ndarray | LayerStats, ids: np.ndarray, stats: list, kinds: list) -> None:
    """Append one layer's statistics ([n_stat, n_head]) and kinds to the running lists.

    They come from its map, or from its streamed LayerStats."""
    heads = head_stats(layer, attn) if isinstance(attn, LayerStats) else layer_stats(layer, attn, ids)
    stats.append(np.array([[np.nan if h.values[s] is None else h.values[s] for h in heads] for s in STAT_NAMES]))
    kinds.extend(h.kind for h in heads)


def compare_text(
    params_a: Params, params_b: Params, ids: np.ndarray, metric: str, mode: str, edits_b: dict[int, ZEdit] | None = None
) -> TextDiff:
    """Run both models on `ids` and compare their heads.

    Paired: both forwards streamed in step, no map kept; matched: A's maps all kept, B streamed a layer at a time.
    `edits_b`: heads removed from B (ablation)."""
    return compare_pack(params_a, params_b, [ids], metric, mode, edits_b)[0]


def compare_pack(
    params_a: Params,
    params_b: Params,
    texts: Sequence[np.ndarray],
    metric: str,
    mode: str,
    edits_b: dict[int, ZEdit] | None = None,
) -> list[TextDiff]:
    """Run both models once on several texts packed end to end (mhacli.engine.segments) and compare their heads.

    Each text attends only to itself, its positions from 0: each text's TextDiff is compare_text's of it alone (to
    float32 rounding: the products run in other block shapes). One text runs unpacked.

    BLAS runs on one thread throughout, as the Ablator's (mhacli.analyses.ablate): paired mode's two forwards are
    already two threads, and OpenBLAS threads that spin on small products stall on a busy machine (measured: 200
    short texts on the bundled models, load 9, took 322 s with two BLAS threads and 3.8 s with one)."""
    with one_blas_thread():
        return _compare_pack(params_a, params_b, texts, metric, mode, edits_b)


def _compare_pack(
    params_a: Params,
    params_b: Params,
    texts: Sequence[np.ndarray],
    metric: str,
    mode: str,
    edits_b: dict[int, ZEdit] | None,
) -> list[TextDiff]:
    check_metric(metric)
    texts = [np.asarray(t, dtype=np.int64) for t in texts]
    ids, segments = end_to_end(texts)
    stats_a: list[list[np.ndarray]] = [[] for _ in texts]
    stats_b: list[list[np.ndarray]] = [[] for _ in texts]
    kinds_a: list[list[str]] = [[] for _ in texts]
    kinds_b: list[list[str]] = [[] for _ in texts]
    div: list[list[np.ndarray]] = [[] for _ in texts]  # per text: paired [n_head] per layer; matched [NA, n_head_b]
    if mode == "paired":
        ca, cb = params_a.config, params_b.config
        if (ca.n_layer, ca.n_head) != (cb.n_layer, cb.n_head):
            raise UsageError(
                f"paired mode needs the same shape: MODEL_A has {ca.n_layer} layers x {ca.n_head} heads, "
                f"MODEL_B {cb.n_layer} x {cb.n_head}"
            )
        for layer, ds, las, lbs in paired_pack_stream(params_a, params_b, ids, metric, edits_b, segments):
            for t, tokens in enumerate(texts):
                div[t].append(ds[t])  # [n_head]
                _layer_record(layer, las[t], tokens, stats_a[t], kinds_a[t])
                _layer_record(layer, lbs[t], tokens, stats_b[t], kinds_b[t])
        axis = 0  # [NA]
    elif mode == "matched":
        maps_a: list[list[np.ndarray]] = [[] for _ in texts]
        for layer, maps in maps_each(params_a, ids, texts, segments):
            for t, m in enumerate(maps):
                maps_a[t].append(m)
                _layer_record(layer, m, texts[t], stats_a[t], kinds_a[t])
        all_a = [np.concatenate(m) for m in maps_a]  # per text [NA, n_t, n_t]
        for layer, maps in maps_each(params_b, ids, texts, segments, edits_b):
            for t, m in enumerate(maps):
                div[t].append(divergence_matrix(all_a[t], m, metric))  # [NA, n_head_b]
                _layer_record(layer, m, texts[t], stats_b[t], kinds_b[t])
        axis = 1  # [NA, NB]
    else:
        raise UsageError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    return [
        TextDiff(
            np.concatenate(div[t], axis=axis),
            np.concatenate(stats_a[t], axis=1),
            np.concatenate(stats_b[t], axis=1),
            kinds_a[t],
            kinds_b[t],
        )
        for t in range(len(texts))
    ]


def maps_each(
    params: Params,
    ids: np.ndarray,
    texts: Sequence[np.ndarray],
    segments: Segments | None,
    edits: dict[int, ZEdit] | None = None,
) -> Iterator[tuple[int, list[np.ndarray]]]:
    """(layer, each text's map [n_head, n_t, n_t]) for every layer of one forward over `ids`.

    One text (segments None): the forward's own map; a pack: its attention split per text as it is computed
    (PackSink into one KeepMap per text), never a [n_head, n_seq, n_seq] map of the whole pack."""
    if segments is None:
        for trace in forward(params, ids, edits=edits):
            assert trace.attention is not None  # no sink: the forward keeps the map
            yield trace.layer, [trace.attention]
        return
    kept: dict[int, list[KeepMap]] = {}
    n_head = params.config.n_head

    def sinks(layer: int) -> PackSink:
        kept[layer] = [KeepMap(n_head, len(t)) for t in texts]
        return PackSink(segments, kept[layer])

    for trace in forward(params, ids, edits=edits, sinks=sinks, segments=segments):
        yield trace.layer, [k.probs for k in kept.pop(trace.layer)]


class _Stopped(Exception):
    """The reader of a feed went away: unwind the forward that feeds it."""


class _Feed:
    """A sink that gathers each block's tiles into a new array for the thread pairing the two models' blocks.

    The tiles come heads 0..n_head-1, in order (it is not `concurrent`). `fixed_rows` fixes the kernel's block
    rows, the same for both models."""

    def __init__(self, n_head: int, rows: int, stop: threading.Event):
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.n_head, self.fixed_rows, self.stop = n_head, rows, stop
        self._block: np.ndarray | None = None

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        if h == 0:
            self._block = np.empty((self.n_head, *p.shape[1:]), dtype=p.dtype)
        block = self._block
        assert block is not None  # the kernel hands head 0 of a block first (this sink is not concurrent)
        block[h : h + len(p)] = p
        if h + len(p) == self.n_head:
            self.put(("block", (a, b, lo, block)))

    def put(self, item: tuple) -> None:
        while True:
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.stop.is_set():
                    raise _Stopped from None

    def run(self, layers) -> None:
        """Thread body: run the forward (a generator of layers), announcing each finished layer."""
        try:
            for trace in layers:
                self.put(("layer", trace.layer))
            self.put(("end", None))
        except _Stopped:
            pass
        except BaseException as exc:  # handed over, raised in the pairing thread
            try:
                self.put(("error", exc))
            except _Stopped:
                pass


def paired_stream(
    params_a: Params, params_b: Params, ids: np.ndarray, metric: str, edits_b: dict[int, ZEdit] | None = None
) -> Iterator[tuple[int, np.ndarray, LayerStats, LayerStats]]:
    """Yield (layer, divergence [n_head], LayerStats of A, LayerStats of B) for every layer, without a map.

    Neither model's map is made: both forwards run at once (two threads; NumPy releases the GIL in its kernels), each
    hands its attention block by block, and the same rows of A and B are reduced together and dropped. Memory grows
    with n_seq, not n_seq^2."""
    stream = paired_pack_stream(params_a, params_b, ids, metric, edits_b)
    try:
        for layer, ds, las, lbs in stream:
            yield layer, ds[0], las[0], lbs[0]
    finally:
        stream.close()  # a reader that leaves early stops the two forwards' threads now


def paired_pack_stream(
    params_a: Params,
    params_b: Params,
    ids: np.ndarray,
    metric: str,
    edits_b: dict[int, ZEdit] | None = None,
    segments: Segments | None = None,
) -> Generator[tuple[int, list[np.ndarray], list[LayerStats], list[LayerStats]], None, None]:
    """paired_stream of a pack `segments` of texts (one text when None): each list one entry per text.

    Each text's divergences and statistics in its own coordinates, as if it ran alone (its part of every block:
    Segments.pieces)."""
    n_head, n_seq = params_a.config.n_head, len(ids)
    split = segments if segments is not None else Segments((n_seq,))
    texts = [ids[s : s + n] for s, n in zip(split.firsts.tolist(), split.lengths)]
    indexes = [TextIndex(text) for text in texts]  # each text's token matches, made once for every layer and model
    stop = threading.Event()
    feeds = [_Feed(params.config.n_head, block_rows(n_seq), stop) for params in (params_a, params_b)]
    runs = [
        forward(params_a, ids, sinks=lambda layer: feeds[0], segments=segments),
        forward(params_b, ids, edits=edits_b, sinks=lambda layer: feeds[1], segments=segments),
    ]
    threads = [threading.Thread(target=f.run, args=(r,), daemon=True, name="mha-diff") for f, r in zip(feeds, runs)]
    for t in threads:
        t.start()

    def fresh() -> list[tuple]:
        return [
            (
                DivergenceAccumulator(n_head, len(text), metric),
                StatsAccumulator(n_head, text, 0, index),
                StatsAccumulator(n_head, text, 0, index),
            )
            for text, index in zip(texts, indexes)
        ]

    try:
        accs = fresh()
        while True:
            (kind_a, va), (kind_b, vb) = feeds[0].queue.get(), feeds[1].queue.get()
            for kind, value in ((kind_a, va), (kind_b, vb)):
                if kind == "error":
                    raise value
            if kind_a != kind_b:
                raise RuntimeError(f"the two models' forwards went out of step ({kind_a} against {kind_b})")
            if kind_a == "end":
                return
            if kind_a == "layer":
                yield (
                    va,
                    [acc[0].result() for acc in accs],
                    [acc[1].result() for acc in accs],
                    [acc[2].result() for acc in accs],
                )
                accs = fresh()
                continue
            _add_block(split, accs, va, vb)
    finally:
        stop.set()
        for f in feeds:  # let a thread blocked on a full queue see the stop
            while not f.queue.empty():
                f.queue.get_nowait()
        for t in threads:
            t.join(timeout=5)


def _add_block(split: Segments, accs: list[tuple], va: tuple, vb: tuple) -> None:
    """One block of rows of both models' attention into each text's accumulators, in the text's own coordinates."""
    (a, b, lo_a, pa), (_, _, lo_b, pb) = va, vb
    for t, ra, rb, klo_a in split.pieces(a, b, lo_a):
        s = int(split.firsts[t])
        klo_b = max(lo_b, s)
        ta = pa[:, ra - a : rb - a, klo_a - lo_a : rb - lo_a]
        tb = pb[:, ra - a : rb - a, klo_b - lo_b : rb - lo_b]
        divergence, stats_a, stats_b = accs[t]
        stats_a.add(0, ra - s, rb - s, klo_a - s, ta)
        stats_b.add(0, ra - s, rb - s, klo_b - s, tb)
        lo = min(klo_a, klo_b)  # the same keys for both (outside a model's window its weights are 0)
        divergence.add(ra - s, rb - s, _widen(ta, klo_a - lo), _widen(tb, klo_b - lo))


def _widen(p: np.ndarray, left: int) -> np.ndarray:
    """[n_head, rows, keys] -> [n_head, rows, left + keys]: `left` zero columns in front."""
    if not left:
        return p
    out = np.zeros(p.shape[:2] + (left + p.shape[2],), dtype=p.dtype)
    out[..., left:] = p
    return out


# --- the report -----------------------------------------------------------------------------------------------


def _clean(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _kv(kv_head: int, head: int) -> int:
    return head if kv_head < 0 else kv_head


@dataclass(frozen=True)
class DiffRow:
    """One head of A compared with its counterpart (or its match) in B; the JSON head object."""

    layer_a: int
    head_a: int
    layer_b: int
    head_b: int
    divergence: float
    kind_a: str
    kind_b: str
    stat_deltas: dict[str, float | None]  # STAT_NAMES -> mean over texts of (B - A), None where undefined
    kv_head_a: int = -1  # the K/V head each query head reads (its own head in a model without GQA); -1: not given
    kv_head_b: int = -1

    def to_dict(self) -> dict:
        return {
            "layer_a": self.layer_a, "head_a": self.head_a, "kv_head_a": _kv(self.kv_head_a, self.head_a),
            "layer_b": self.layer_b, "head_b": self.head_b, "kv_head_b": _kv(self.kv_head_b, self.head_b),
            "divergence": self.divergence, "kind_a": self.kind_a, "kind_b": self.kind_b,
            "stat_deltas": dict(self.stat_deltas),
        }  # fmt: skip


@dataclass(frozen=True)
class NearestRow:
    """A head of B and the head of A it is closest to (matched mode)."""

    layer_b: int
    head_b: int
    layer_a: int
    head_a: int
    divergence: float
    kv_head_b: int = -1
    kv_head_a: int = -1

    def to_dict(self) -> dict:
        return {
            "layer_b": self.layer_b, "head_b": self.head_b, "kv_head_b": _kv(self.kv_head_b, self.head_b),
            "layer_a": self.layer_a, "head_a": self.head_a, "kv_head_a": _kv(self.kv_head_a, self.head_a),
            "divergence": self.divergence,
        }  # fmt: skip


@dataclass(frozen=True)
class DiffReport:
    metric: str
    mode: str
    n_texts: int
    shape_a: tuple[int, int]  # (n_layer, n_head)
    shape_b: tuple[int, int]
    heads: list[DiffRow]  # sorted by divergence, largest first
    nearest: list[NearestRow] | None  # matched mode: one per B head, in layer/head order
    unmatched_a: list[tuple[int, int]]  # (layer, head) left without a partner when A has more heads
    unmatched_b: list[tuple[int, int]]

    @property
    def max_divergence(self) -> float:
        return max((r.divergence for r in self.heads), default=0.0)

    def above(self, threshold: float) -> list[DiffRow]:
        return [r for r in self.heads if r.divergence > threshold]

    def to_dict(self) -> dict:
        doc: dict = {
            "metric": self.metric,
            "mode": self.mode,
            "n_texts": self.n_texts,
            "shape_a": {"n_layer": self.shape_a[0], "n_head": self.shape_a[1]},
            "shape_b": {"n_layer": self.shape_b[0], "n_head": self.shape_b[1]},
            "heads": [r.to_dict() for r in self.heads],
        }
        if self.mode == "matched":
            doc["nearest"] = [r.to_dict() for r in self.nearest or []]
            doc["unmatched_a"] = [{"layer": lay, "head": h} for lay, h in self.unmatched_a]
            doc["unmatched_b"] = [{"layer": lay, "head": h} for lay, h in self.unmatched_b]
        return doc


def _common_kind(kinds: Sequence[str]) -> str:
    """The most frequent kind over texts; on a tie, the one seen first."""
    return Counter(kinds).most_common(1)[0][0]


def _mean_defined(x: np.ndarray) -> np.ndarray:
    """[n_texts, ...] -> [...]: the mean over texts where defined, NaN where undefined on every text."""
    valid = ~np.isnan(x)
    count = valid.sum(axis=0)
    total = np.where(valid, x, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summarise(
    texts: Sequence[TextDiff],
    metric: str,
    mode: str,
    shape_a: tuple[int, int],
    shape_b: tuple[int, int],
    groups: tuple[int, int] = (1, 1),
) -> DiffReport:
    """Average the per-text comparisons, match heads when the mode says so, and rank the pairs.

    groups: each model's query heads per K/V head (query head h reads K/V head h // group).
    """
    if not texts:
        raise UsageError("nothing to compare: no texts")
    check_metric(metric)
    div = np.mean([t.divergence for t in texts], axis=0)  # paired [NA]; matched [NA, NB]
    stats_a = np.stack([t.stats_a for t in texts])  # [n_texts, n_stat, NA]
    stats_b = np.stack([t.stats_b for t in texts])  # [n_texts, n_stat, NB]
    na, nb = stats_a.shape[-1], stats_b.shape[-1]
    pos_a = [divmod(i, shape_a[1]) for i in range(na)]
    pos_b = [divmod(j, shape_b[1]) for j in range(nb)]
    kinds_a = [_common_kind([t.kinds_a[i] for t in texts]) for i in range(na)]
    kinds_b = [_common_kind([t.kinds_b[j] for t in texts]) for j in range(nb)]
    near: list[NearestRow] | None = None
    if mode == "paired":
        rows, cols, pair_div = np.arange(na), np.arange(nb), div
    else:
        rows, cols = assign(div)
        pair_div = div[rows, cols]
        best = nearest(div)
        near = [
            NearestRow(
                *pos_b[j], *pos_a[int(best[j])], float(div[best[j], j]),
                pos_b[j][1] // groups[1], pos_a[int(best[j])][1] // groups[0],
            )
            for j in range(nb)
        ]  # fmt: skip
    deltas = _mean_defined(stats_b[:, :, cols] - stats_a[:, :, rows])  # [n_stat, n_pairs]
    heads = [
        DiffRow(
            *pos_a[i], *pos_b[j], float(pair_div[k]), kinds_a[i], kinds_b[j],
            {s: _clean(deltas[n, k]) for n, s in enumerate(STAT_NAMES)},
            pos_a[i][1] // groups[0], pos_b[j][1] // groups[1],
        )
        for k, (i, j) in enumerate(zip(rows.tolist(), cols.tolist()))
    ]  # fmt: skip
    heads.sort(key=lambda r: (-r.divergence, r.layer_b, r.head_b))
    matched_a, matched_b = set(rows.tolist()), set(cols.tolist())
    return DiffReport(
        metric,
        mode,
        len(texts),
        shape_a,
        shape_b,
        heads,
        near,
        [pos_a[i] for i in range(na) if i not in matched_a],
        [pos_b[j] for j in range(nb) if j not in matched_b],
    )


# --- flat rows for csv/tsv and the plain table -----------------------------------------------------------------

DIFF_COLUMNS = (
    "layer_a", "head_a", "layer_b", "head_b", "divergence", "kind_a", "kind_b", *(f"delta_{s}" for s in STAT_NAMES),
)  # fmt: skip


def table_row(row: DiffRow) -> list:
    """A DiffRow as the DIFF_COLUMNS values (None where a delta is undefined)."""
    return [
        row.layer_a, row.head_a, row.layer_b, row.head_b, row.divergence, row.kind_a, row.kind_b,
        *(row.stat_deltas[s] for s in STAT_NAMES),
    ]  # fmt: skip
