"""What each command shows, as results that mhacli.views.output.Output writes in any format.

One class per command. Each holds the computed data and the few choices of how to show it (--stat, --top, the map
window), and answers the output protocol: `to_dict()` (json; `json_chunks` where a document is streamed), `records()`
(jsonl), `COLUMNS` + `rows()` (csv, tsv), `plain()` (text) and `view(console)` (rich), `notes(fmt)` where a format
wants a remark on stderr. Nothing here computes: the results come from the operations (mhacli.ops).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mhacli.analyses.heads import HeadView
from mhacli.analyses.stats import TOO_PLAIN, undecidable
from mhacli.views.formats import CSV_COLUMNS, head_record, stats_row

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from mhacli.analyses.diff import DiffReport
    from mhacli.analyses.explain import Explanation
    from mhacli.analyses.verify import VerifyReport


def _written(write: Callable[[io.StringIO], None]) -> str:
    buf = io.StringIO()
    write(buf)
    return buf.getvalue()


# --- inspect, stats ---------------------------------------------------------------------------------------------------


@dataclass
class HeadsResult:
    """Heads of one text: their statistics and kinds, and (inspect) their attention maps."""

    model: dict
    tokens: list[str]
    token_ids: list[int]
    views: list[HeadView]
    COLUMNS = CSV_COLUMNS
    with_attention = False

    def head_dicts(self) -> Iterator[dict]:
        return (head_record(v, with_attention=self.with_attention) for v in self.views)

    def to_dict(self) -> dict:
        return {"model": self.model, "tokens": self.tokens, "token_ids": self.token_ids, "heads": [*self.head_dicts()]}

    def json_chunks(self, dumps: Callable[[Any], str]) -> Iterator[str]:
        """The document written head by head, so only one head's lists exist at a time (the bytes of to_dict's)."""
        yield dumps({"model": self.model, "tokens": self.tokens, "token_ids": self.token_ids})[:-1] + ', "heads": ['
        for k, record in enumerate(self.head_dicts()):
            yield (", " if k else "") + dumps(record)
        yield "]}\n"

    def records(self) -> Iterator[dict]:
        return self.head_dicts()

    def rows(self) -> Iterator[list]:
        return (stats_row(v) for v in self.views)

    def notes(self, fmt: str) -> list[str]:
        return [TOO_PLAIN] if fmt == "text" and self.views and undecidable(self.views[0].stats.support) else []


@dataclass
class InspectResult(HeadsResult):
    """`mha inspect`: the maps; the terminal window (query, top, start, keys, panel_keys) is how they are drawn."""

    query: int | None = None
    top: int | None = None
    start: int = 0
    keys: tuple[int, int] | None = None
    panel_keys: int | None = None
    with_attention = True

    def plain(self) -> str:
        from mhacli.views.plain import write_inspect

        return _written(lambda out: write_inspect(out, self.views, self.tokens, query=self.query, top=self.top))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import drawn, render_inspect

        return drawn(render_inspect)(
            console,
            self.views,
            self.tokens,
            query=self.query,
            top=self.top,
            start=self.start,
            keys=self.keys,
            panel_keys=self.panel_keys,
        )


@dataclass
class StatsResult(HeadsResult):
    """`mha stats`: `stat` orders the text table and fills the terminal grid; `compact` forces the small grid."""

    n_layer: int = 0
    n_head: int = 0
    stat: str = "auto"
    compact: bool = False

    def plain(self) -> str:
        from mhacli.views.plain import write_stats

        return _written(lambda out: write_stats(out, self.views, self.stat))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import drawn, render_stats

        layout = "compact" if self.compact else "auto"
        n_tokens = len(self.token_ids)
        return drawn(render_stats)(console, self.views, self.n_layer, self.n_head, self.stat, n_tokens, layout=layout)


# --- diff -------------------------------------------------------------------------------------------------------------


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
    start: int = 0

    @property
    def COLUMNS(self) -> Sequence[str]:  # noqa: N802 - the protocol's name
        from mhacli.analyses.diff import DIFF_COLUMNS

        return DIFF_COLUMNS

    def to_dict(self) -> dict:
        r = self.report
        doc: dict = {"model_a": self.model_a, "model_b": self.model_b, "metric": r.metric, "mode": r.mode}
        doc |= {"n_texts": r.n_texts, "tokens": self.tokens, "n_tokens": self.n_tokens}
        return doc | r.to_dict()

    def records(self) -> Iterator[dict]:
        return (r.to_dict() for r in self.report.heads)

    def rows(self) -> list[list]:
        from mhacli.views.plain import diff_cells

        return diff_cells(self.report)

    def plain(self) -> str:
        from mhacli.views.plain import write_diff

        return _written(lambda out: write_diff(out, self.report, self.model_a, self.model_b, self.n_tokens))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import drawn, render_diff

        r, maps = self.report, self.maps()
        return drawn(render_diff)(
            console, r, self.model_a, self.model_b, self.tokens, maps, top=self.top, start=self.start
        )


# --- explain ----------------------------------------------------------------------------------------------------------


@dataclass
class ExplainResult:
    """`mha explain`: one head's computation for one query token; `full` shows every component."""

    model: dict
    tokens: list[str]
    token_ids: list[int]
    explanation: Explanation
    full: bool = False

    def to_dict(self) -> dict:
        return {"model": self.model, "tokens": self.tokens, "token_ids": self.token_ids} | self.explanation.to_dict()

    def plain(self) -> str:
        from mhacli.views.terminal import explain_text

        return explain_text(self.explanation, self.tokens, full=self.full)

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import explain_view

        return explain_view(self.explanation, self.tokens, console.width, full=self.full)


