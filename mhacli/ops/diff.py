"""Two models on the same token ids (`diff`, mhacli.diff).

The texts' ids, the same under both tokenizers and fitting both models, then per-head divergence (mhacli.analyses.diff),
guarded for memory first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mhacli.analyses.diff import DiffReport, check_metric, check_same_tokens, compare_pack, summarise
from mhacli.analyses.heads import HeadView, analyse
from mhacli.engine.blocks import ZEdit
from mhacli.engine.segments import PACK_TOKENS, pack_groups
from mhacli.errors import TextError
from mhacli.io.textin import check_ids_fit, from_ids
from mhacli.ops.ablation import ablation, removal_edits_of
from mhacli.ops.memory import Size, check_memory, diff_bytes
from mhacli.views.ablated import Ablated
from mhacli.views.formats import written
from mhacli.views.save import STATIC, Picture, Pictures, Target, caption, wants

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

Head = tuple[int, int]


@dataclass(frozen=True)
class DiffText:
    ids: np.ndarray  # [n_seq] int64
    tokens: list[str]
    where: str  # "the text" or "--texts line N", for messages


def _ignore(message: str) -> None:
    pass


def tokenize_both(
    raw: str,
    where: str,
    a: tuple,
    b: tuple,
    truncate: bool,
    *,
    on_truncate: Callable[[str], None] = _ignore,
) -> DiffText:
    """The text's token ids, required to be the same under both tokenizers and to fit both models.

    a, b: (checkpoint, tokenizer); on_truncate gets the message saying a text was cut.
    """
    (ckpt_a, tok_a), (ckpt_b, tok_b) = a, b
    n_a, n_b = ckpt_a.config.n_positions, ckpt_b.config.n_positions
    limit = min(n_a, n_b)
    # only a prefix of a long text is tokenized (sized for `limit` tokens); both tokenizers see the same prefix
    ids_a, n_chars = tok_a.encode_prefix(raw, limit)
    ids_b = tok_b.encode(raw[:n_chars])
    check_same_tokens(ids_a, ids_b, tok_a.display, tok_b.display, where)
    if not ids_a:
        raise TextError(f"{where} produced no tokens")
    check_ids_fit(ids_a, min(ckpt_a.config.vocab_size, ckpt_b.config.vocab_size), tok_a)
    count = str(len(ids_a)) if n_chars == len(raw) else f"more than {len(ids_a)}"
    if len(ids_a) > limit:
        which = "both models'" if max(n_a, n_b) < len(ids_a) else ("MODEL_A's" if n_a < n_b else "MODEL_B's")
        if not truncate:
            raise TextError(
                f"{where} is {count} tokens, longer than {which} n_positions ({limit}); "
                "shorten it or pass {truncate} to keep the first tokens",
                params=("truncate",),
            )
        on_truncate(f"{where} truncated to the first {limit} of {count} tokens")
        ids_a = ids_a[:limit]
    return DiffText(np.asarray(ids_a, dtype=np.int64), tok_a.display(ids_a), where)


def ids_for_both(
    ids: list[int], a: tuple, b: tuple, truncate: bool, *, on_truncate: Callable[[str], None] = _ignore
) -> DiffText:
    """--ids: checked against both models' vocab_size and n_positions (the smaller of each), shown as A reads them."""
    (ckpt_a, tok_a), (ckpt_b, _) = a, b
    vocab = min(ckpt_a.config.vocab_size, ckpt_b.config.vocab_size)
    limit = min(ckpt_a.config.n_positions, ckpt_b.config.n_positions)
    t = from_ids(tok_a, ids, limit, vocab_size=vocab, truncate=truncate)
    if t.truncated_from is not None:
        on_truncate(f"--ids truncated to the first {limit} of {t.truncated_from} tokens")
    return DiffText(t.ids, t.tokens, "--ids")


