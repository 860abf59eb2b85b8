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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mhacli.ablate import METHODS, Ablator, Head, HeadEffect, ablate_each, check_head, removal_edits
from mhacli.attention import DISCARD, Sink
from mhacli.blocks import ZEdit
from mhacli.config import ModelConfig
from mhacli.divergence import DiffReport, check_metric, check_same_tokens, compare_text, summarise
from mhacli.errors import TextError, UsageError
from mhacli.explain import Explanation
from mhacli.explain import explain as explain_head
from mhacli.heads import HeadView, analyse, memory_needed
from mhacli.kinds import PROBES, SOURCES, HeadVerdict, ProbeSpec, Tally, probe, text_stats, verdicts
from mhacli.loss import text_losses
from mhacli.model import embed, forward_from
from mhacli.stats import HeadStats, layer_stats
from mhacli.textin import TokenizedText, check_ids_fit, tokenize
from mhacli.tokenizer import Tokenizer, load_tokenizer
from mhacli.weights import Checkpoint, load_model

__all__ = ["Ablation", "Census", "Model", "Run", "census", "diff", "load"]

IdsLike = Sequence[int] | np.ndarray


def load(model: str | Path | None = None, *, cache: bool | None = None) -> Model:
    """A model and its tokenizer, from any form `mha -m` accepts: a directory, a .safetensors file, a Hugging Face
    id, `sample` or `sample-early` (None: $MHA_MODEL, else `sample`). Weights are read when first needed;
    cache=None keeps them once read for models under 512 MiB (True: always, False: never)."""
    ckpt = load_model(None if model is None else str(model), cache=cache)
    return Model(ckpt, load_tokenizer(ckpt.files.directory))