# --- info -------------------------------------------------------------------------------------------------------------


def flat_items(doc: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """The JSON document as (dotted key, value) pairs: nested objects flattened, lists and scalars kept as values.

    E.g. `attention.kv_cache.fraction_of_mha`.
    """
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from flat_items(value, name + ".")
        else:
            yield name, value


def cell_text(value: object) -> str:
    """A csv/tsv cell: strings as they are, null empty, anything else (numbers, booleans, lists) as JSON."""
    from mhacli.views.formats import dumps

    if value is None:
        return ""
    return value if isinstance(value, str) else dumps(value)


@dataclass
class InfoResult:
    """`mha info`: the model's document; jsonl, csv and tsv give one key/value row per field (dotted keys)."""

    doc: dict
    COLUMNS = ("key", "value")

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> Iterator[dict]:
        return ({"key": k, "value": v} for k, v in flat_items(self.doc))

    def rows(self) -> Iterator[list]:
        return ([k, cell_text(v)] for k, v in flat_items(self.doc))

    def plain(self) -> str:
        from mhacli.views.plain import info_lines

        lines = info_lines(self.doc)
        width = max(len(k) for k, _ in lines)
        return "".join(f"{k:<{width}}  {v}\n" for k, v in lines)

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.plain import info_lines
        from mhacli.views.terminal import info_table

        return info_table(info_lines(self.doc))


# --- verify -----------------------------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """`mha verify`: every layer's errors against HF transformers, and the verdict."""

    report: VerifyReport
    n_tokens: int

    def to_dict(self) -> dict:
        return self.report.to_dict()

    def plain(self) -> str:
        from mhacli.views.plain import verify_lines

        return "\n".join(verify_lines(self.report, self.n_tokens)) + "\n"

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.plain import verify_lines
        from mhacli.views.terminal import verify_view

        return verify_view(verify_lines(self.report, self.n_tokens), self.report.passed)


# --- ablate, prune ----------------------------------------------------------------------------------------------------


@dataclass
class AblateResult:
    """`mha ablate`: each head removed alone; `top` heads in the terminal ranking."""

    doc: dict
    top: int = 10
    COLUMNS = ("layer", "head", "kind", "loss", "delta", "delta_pct")

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> list[dict]:
        return self.doc["heads"]

    def rows(self) -> Iterator[list]:
        return ([r[k] for k in self.COLUMNS] for r in self.doc["heads"])

    def plain(self) -> str:
        from mhacli.views.plain import write_ablate

        return _written(lambda out: write_ablate(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import drawn, render_ablate

        return drawn(render_ablate)(console, self.doc, self.top)


@dataclass
class PruneResult:
    """`mha prune`: the importance and random pruning curves; jsonl, csv and tsv give one row per curve point."""

    doc: dict
    COLUMNS = ("order", "n_removed", "fraction", "loss", "loss_std", "removed")

    def to_dict(self) -> dict:
        return self.doc

    def rows(self) -> list[list]:
        curve, rand = self.doc["importance"]["curve"], self.doc["random"]["curve"]
        rows = [
            [
                "importance",
                s["n_removed"],
                s["fraction"],
                s["loss"],
                None,
                " ".join(f"{a}.{b}" for a, b in s["removed"]),
            ]
            for s in curve
        ]
        return rows + [["random", s["n_removed"], s["fraction"], s["loss_mean"], s["loss_std"], None] for s in rand]

    def records(self) -> Iterator[dict]:
        return (dict(zip(self.COLUMNS, row)) for row in self.rows())

    def plain(self) -> str:
        from mhacli.views.plain import write_prune

        return _written(lambda out: write_prune(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import drawn, render_prune

        return drawn(render_prune)(console, self.doc)


# --- census -----------------------------------------------------------------------------------------------------------


@dataclass
class CensusResult:
    """`mha census`: every head's kind with its evidence; csv and tsv give one row per head and source."""

    doc: dict
    top: int = 5

    @property
    def COLUMNS(self) -> Sequence[str]:  # noqa: N802 - the protocol's name
        from mhacli.views.plain import CENSUS_COLUMNS

        return CENSUS_COLUMNS

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> list[dict]:
        return self.doc["heads"]

    def rows(self) -> Iterator[list]:
        from mhacli.views.plain import census_rows

        return census_rows(self.doc)

    def plain(self) -> str:
        from mhacli.views.plain import write_census

        return _written(lambda out: write_census(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import drawn, render_census

        return drawn(render_census)(console, self.doc, self.top)


# --- circuits ---------------------------------------------------------------------------------------------------------


@dataclass
class CircuitsResult:
    """`mha circuits`: composition scores (jsonl, csv and tsv: one row per pair), copying scores, token pairs."""

    doc: dict

    @property
    def COLUMNS(self) -> Sequence[str]:  # noqa: N802 - the protocol's name
        from mhacli.views.plain import CIRCUITS_COLUMNS

        return CIRCUITS_COLUMNS

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> list[dict]:
        return self.doc["composition"]

    def rows(self) -> Iterator[list]:
        from mhacli.views.plain import circuits_rows

        return circuits_rows(self.doc)

    def plain(self) -> str:
        from mhacli.views.plain import write_circuits

        return _written(lambda out: write_circuits(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal import drawn, render_circuits

        return drawn(render_circuits)(console, self.doc)
