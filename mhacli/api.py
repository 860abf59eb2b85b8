"""The Python API: the one door to the analyses, for notebooks and scripts (the CLI's commands are to stand on it).

    import mhacli
    model = mhacli.load("sample")                  # any form -m takes: a directory, a .safetensors file, a hub id
    run = model.run("The cat sat on the mat.")     # or model.run(ids=[...])
    run.attention(1)                               # [n_head, n_seq, n_seq] float32, computed once per run
    run.stats()                                    # every head's statistics and kind (HeadStats), streamed
    mhacli.diff(model_a, model_b, text)            # the DiffReport `mha diff` builds

Arrays are NumPy, float32 as the forward computes them; nothing here imports torch, rich or matplotlib (a page or
a figure imports what it needs when asked for). Every error is one of mhacli.errors' typed exceptions (MhaError
and subclasses), the ones the CLI maps to exit codes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mhacli import api_args as args
from mhacli.analyses.ablate import METHODS, Head, HeadEffect, check_head, removal_edits
from mhacli.analyses.census import PROBES, HeadVerdict, ProbeSpec, Tally, verdicts
from mhacli.analyses.circuits import MODES
from mhacli.analyses.diff import METRICS, DiffReport, check_metric
from mhacli.analyses.explain import Explanation
from mhacli.analyses.heads import HeadView, memory_needed
from mhacli.analyses.loss import text_losses
from mhacli.analyses.stats import STAT_NAMES, HeadStats
from mhacli.analyses.verify import HIDDEN_ATOL
from mhacli.config import ModelConfig
from mhacli.engine.attention import DISCARD, Sink
from mhacli.engine.blocks import ZEdit
from mhacli.engine.forward import embed, forward_from
from mhacli.engine.segments import PACK_TOKENS
from mhacli.errors import TextError, UsageError
from mhacli.io.textin import TokenizedText, from_ids, ids_from_items, tokenize
from mhacli.io.textin import check_ids as check_id_values
from mhacli.io.tokenizer import Tokenizer, load_tokenizer
from mhacli.io.weights import Checkpoint, ModelFiles, load_model
from mhacli.ops import census as censuses
from mhacli.ops import diff as diffs
from mhacli.ops.ablation import Progress, ablate_heads, check_scorable, progress_ticker
from mhacli.ops.attribute import AttributeRequest, AttributionReport, run_attribute
from mhacli.ops.circuits import CircuitsReport, CircuitsRequest, run_circuits
from mhacli.ops.diff import DiffRequest
from mhacli.ops.explain import explain as explain_head
from mhacli.ops.heads import HeadsRequest, InspectResult, check_heads, inspect_picture, plan_heads
from mhacli.ops.lens import LensReport, LensRequest, run_lens
from mhacli.ops.memory import Size, memory_limit
from mhacli.ops.patch import PatchReport, PatchRequest, run_patch

__all__ = [
    "Ablation", "Census", "Model", "Run", "census", "diff", "load",
    # the vocabulary both doors share: what a request may name, and the types it gets back
    "HIDDEN_ATOL", "METHODS", "METRICS", "MODES", "PROBES", "STAT_NAMES", "ProbeSpec",
    "AttributionReport", "Checkpoint", "CircuitsReport", "DiffReport", "LensReport", "HeadStats", "HeadView",
    "ModelFiles", "TokenizedText", "Tokenizer",
]  # fmt: skip

IdsLike = Sequence[int] | np.ndarray


def load(model: str | Path | None = None, *, cache: bool | None = None) -> Model:
    """A model and its tokenizer, from any form `mha -m` accepts.

    A directory, a .safetensors file, a Hugging Face id, `sample` or `sample-early` (None: $MHA_MODEL, else
    `sample`). Weights are read when first needed; cache=None keeps them once read for models under 512 MiB (True:
    always, False: never).
    """
    if model is not None and not isinstance(model, str):
        model = args.path(model, "model")
    ckpt = load_model(None if model is None else str(model), cache=args.optional_boolean(cache, "cache"))
    return Model(ckpt, load_tokenizer(ckpt.files.tokenizer_path))


def check_text(text: object) -> str:
    """The CLI's rules for a text (mhacli.io.textin.read_text), for a str given directly: no stdin here."""
    if not isinstance(text, str):
        raise UsageError(f"text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextError("text is not valid UTF-8") from exc
    if text.strip() == "":
        raise TextError("text is empty")
    return text


def _explain_args(layer: object, head: object, query: object) -> tuple[int, int, int | None]:
    """explain's layer, head and query (None: the last token) as ints, checked before any forward runs."""
    return args.integer(layer, "layer"), args.integer(head, "head"), args.optional_integer(query, "query")


def _id_values(ids: IdsLike) -> list[int]:
    """Token ids given directly, as a list.

    A 1-D sequence of integers, each checked by the rule --ids follows (mhacli.io.textin.ids_from_items: an integer
    >= 0; not empty).
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise UsageError(f"ids must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer)):
        raise UsageError(f"ids must be integers, got {arr.dtype}")
    return ids_from_items(arr.tolist())


def check_ids(ids: IdsLike, config: ModelConfig, *, truncate: bool = False) -> np.ndarray:
    """Token ids given directly.

    A non-empty 1-D sequence of integers in 0..vocab_size-1, at most n_positions of them (with truncate=True the
    first n_positions are kept). Returns them as int64 [n_seq]. The same check, and the same messages, as the CLI's
    --ids (mhacli.io.textin.check_ids).
    """
    kept, _ = check_id_values(
        _id_values(ids),
        config.vocab_size,
        config.n_positions,
        truncate=truncate,
    )
    return np.asarray(kept, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Model:
    """A loaded model: its checkpoint (config, lazily read tensors) and tokenizer."""

    checkpoint: Checkpoint
    tokenizer: Tokenizer

    @property
    def config(self) -> ModelConfig:
        return self.checkpoint.config

    @property
    def source(self) -> str:
        return self.checkpoint.source

    def tokenize(self, text: str | None = None, *, ids: IdsLike | None = None, truncate: bool = False) -> TokenizedText:
        """Text (the CLI's rules: mhacli.io.textin.tokenize) or ids -> TokenizedText (ids, tokens, truncated_from)."""
        if (text is None) == (ids is None):
            raise UsageError("give a text or ids=, not both and not neither")
        truncate = args.boolean(truncate, "truncate")
        c = self.config
        if text is not None:
            return tokenize(self.tokenizer, check_text(text), c.n_positions, vocab_size=c.vocab_size, truncate=truncate)
        if ids is None:  # not reached: exactly one of text and ids is given (checked above)
            raise UsageError("give a text or ids=, not both and not neither")
        values = _id_values(ids)
        return from_ids(
            self.tokenizer,
            values,
            c.n_positions,
            vocab_size=c.vocab_size,
            truncate=truncate,
        )

    def run(
        self,
        text: str | None = None,
        *,
        ids: IdsLike | None = None,
        truncate: bool = False,
        remove: Iterable[Head] | None = None,
        max_memory: Size = None,
    ) -> Run:
        """One text through the model.

        Nothing is computed until asked for; what is computed is kept. `remove`: heads (layer, head) zeroed
        before W_O in every computation of this run (`--ablate`). `max_memory` (bytes, or a size like '2G';
        default 80% of available memory): a computation of this run that would need more is refused with a
        ResourceError before it starts (the CLI's --max-memory guard).
        """
        heads = sorted(set(head_pairs(remove, "remove")))
        for h in heads:
            check_head(h, self.config.n_layer, self.config.n_head)
        memory_limit(max_memory)  # a bad max_memory is refused now, not when the first computation starts
        return Run(self, self.tokenize(text, ids=ids, truncate=truncate), tuple(heads), max_memory)

    def memory_needed(self, n_seq: int, *, maps: bool = True) -> int:
        """Bytes at the peak of a run of n_seq tokens: the weights held and the forward's working set.

        With maps=True the run keeps every layer's maps (as Run.attention does for each layer asked for), as the
        commands' --max-memory estimate counts them.
        """
        c = self.config
        n_seq, maps = args.integer(n_seq, "n_seq"), args.boolean(maps, "maps")
        if not 1 <= n_seq <= c.n_positions:
            raise UsageError(f"n_seq {n_seq} is out of range: this model runs 1..{c.n_positions} tokens")
        return memory_needed(
            c,
            n_seq,
            kept_layers=c.n_layer if maps else 0,
            kept_heads=c.n_head if maps else 0,
            keep_maps=maps,
            weight_bytes=self.checkpoint.weight_bytes(),
        )

    def explain(
        self,
        text: str | None = None,
        *,
        ids: IdsLike | None = None,
        layer: int,
        head: int,
        query: int | None = None,
        truncate: bool = False,
        max_memory: Size = None,
    ) -> Explanation:
        """One head's computation for one query token (default the last; negative counts from the end)."""
        layer, head, query = _explain_args(layer, head, query)
        return self.run(text, ids=ids, truncate=truncate, max_memory=max_memory).explain(layer, head, query)

    def circuits(
        self,
        *,
        modes: Sequence[str] = MODES,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        top: int = 3,
        fold_ln: bool = False,
        unembed: bool = True,
    ) -> CircuitsReport:
        """Heads read from their weights alone, as `mha circuits` computes them (docs/commands/circuits.md).

        Composition scores of every earlier -> later head pair in `modes` (Q, K, V) with an end in `layers` x
        `heads`, their random baselines, and the copying score and `top` OV and QK token pairs of each selected
        head. `fold_ln`: norms folded as TransformerLens' default processing; `unembed=False`: the output head is
        not read (no copying scores, no OV pairs). `.circuits` holds the arrays (scores [n_layer, n_head, n_layer,
        n_head] per mode), `.to_dict()` the command's JSON document."""
        request = CircuitsRequest(
            tuple(args.strings(modes, "modes")),
            args.optional_integers(layers, "layers"),
            args.optional_integers(heads, "heads"),
            args.integer(top, "top"),
            args.boolean(fold_ln, "fold_ln"),
            args.boolean(unembed, "unembed"),
        )
        return run_circuits(self.checkpoint, self.tokenizer, request)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<mhacli.Model {self.source}: {c.model_type}, {c.n_layer} layers x {c.n_head} heads ({c.layout}, "
            f"n_kv_head {c.n_kv_head}, d_head {c.d_head}), n_positions {c.n_positions}>"
        )


@dataclass(eq=False)
class Run:
    """One text through one model. attention(layer) and residual(layer) are computed on first use and kept.

    Later layers resume from the kept residual stream, so a layer is computed once per run whichever is asked first.
    """

    model: Model
    tokenized: TokenizedText
    removed: tuple[Head, ...] = ()
    max_memory: Size = None  # the memory guard's limit (Model.run)
    _inputs: list[np.ndarray] = field(default_factory=list, repr=False)  # residual stream entering layer k
    _attention: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _stats: dict[int, list[HeadStats]] = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> list[str]:
        return list(self.tokenized.tokens)

    @property
    def ids(self) -> np.ndarray:
        """[n_seq] int64 (a copy)."""
        return self.tokenized.ids.copy()

    @property
    def n_seq(self) -> int:
        return len(self.tokenized.ids)

    @property
    def truncated_from(self) -> int | None:
        """The text's token count when truncate=True cut it, else None."""
        return self.tokenized.truncated_from

    @property
    def edits(self) -> dict[int, ZEdit] | None:
        return removal_edits(self.removed) if self.removed else None

    def _layer(self, layer: int, what: str = "layer") -> int:
        n = self.model.config.n_layer
        layer = args.integer(layer, what)
        if not -n <= layer < n:
            raise UsageError(f"{what} {layer} is out of range: this model has layers 0..{n - 1}")
        return int(layer) % n

    def _guard(self, layers: list[int] | None, *, keep_maps: bool, narrow: str = "text") -> None:
        """The CLI's memory guard (mhacli.ops.memory) for this run: ResourceError past max_memory."""
        check_heads(
            self.model.checkpoint,
            self.n_seq,
            layers,
            None,
            keep_maps=keep_maps,
            max_memory=self.max_memory,
            narrow=narrow,
        )

    def _advance(self, stop: int, keep: int | None = None) -> None:
        """Run the layers not yet run, up to stop-1, keeping the map of layer `keep` (others are not kept)."""
        params = self.model.checkpoint
        if not self._inputs:
            self._inputs.append(embed(params, self.tokenized.ids))
        first = len(self._inputs) - 1

        def sinks(layer: int) -> Sink | None:
            return None if layer == keep else DISCARD

        for trace in forward_from(params, self._inputs[-1], first, stop, edits=self.edits, sinks=sinks):
            self._inputs.append(trace.residual)
            if trace.attention is not None:
                self._attention[trace.layer] = trace.attention

    def attention(self, layer: int) -> np.ndarray:
        """[n_head, n_seq, n_seq] float32: layer `layer`'s attention, rows the queries (each sums to 1).

        Computed once; the same (read-only) array on every call.
        """
        layer = self._layer(layer)
        if layer not in self._attention:
            self._guard([layer], keep_maps=True, narrow="layer_map")
            if layer < len(self._inputs) - 1:  # the stream entering it is kept: that one layer again, with its map
                for trace in forward_from(
                    self.model.checkpoint, self._inputs[layer], layer, layer + 1, edits=self.edits, sinks=lambda _: None
                ):
                    if trace.attention is None:
                        raise TypeError(f"layer {layer} was run for its map but kept none")
                    self._attention[layer] = trace.attention
            else:
                self._advance(layer + 1, keep=layer)
            self._attention[layer].flags.writeable = False
        return self._attention[layer]

    def residual(self, layer: int) -> np.ndarray:
        """[n_seq, n_embd] float32: the residual stream after block `layer` (before the final norm), read-only."""
        layer = self._layer(layer)
        if layer + 1 >= len(self._inputs):
            self._guard([layer], keep_maps=False)
            self._advance(layer + 1)
        out = self._inputs[layer + 1]
        out.flags.writeable = False
        return out

    def stats(self, layer: int | None = None, head: int | None = None) -> list[HeadStats]:
        """The statistics and kind of every head, or of one layer's heads, or of one head; layer-major order.

        The CLI's HeadStats, as `mha stats` computes them: streamed, no map kept.
        """
        layers = list(range(self.model.config.n_layer)) if layer is None else [self._layer(layer)]
        head = args.optional_integer(head, "head")
        missing = [x for x in layers if x not in self._stats]
        if missing:
            for view in self._heads(HeadsRequest(missing, keep_maps=False)):
                self._stats.setdefault(view.layer, []).append(view.stats)
        out = [s for x in layers for s in self._stats[x]]
        if head is not None:
            n_head = self.model.config.n_head
            if not -n_head <= head < n_head:  # an int: args.optional_integer above
                raise UsageError(f"head {head!r} is out of range: this model has heads 0..{n_head - 1}")
            out = [s for s in out if s.head == int(head) % n_head]
        return out

    def views(self) -> list[HeadView]:
        """Every head's map with its statistics (computed from the maps, as `mha inspect` does).

        What pages and figures draw.
        """
        return self._heads(HeadsRequest(keep_maps=True, narrow="maps"))

    def _heads(self, request: HeadsRequest) -> list[HeadView]:
        """Heads of this run through the operation `mha inspect` and `mha stats` run (mhacli.ops.heads)."""
        request = replace(request, max_memory=self.max_memory, ablate=self.removed or None)
        return plan_heads(self.model.checkpoint, self.tokenized.ids, request).run()

    def loss(self, loss_from: int = 1) -> float:
        """The mean next-token loss (nats/token) over target positions t >= max(1, loss_from).

        This is `mha ablate`'s baseline; a ModelError when the checkpoint has no output head.
        """
        loss_from = args.integer(loss_from, "loss_from")
        if loss_from < 0:  # the rule ablate's loss_from follows (mhacli.ops.ablation)
            raise UsageError(f"{{loss_from}} {loss_from} must be 0 or more", params=("loss_from",))
        last = self.residual(self.model.config.n_layer - 1)
        losses = text_losses(self.model.checkpoint, last, self.tokenized.ids, loss_from)
        return float(losses.sum(dtype=np.float64)) / len(losses)

    def explain(self, layer: int, head: int, query: int | None = None) -> Explanation:
        """Head `head` of layer `layer` for query token `query` (default the last), step by step.

        Every intermediate is checked against the forward (Explanation.matches).
        """
        layer, head, query = _explain_args(layer, head, query)
        if self.removed:
            raise UsageError("explain runs the intact model: make the run without remove=")
        return explain_head(self.model.checkpoint, self.tokenized.ids, layer, head, query, max_memory=self.max_memory)

    def ablate(
        self,
        heads: Iterable[Head] | None = None,
        *,
        method: str = "zero",
        loss_from: int = 1,
        progress: Progress | None = None,
    ) -> Ablation:
        """Each head removed alone (`mha ablate`).

        The loss against the intact model's, largest increase first. heads: (layer, head) pairs (default every
        head); method: zero, or mean (its mean output on this text). progress(done, total): called with 0 before
        the first head and after each head; returning False stops between two heads and raises Cancelled (no
        partial result). It does not change the numbers.
        """
        if self.removed:
            raise UsageError("ablate measures against the intact model: make the run without remove=")
        if method not in METHODS:
            raise UsageError(f"method {method!r} is not one of: {', '.join(METHODS)}")
        loss_from, progress = args.integer(loss_from, "loss_from"), args.callback(progress, "progress")
        chosen = None if heads is None else head_pairs(heads, "heads")
        check_scorable(self.model.checkpoint, [(self.tokenized, "the text")], self.max_memory)
        ablator, effects, _ = ablate_heads(
            self.model.checkpoint,
            [self.tokenized],
            chosen,
            method,
            loss_from,
            max_memory=self.max_memory,
            ticker=progress_ticker(progress),
        )
        return Ablation(method, loss_from, ablator.n_targets, ablator.baseline, effects)

    def attribute(
        self,
        answer: str | int | None = None,
        wrong: str | int | None = None,
        pos: int = -1,
        *,
        fold_value_bias: bool = False,
        top_tokens: int = 3,
    ) -> AttributionReport:
        """Direct logit attribution (`mha attribute`): the answer's logit, or answer - wrong, split into components.

        answer / wrong: one token as text (' Paris') or as an id; answer None: the model's top prediction at `pos`
        (negative counts from the end). `.attribution` holds the numbers (components in model order, `.heads()`
        [n_layer, n_head], `.value`, `.sum`), `.to_dict()` the command's JSON document (docs/commands/attribute.md).
        """
        if self.removed:
            raise UsageError("attribute reads the intact model: make the run without remove=")
        answer, wrong = args.token(answer, "answer"), args.token(wrong, "wrong")
        pos, top_tokens = args.integer(pos, "pos"), args.integer(top_tokens, "top_tokens")
        fold_value_bias = args.boolean(fold_value_bias, "fold_value_bias")
        request = AttributeRequest(
            answer if isinstance(answer, str) else None,
            None if answer is None or isinstance(answer, str) else int(answer),
            wrong if isinstance(wrong, str) else None,
            None if wrong is None or isinstance(wrong, str) else int(wrong),
            pos,
            fold_value_bias,
            top_tokens,
            self.max_memory,
        )
        return run_attribute(self.model.checkpoint, self.model.tokenizer, self.tokenized, request)

    def lens(self, top: int = 5, pos: int | Sequence[int] | None = None) -> LensReport:
        """The logit lens (`mha lens`): every layer's (-1: the embeddings) top tokens at every position (or `pos`).

        `.lens` holds the numbers, `.to_dict()` the command's JSON document (docs/commands/lens.md); the last
        layer's distribution is the model's own.
        """
        if self.removed:
            raise UsageError("lens reads the intact model: make the run without remove=")
        positions = (
            None if pos is None else [args.integer(pos, "pos")] if args.is_int(pos) else args.integers(pos, "pos")
        )
        request = LensRequest(args.integer(top, "top"), positions, self.max_memory)
        return run_lens(self.model.checkpoint, self.model.tokenizer, self.tokenized, request)

    def save(self, path: str | Path, *, dpi: int = 200) -> Path:
        """Write every head's maps and statistics, the kind chosen by the suffix (as `mha inspect --save`).

        .html: one offline page; .png/.svg/.pdf: a figure (needs matplotlib); .npz: the attention tensor.
        """
        from mhacli.views import save as saving

        path, dpi = args.path(path, "path"), args.integer(dpi, "dpi")
        targets = saving.parse([path], InspectResult.PICTURES, dpi=dpi)
        saving.write_all(targets, inspect_picture(self.model.checkpoint, self.tokenized, self.views()), dpi=dpi)
        return path

    def page(self) -> str:
        """The offline HTML page of this run (every head's map; what `mha inspect --save x.html` writes)."""
        from mhacli.views import page as webpage

        return webpage.page_for(inspect_picture(self.model.checkpoint, self.tokenized, self.views()))

    def _repr_html_(self) -> str:
        """Jupyter: the page, isolated in an iframe (its styles and scripts stay inside)."""
        return (
            f'<iframe srcdoc="{html.escape(self.page(), quote=True)}" '
            'style="width: 100%; height: 640px; border: 0" sandbox="allow-scripts"></iframe>'
        )

    def __repr__(self) -> str:
        shown = "".join(self.tokenized.tokens)
        shown = shown if len(shown) <= 60 else shown[:59] + "…"
        removed = f", heads removed: {', '.join(f'{lay}.{h}' for lay, h in self.removed)}" if self.removed else ""
        return f"<mhacli.Run {self.model.source}: {self.n_seq} tokens {shown!r}{removed}>"


@dataclass(frozen=True)
class Ablation:
    """`mha ablate` for one text: the intact loss and each removed head's, sorted by delta (largest first)."""

    method: str
    loss_from: int
    n_targets: int
    baseline: float  # nats/token
    heads: list[HeadEffect]

    def to_dict(self) -> dict:
        return {
            "method": self.method, "loss_from": self.loss_from, "n_targets": self.n_targets,
            "baseline_loss": self.baseline,
            "heads": [{"layer": e.layer, "head": e.head, "loss": e.loss, "delta": e.delta, "delta_pct": e.delta_pct}
                      for e in self.heads],
        }  # fmt: skip


def head_pairs(value: object, name: str) -> list[Head]:
    """`remove=` / `remove_b=`: (layer, head) pairs of integers.

    Anything else is a UsageError naming the argument, never a TypeError or ValueError from unpacking it.
    """
    if value is None:
        return []
    bad = UsageError(f"{name} must be (layer, head) pairs of integers, e.g. [(0, 1)]; got {value!r:.60}")
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise bad
    pairs: list[Head] = []
    for pair in value:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (Sequence, np.ndarray)) or len(pair) != 2:
            raise bad
        if not all(args.is_int(x) for x in pair):
            raise bad
        pairs.append((int(pair[0]), int(pair[1])))
    return pairs


def diff(
    model_a: Model,
    model_b: Model,
    text: str | Sequence[str],
    *,
    metric: str = "js",
    match: bool = False,
    remove_b: Iterable[Head] | None = None,
    truncate: bool = False,
    max_memory: Size = None,
) -> DiffReport:
    """Per-head divergence of model_b's attention from model_a's on the same token ids (`mha diff`).

    Head by head when their shapes agree (unless match=True), else matched (Hungarian) and nearest heads. Several
    texts: the mean over texts. metric: js (bits), tv or cosine. remove_b: heads of model_b zeroed first. A request
    needing more than max_memory (default 80% of available memory) is refused with a ResourceError.
    """
    check_metric(args.string(metric, "metric"))
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        args.of_type(m, Model, name, "a Model (mhacli.load(...))")
    remove_b = head_pairs(remove_b, "remove_b")
    texts = args.text_or_texts(text, "text")
    match, truncate = args.boolean(match, "match"), args.boolean(truncate, "truncate")
    memory_limit(max_memory)
    if not texts:
        raise TextError("no text given")
    a, b = (model_a.checkpoint, model_a.tokenizer), (model_b.checkpoint, model_b.tokenizer)
    where = (lambda n: "the text") if len(texts) == 1 else (lambda n: f"text {n}")
    raws: list[tuple[str | list[int], str]] = [(check_text(t), where(n)) for n, t in enumerate(texts)]
    request = DiffRequest(raws, metric, match, list(remove_b or ()), truncate, max_memory)
    return diffs.diff(a, b, request).report


def patch(
    model: Model,
    clean: str | None = None,
    corrupt: str | None = None,
    *,
    answer: str | None = None,
    wrong: str | None = None,
    pairs: Sequence[dict] | None = None,
    metric: str = "logit_diff",
    site: str = "z",
    by_pos: bool = False,
    noise: bool = False,
    sender: str | None = None,
    receiver_site: str = "q",
    pack_tokens: int = PACK_TOKENS,
) -> PatchReport:
    """Activation patching per head (`mha patch`): each head's share of the clean behaviour it restores.

    clean/corrupt: prompts of the same token length, answer/wrong one token each; or `pairs`, dicts with those four
    keys (values are means over pairs). site: z, q, k, v (per K/V head), pattern, or resid (the residual stream
    entering each layer, at each position: by_pos is implied; rows have head None); sender "L.H" with receiver_site
    q|k|v: direct path patching. Several pairs run packed, up to pack_tokens tokens per rerun (1: each alone).
    Returns the report: .heads (sorted by score), .to_dict().
    """
    args.of_type(model, Model, "model", "a Model (mhacli.load(...))")
    clean, corrupt = args.optional_string(clean, "clean"), args.optional_string(corrupt, "corrupt")
    answer, wrong = args.optional_string(answer, "answer"), args.optional_string(wrong, "wrong")
    metric, site = args.string(metric, "metric"), args.string(site, "site")
    sender, receiver_site = args.optional_string(sender, "sender"), args.string(receiver_site, "receiver_site")
    by_pos, noise = args.boolean(by_pos, "by_pos"), args.boolean(noise, "noise")
    pack_tokens = args.integer(pack_tokens, "pack_tokens")
    if pairs is not None and not isinstance(pairs, str):
        pairs = [args.of_type(p, dict, f"pairs[{n}]", "a dict") for n, p in enumerate(args.list_of(pairs, "pairs"))]
    request = PatchRequest(
        clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, pairs=pairs, metric=metric, site=site,
        by_pos=by_pos, noise=noise, sender=sender, receiver_site=receiver_site, pack_tokens=pack_tokens,
    )  # fmt: skip
    return PatchReport(run_patch(model.checkpoint, model.tokenizer, request))


@dataclass(frozen=True)
class Census:
    """`mha census`.

    Each head's verdict (kind, confidence, evidence) and the per-source tallies (mean and spread of every statistic
    over that source's texts: Tally.means(), Tally.stds()); to_dict() is `mha census -f json`'s document (the
    corpus' path null).
    """

    heads: list[HeadVerdict]
    tallies: dict[str, Tally]
    spec: ProbeSpec
    probes: tuple[str, ...]
    doc: dict = field(default_factory=dict, repr=False, compare=False)

    def head(self, layer: int, head: int) -> HeadVerdict:
        return next(v for v in self.heads if (v.layer, v.head) == (layer, head))

    def to_dict(self) -> dict:
        return self.doc


def census(
    model: Model,
    texts: Iterable[str] | None = None,
    *,
    probes: Sequence[str] = PROBES,
    probe_count: int = 20,
    repeat_length: int = 20,
    random_length: int = 64,
    seed: int = 0,
    truncate: bool = False,
    workers: int = 1,
    dask: str | None = None,
    max_memory: Size = None,
) -> Census:
    """Every head's kind over seeded probes (repeat, random) and `texts` (a corpus), as `mha census` computes it.

    See docs/census.md; the same implementation, mhacli.ops.census.take_census. It runs in this process
    (workers=1), in `workers` local processes, or on a Dask cluster (dask: an address or 'local'). A text that
    cannot run raises its error.
    """
    args.of_type(model, Model, "model", "a Model (mhacli.load(...))")
    probes = tuple(dict.fromkeys(args.strings(probes, "probes")))
    probe_count, seed = args.integer(probe_count, "probe_count"), args.integer(seed, "seed")
    repeat_length, random_length = (
        args.integer(repeat_length, "repeat_length"),
        args.integer(random_length, "random_length"),
    )
    truncate, dask = args.boolean(truncate, "truncate"), args.optional_string(dask, "dask")
    memory_limit(max_memory)
    for p in probes:
        if p not in PROBES:
            raise UsageError(f"probe {p!r} is not one of: {', '.join(PROBES)}")
    if probes and probe_count < 1:
        raise UsageError(f"probe_count {probe_count} must be at least 1")
    if not args.is_int(workers) or workers < 1:
        raise UsageError(f"workers {workers!r} must be an int, at least 1")
    corpus = None if texts is None else [check_text(t) for t in args.text_or_texts(texts, "texts")]
    if not probes and not corpus:
        raise UsageError("nothing to run: no probes and no texts")
    spec = ProbeSpec(probe_count, repeat_length, random_length, seed)
    lines = None if not corpus else [(None, t) for t in corpus]
    request = censuses.CensusRequest(probes, spec, lines, None, truncate, int(workers), dask, max_memory, strict=True)
    done = censuses.take_census(model.checkpoint, model.tokenizer, request)
    ran = done.run.ran()
    return Census(verdicts(ran), ran, spec, probes, done.doc)