def check_text(text: object) -> str:
    """The CLI's rules for a text (mhacli.textin.read_text), for a str given directly: no stdin here."""
    if not isinstance(text, str):
        raise UsageError(f"text must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextError("text is not valid UTF-8") from exc
    if text.strip() == "":
        raise TextError("text is empty")
    return text


def check_ids(ids: IdsLike, config: ModelConfig, *, truncate: bool = False) -> np.ndarray:
    """Token ids given directly: a non-empty 1-D sequence of integers in 0..vocab_size-1, at most n_positions
    of them (with truncate=True the first n_positions are kept). Returns them as int64 [n_seq]."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise UsageError(f"ids must be a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        raise TextError("ids is empty")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise UsageError(f"ids must be integers, got {arr.dtype}")
    if arr.min() < 0 or arr.max() >= config.vocab_size:
        bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
        raise UsageError(f"token id {bad} is out of range: this model's ids are 0..{config.vocab_size - 1}")
    if len(arr) > config.n_positions:
        if not truncate:
            raise TextError(
                f"ids are {len(arr)} tokens, longer than the model's n_positions ({config.n_positions}); "
                "pass truncate=True to keep the first tokens"
            )
        arr = arr[: config.n_positions]
    return arr.astype(np.int64)


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
        """Text (the CLI's rules: mhacli.textin.tokenize) or ids -> TokenizedText (ids, tokens, truncated_from)."""
        if (text is None) == (ids is None):
            raise UsageError("give a text or ids=, not both and not neither")
        c = self.config
        if text is not None:
            return tokenize(self.tokenizer, check_text(text), c.n_positions, vocab_size=c.vocab_size, truncate=truncate)
        given = len(np.asarray(ids))
        arr = check_ids(ids, c, truncate=truncate)
        return TokenizedText(arr, self.tokenizer.display(arr.tolist()), given if given > len(arr) else None)

    def run(
        self, text: str | None = None, *, ids: IdsLike | None = None, truncate: bool = False,
        remove: Iterable[Head] | None = None,
    ) -> Run:  # fmt: skip
        """One text through the model. Nothing is computed until asked for; what is computed is kept.
        `remove`: heads (layer, head) zeroed before W_O in every computation of this run (`--ablate`)."""
        heads = sorted(set(remove or ()))
        for h in heads:
            check_head(h, self.config.n_layer, self.config.n_head)
        return Run(self, self.tokenize(text, ids=ids, truncate=truncate), tuple(heads))

    def memory_needed(self, n_seq: int, *, maps: bool = True) -> int:
        """Bytes at the peak of a run of n_seq tokens (the weights held, the forward's working set) that keeps every
        layer's maps (maps=True: as Run.attention does for each layer asked for), as the commands' --max-memory
        estimate counts them."""
        c = self.config
        return memory_needed(
            c, int(n_seq), kept_layers=c.n_layer if maps else 0, kept_heads=c.n_head if maps else 0, keep_maps=maps,
            weight_bytes=self.checkpoint.weight_bytes(),
        )  # fmt: skip

    def explain(
        self, text: str | None = None, *, ids: IdsLike | None = None, layer: int, head: int, query: int | None = None,
        truncate: bool = False,
    ) -> Explanation:  # fmt: skip
        """One head's computation for one query token (default the last; negative counts from the end)."""
        return self.run(text, ids=ids, truncate=truncate).explain(layer, head, query)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<mhacli.Model {self.source}: {c.model_type}, {c.n_layer} layers x {c.n_head} heads ({c.layout}, "
            f"n_kv_head {c.n_kv_head}, d_head {c.d_head}), n_positions {c.n_positions}>"
        )


@dataclass(eq=False)
class Run:
    """One text through one model. attention(layer) and residual(layer) are computed on first use and kept; later
    layers resume from the kept residual stream, so a layer is computed once per run whichever is asked first."""

    model: Model
    tokenized: TokenizedText
    removed: tuple[Head, ...] = ()
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
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise UsageError(f"{what} must be an int, got {type(layer).__name__}")
        if not -n <= layer < n:
            raise UsageError(f"{what} {layer} is out of range: this model has layers 0..{n - 1}")
        return int(layer) % n

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
        """[n_head, n_seq, n_seq] float32: layer `layer`'s attention, rows the queries (each sums to 1). Computed
        once; the same (read-only) array on every call."""
        layer = self._layer(layer)
        if layer not in self._attention:
            if layer < len(self._inputs) - 1:  # the stream entering it is kept: that one layer again, with its map
                for trace in forward_from(
                    self.model.checkpoint, self._inputs[layer], layer, layer + 1, edits=self.edits, sinks=lambda _: None
                ):  # fmt: skip
                    self._attention[layer] = trace.attention
            else:
                self._advance(layer + 1, keep=layer)
            self._attention[layer].flags.writeable = False
        return self._attention[layer]

    def residual(self, layer: int) -> np.ndarray:
        """[n_seq, n_embd] float32: the residual stream after block `layer` (before the final norm), read-only."""
        layer = self._layer(layer)
        if layer + 1 >= len(self._inputs):
            self._advance(layer + 1)
        out = self._inputs[layer + 1]
        out.flags.writeable = False
        return out

    def stats(self, layer: int | None = None, head: int | None = None) -> list[HeadStats]:
        """The statistics and kind of every head (the CLI's HeadStats, as `mha stats` computes them: streamed, no
        map kept), or of one layer's heads, or of one head; layer-major order."""
        layers = list(range(self.model.config.n_layer)) if layer is None else [self._layer(layer)]
        missing = [x for x in layers if x not in self._stats]
        if missing:
            for view in analyse(self.model.checkpoint, self.tokenized.ids, layers=missing, keep_maps=False, edits=self.edits):
                self._stats.setdefault(view.layer, []).append(view.stats)
        out = [s for x in layers for s in self._stats[x]]
        if head is not None:
            n_head = self.model.config.n_head
            if isinstance(head, bool) or not isinstance(head, (int, np.integer)) or not -n_head <= head < n_head:
                raise UsageError(f"head {head!r} is out of range: this model has heads 0..{n_head - 1}")
            out = [s for s in out if s.head == int(head) % n_head]
        return out

    def views(self) -> list[HeadView]:
        """Every head's map with its statistics (computed from the maps, as `mha inspect` does): what pages and
        figures draw."""
        c = self.model.config
        out = []
        for layer in range(c.n_layer):
            attn = self.attention(layer)
            for row, stats in zip(attn, layer_stats(layer, attn, self.tokenized.ids)):
                out.append(HeadView(stats, row, c.kv_head(stats.head)))
        return out

    def loss(self, loss_from: int = 1) -> float:
        """The mean next-token loss (nats/token) over target positions t >= max(1, loss_from), as `mha ablate`'s
        baseline; a ModelError when the checkpoint has no output head."""
        if not isinstance(loss_from, int) or isinstance(loss_from, bool):
            raise UsageError(f"loss_from must be an int, got {type(loss_from).__name__}")
        last = self.residual(self.model.config.n_layer - 1)
        losses = text_losses(self.model.checkpoint, last, self.tokenized.ids, loss_from)
        return float(losses.sum(dtype=np.float64)) / len(losses)

    def explain(self, layer: int, head: int, query: int | None = None) -> Explanation:
        """Head `head` of layer `layer` for query token `query` (default the last), every intermediate checked
        against the forward (Explanation.matches)."""
        if self.removed:
            raise UsageError("explain runs the intact model: make the run without remove=")
        return explain_head(self.model.checkpoint, self.tokenized.ids, layer, head, query)

    def ablate(
        self, heads: Iterable[Head] | None = None, *, method: str = "zero", loss_from: int = 1
    ) -> Ablation:
        """Each head removed alone (`mha ablate`): the loss against the intact model's, largest increase first.
        heads: (layer, head) pairs (default every head); method: zero, or mean (its mean output on this text)."""
        if self.removed:
            raise UsageError("ablate measures against the intact model: make the run without remove=")
        if method not in METHODS:
            raise UsageError(f"method {method!r} is not one of: {', '.join(METHODS)}")
        ablator = Ablator(self.model.checkpoint, [self.tokenized.ids], method=method, loss_from=loss_from)
        chosen = ablator.heads if heads is None else sorted(set(heads))
        c = self.model.config
        for h in chosen:
            check_head(h, c.n_layer, c.n_head)
        effects = ablate_each(ablator, chosen)
        return Ablation(method, loss_from, ablator.n_targets, ablator.baseline, effects)

    def save(self, path: str | Path, *, dpi: int = 200) -> Path:
        """Write every head's maps and statistics, the kind chosen by the suffix (as `mha inspect --save`): .html
        (one offline page), .png/.svg/.pdf (a figure: needs matplotlib), .npz (the attention tensor)."""
        from mhacli import save as saving

        path = Path(path)
        targets = saving.parse([path], "inspect", dpi=dpi)
        saving.write_all(targets, saving.inspect_picture(self.model.checkpoint, self.tokenized, self.views()), dpi=dpi)
        return path

    def page(self) -> str:
        """The offline HTML page of this run (every head's map; what `mha inspect --save x.html` writes)."""
        from mhacli import save as saving
        from mhacli import webpage

        return webpage.page_for(saving.inspect_picture(self.model.checkpoint, self.tokenized, self.views()))

    def _repr_html_(self) -> str:
        """Jupyter: the page, isolated in an iframe (its styles and scripts stay inside)."""
        return (
            f'<iframe srcdoc="{html.escape(self.page(), quote=True)}" '
            'style="width: 100%; height: 640px; border: 0" sandbox="allow-scripts"></iframe>'
        )

    def __repr__(self) -> str:
        shown = "".join(self.tokenized.tokens)
        shown = shown if len(shown) <= 60 else shown[:59] + "…"
        removed = f", heads removed: {', '.join(f'{l}.{h}' for l, h in self.removed)}" if self.removed else ""
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


def _diff_ids(text: str, a: Model, b: Model, truncate: bool) -> np.ndarray:
    """The text's ids, the same under both tokenizers and fitting both models (as `mha diff` requires)."""
    limit = min(a.config.n_positions, b.config.n_positions)
    ids_a, n_chars = a.tokenizer.encode_prefix(check_text(text), limit)
    ids_b = b.tokenizer.encode(text[:n_chars])
    check_same_tokens(ids_a, ids_b, a.tokenizer.display, b.tokenizer.display, "the text")
    if not ids_a:
        raise TextError("the text produced no tokens")
    check_ids_fit(ids_a, min(a.config.vocab_size, b.config.vocab_size))
    if len(ids_a) > limit:
        if not truncate:
            raise TextError(
                f"the text is {len(ids_a)} tokens, longer than n_positions ({limit}); pass truncate=True to keep the "
                "first tokens"
            )
        ids_a = ids_a[:limit]
    return np.asarray(ids_a, dtype=np.int64)


def diff(
    model_a: Model, model_b: Model, text: str | Sequence[str], *, metric: str = "js", match: bool = False,
    remove_b: Iterable[Head] | None = None, truncate: bool = False,
) -> DiffReport:  # fmt: skip
    """Per-head divergence of model_b's attention from model_a's on the same token ids (`mha diff`): head by head
    when their shapes agree (unless match=True), else matched (Hungarian) and nearest heads. Several texts: the
    mean over texts. metric: js (bits), tv or cosine. remove_b: heads of model_b zeroed first."""
    check_metric(metric)
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise TextError("no text given")
    ids = [_diff_ids(t, model_a, model_b, truncate) for t in texts]
    removed = sorted(set(remove_b or ()))
    for h in removed:
        check_head(h, model_b.config.n_layer, model_b.config.n_head)
    edits_b = removal_edits(removed) if removed else None
    shape_a = (model_a.config.n_layer, model_a.config.n_head)
    shape_b = (model_b.config.n_layer, model_b.config.n_head)
    mode = "paired" if shape_a == shape_b and not match else "matched"
    per_text = [compare_text(model_a.checkpoint, model_b.checkpoint, x, metric, mode, edits_b) for x in ids]
    return summarise(per_text, metric, mode, shape_a, shape_b)


@dataclass(frozen=True)
class Census:
    """`mha census` run in this process: each head's verdict (kind, confidence, evidence) and the per-source tallies
    (mean and spread of every statistic over that source's texts: Tally.means(), Tally.stds())."""

    heads: list[HeadVerdict]
    tallies: dict[str, Tally]
    spec: ProbeSpec
    probes: tuple[str, ...]

    def head(self, layer: int, head: int) -> HeadVerdict:
        return next(v for v in self.heads if (v.layer, v.head) == (layer, head))


def census(
    model: Model, texts: Iterable[str] | None = None, *, probes: Sequence[str] = PROBES, probe_count: int = 20,
    repeat_length: int = 20, random_length: int = 64, seed: int = 0, truncate: bool = False,
) -> Census:  # fmt: skip
    """Every head's kind over seeded probes (repeat, random) and `texts` (a corpus), as `mha census` computes it
    (docs/census.md), in this process. A text that cannot run raises its error."""
    probes = tuple(dict.fromkeys(probes))
    for p in probes:
        if p not in PROBES:
            raise UsageError(f"probe {p!r} is not one of: {', '.join(PROBES)}")
    if probes and probe_count < 1:
        raise UsageError(f"probe_count {probe_count} must be at least 1")
    corpus = None if texts is None else [texts] if isinstance(texts, str) else list(texts)
    if not probes and not corpus:
        raise UsageError("nothing to run: no probes and no texts")
    c, ckpt = model.config, model.checkpoint
    spec = ProbeSpec(probe_count, repeat_length, random_length, seed)
    prefix, ordinary = _probe_tokens(model, probes, spec)
    tallies = {s: Tally((c.n_layer, c.n_head)) for s in SOURCES}
    for p in probes:
        for index in range(probe_count):
            ids, first_row = probe(p, index, spec, ordinary, prefix)
            tallies[p].add(text_stats(ckpt, ids, first_row), len(ids))
    for t in corpus or ():
        ids = model.tokenize(t, truncate=truncate).ids
        tallies["corpus"].add(text_stats(ckpt, ids), len(ids))
    ran = {s: tallies[s] for s in SOURCES if tallies[s].n_texts > 0}
    return Census(verdicts(ran), ran, spec, probes)


def _probe_tokens(model: Model, probes: tuple[str, ...], spec: ProbeSpec) -> tuple[int | None, np.ndarray]:
    """The probes' prefix token (None: the tokenizer has none the model can read) and ordinary tokens, checked as
    `mha census` checks them."""
    c = model.config
    prefix = model.tokenizer.prefix_id()
    if prefix is not None and prefix >= c.vocab_size:
        prefix = None
    ordinary = np.asarray(model.tokenizer.ordinary_ids(c.vocab_size), dtype=np.int64)
    if probes and len(ordinary) == 0:
        raise UsageError("the tokenizer has no ordinary tokens below the model's vocab_size to draw probes from")
    for p in probes:
        low = 3 if p == "repeat" else 2
        if (spec.repeat_length if p == "repeat" else spec.random_length) < low:
            raise UsageError(f"{p}_length must be at least {low}")
        n = spec.n_tokens(p, prefix)
        if n > c.n_positions:
            raise UsageError(f"a {p} probe is {n} tokens, longer than the model's n_positions ({c.n_positions})")
    return prefix, ordinary