def compare(
    ckpt_a,
    ckpt_b,
    texts: Sequence[DiffText],
    metric: str,
    *,
    match: bool = False,
    edits_b: dict[int, ZEdit] | None = None,
    max_memory: Size = None,
    progress: Callable[[Iterable, int, str], Iterable] = lambda items, total, description: items,
    pack_tokens: int = PACK_TOKENS,
) -> DiffReport:
    """Per-head divergence of B's attention from A's over the texts (their mean).

    Head by head when the shapes agree (unless match), else matched (Hungarian) and nearest heads. Short texts run
    packed, several in one forward of up to `pack_tokens` tokens (1: each alone), every text's numbers those of the
    text alone to float32 rounding. Refused (ResourceError) past max_memory.
    """
    check_metric(metric)
    shape_a = (ckpt_a.config.n_layer, ckpt_a.config.n_head)
    shape_b = (ckpt_b.config.n_layer, ckpt_b.config.n_head)
    mode = "paired" if shape_a == shape_b and not match else "matched"
    groups = pack_groups([len(t.ids) for t in texts], pack_tokens)
    check_memory(max(pack_bytes(ckpt_a, ckpt_b, [texts[i] for i in g], mode) for g in groups), max_memory, "texts")
    per_text = [
        diff
        for g in progress(groups, len(groups), f"comparing heads on {len(texts)} texts")
        for diff in compare_pack(ckpt_a, ckpt_b, [texts[i].ids for i in g], metric, mode, edits_b)
    ]
    group_sizes = (ckpt_a.config.group_size, ckpt_b.config.group_size)
    return summarise(per_text, metric, mode, shape_a, shape_b, group_sizes)


def pack_bytes(ckpt_a, ckpt_b, pack: Sequence[DiffText], mode: str) -> int:
    """One pack's forwards (diff_bytes of its length); matched keeps each text's maps, not the pack's square."""
    lengths = [len(t.ids) for t in pack]
    squares = None if len(pack) == 1 else sum(n * n for n in lengths)
    return diff_bytes(ckpt_a, ckpt_b, sum(lengths), mode == "paired", squares=squares)


@dataclass(frozen=True)
class DiffRequest:
    """Two models compared on texts: each text (a string, or token ids) with `where` naming it in messages."""

    texts: Sequence[tuple[str | list[int], str]]
    metric: str = "js"
    match: bool = False
    remove_b: Sequence[Head] | str | None = None  # heads of B zeroed first, or an --ablate spec (L.H,... / @mask)
    truncate: bool = False
    max_memory: Size = None
    pack_tokens: int = PACK_TOKENS  # tokens per packed forward (mhacli.engine.segments); 1: every text alone


@dataclass(frozen=True)
class DiffOutcome:
    report: DiffReport
    texts: list[DiffText]  # as both models read them
    edits_b: dict[int, ZEdit] | None
    ablated_b: Ablated | None = None  # what edits_b removes, for every output to name


def diff(
    a: tuple,
    b: tuple,
    request: DiffRequest,
    *,
    on_truncate: Callable[[str], None] = _ignore,
    progress: Callable[[Iterable, int, str], Iterable] = lambda items, total, description: items,
) -> DiffOutcome:
    """`mha diff` and mhacli.diff.

    The texts' ids under both models (a, b: checkpoint and tokenizer), B's heads removed, then per-head divergence
    (compare). The one orchestration both doors run.
    """
    check_metric(request.metric)
    items = [
        ids_for_both(raw, a, b, request.truncate, on_truncate=on_truncate)
        if isinstance(raw, list)
        else tokenize_both(raw, where, a, b, request.truncate, on_truncate=on_truncate)
        for raw, where in request.texts
    ]
    ckpt_a, ckpt_b = a[0], b[0]
    removal = ablation(request.remove_b, ckpt_b)  # a mean mask keeps its recorded means; pairs are zeroed
    edits_b = removal_edits_of(removal, ckpt_b)
    report = compare(
        ckpt_a,
        ckpt_b,
        items,
        request.metric,
        match=request.match,
        edits_b=edits_b,
        max_memory=request.max_memory,
        progress=progress,
        pack_tokens=request.pack_tokens,
    )
    return DiffOutcome(report, items, edits_b, Ablated.of(removal, model="MODEL_B"))


def peak_maps(
    ckpt_a, ckpt_b, report: DiffReport, first: DiffText, edits_b: dict[int, ZEdit] | None = None
) -> tuple[HeadView, HeadView] | None:
    """The most divergent pair's two maps on the first text (what a terminal draws), None when nothing diverges.

    B's map is drawn with B's heads removed (`edits_b`, from --ablate), as every number of the diff was measured.
    """
    if not report.heads or report.max_divergence <= 0:
        return None
    r = report.heads[0]
    view_a = next(analyse(ckpt_a, first.ids, layers=[r.layer_a], heads=[r.head_a], keep_maps=True))
    view_b = next(analyse(ckpt_b, first.ids, layers=[r.layer_b], heads=[r.head_b], keep_maps=True, edits=edits_b))
    return view_a, view_b


def diff_picture(targets: list[Target], ckpt_a, ckpt_b, report, first, edits_b=None, ablated_b=None) -> Picture:
    """`mha diff --save`: the report, and the first text's maps (runs the forward these need).

    The figures show the most changed head's two maps; the page every head's.
    """
    maps = None
    views_a: list = []
    views_b: list = []
    if wants(targets, "html"):
        views_a = list(analyse(ckpt_a, first.ids, keep_maps=True))
        views_b = list(analyse(ckpt_b, first.ids, keep_maps=True, edits=edits_b))
    if wants(targets, *STATIC) and report.heads and report.max_divergence > 0:
        r = report.heads[0]
        if views_a:
            maps = (
                next(v for v in views_a if (v.layer, v.head) == (r.layer_a, r.head_a)),
                next(v for v in views_b if (v.layer, v.head) == (r.layer_b, r.head_b)),
            )
        else:
            maps = (
                next(analyse(ckpt_a, first.ids, layers=[r.layer_a], heads=[r.head_a], keep_maps=True)),
                next(analyse(ckpt_b, first.ids, layers=[r.layer_b], heads=[r.head_b], keep_maps=True, edits=edits_b)),
            )
    text = caption(f"A: {ckpt_a.source} · B: {ckpt_b.source}", "".join(first.tokens), len(first.ids))
    if report.n_texts > 1:
        text += f"; divergence: mean over {report.n_texts} texts, maps: the first"
    return Picture(
        DiffResult.PICTURES,
        text,
        {"report": report, "maps": maps, "views_a": views_a, "views_b": views_b, "tokens": list(first.tokens)},
        ablated_b,
    )


# --- the result: what diff shows, in every format ---------------------------------------------------------------------


@dataclass
class DiffResult:
    """`mha diff`: per-head divergence; `maps` draws the most changed head's two maps (run only for the terminal)."""

    report: DiffReport
    model_a: str
    model_b: str
    tokens: list[str]  # the first text's
    n_tokens: list[int]  # every text's length
    maps: Callable[[], Any] = lambda: None  # the most changed pair's maps, computed when the terminal draws them
    top: int = 10
    start: int | None = None  # the maps' first query row; None: the window ends at the text's last token
    ablated: Ablated | None = None  # MODEL_B's heads removed first (--ablate)
    PICTURES = Pictures("diff", figure="diff_figure", page="diff_page")

    @property
    def COLUMNS(self) -> Sequence[str]:  # noqa: N802 - the protocol's name
        from mhacli.analyses.diff import DIFF_COLUMNS

        return DIFF_COLUMNS

    def to_dict(self) -> dict:
        r = self.report
        doc: dict = {"model_a": self.model_a, "model_b": self.model_b, "metric": r.metric, "mode": r.mode}
        doc |= {"n_texts": r.n_texts, "tokens": self.tokens, "n_tokens": self.n_tokens}
        doc |= self.ablated.to_dict() if self.ablated else {}
        return doc | r.to_dict()

    def records(self) -> Iterator[dict]:
        extra = self.ablated.to_dict() if self.ablated else {}
        return (r.to_dict() | extra for r in self.report.heads)

    def rows(self) -> list[list]:
        from mhacli.views.plain import diff_cells

        return diff_cells(self.report)

    def plain(self) -> str:
        from mhacli.views.plain import write_diff

        return written(lambda out: write_diff(out, self.report, self.model_a, self.model_b, self.n_tokens))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.diff import diff_view

        r, maps = self.report, self.maps()
        return diff_view(console, r, self.model_a, self.model_b, self.tokens, maps, top=self.top, start=self.start)
