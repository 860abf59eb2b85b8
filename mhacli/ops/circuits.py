"""Heads read from their weights alone (`circuits`, Model.circuits): a request in, a report out.

The computation is mhacli.analyses.circuits; here the token ids of the token pairs become the tokenizer's strings
and the report gets its document (`mha circuits -f json`, docs/commands/circuits.md). No text, no forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mhacli.analyses.circuits import MODES, Circuits, TokenPair, circuits
from mhacli.views.formats import written
from mhacli.views.save import Picture, Pictures

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


@dataclass(frozen=True)
class CircuitsRequest:
    modes: Sequence[str] = MODES
    layers: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    top: int = 3
    fold_ln: bool = False
    unembed: bool = True  # False: the output head is not read (no copying scores, no OV token pairs)


@dataclass(frozen=True)
class CircuitsReport:
    """The analysis' numbers, the model's description and each token pair's strings; `to_dict` is the document."""

    model: dict
    circuits: Circuits
    strings: dict[int, str]  # token id -> the tokenizer's string for it, for every id in a pair

    def _pair(self, p: TokenPair, first: str, second: str) -> dict:
        return {
            first: self.strings[p.first],
            second: self.strings[p.second],
            "value": p.value,
            f"{first}_id": p.first,
            f"{second}_id": p.second,
            "singular_value": p.singular_value,
        }

    def composition(self) -> list[dict]:
        """Every earlier -> later pair of every requested mode with a selected end, largest score first."""
        rows: list[dict] = [
            {"mode": m, "from": {"layer": l1, "head": h1}, "to": {"layer": l2, "head": h2}, "score": s}
            for m in self.circuits.modes
            for l1, h1, l2, h2, s in self.circuits.pairs(m)
        ]
        rows.sort(key=lambda r: -float(r["score"]))  # stable: mode order, then the analysis' order, breaks ties
        return rows

    def heads(self) -> list[dict]:
        return [
            {
                "layer": h.layer,
                "head": h.head,
                "kv_head": h.kv_head,
                "copying": h.copying,
                "ov_top": [self._pair(p, "attend", "write") for p in h.ov_top],
                "qk_top": [self._pair(p, "query", "key") for p in h.qk_top],
            }
            for h in self.circuits.heads
        ]

    def to_dict(self) -> dict:
        c = self.circuits
        return {
            "model": self.model,
            "fold_ln": c.fold_ln,
            "modes": list(c.modes),
            "baseline": dict(c.baseline),
            "composition": self.composition(),
            "heads": self.heads(),
        }


def run_circuits(ckpt, tokenizer, request: CircuitsRequest) -> CircuitsReport:
    """Composition scores, baselines, copying scores and token pairs of `request`, with the tokens' strings."""
    r = request
    found = circuits(
        ckpt, modes=r.modes, layers=r.layers, heads=r.heads, top=r.top, fold_ln=r.fold_ln, unembed=r.unembed
    )
    ids = sorted({i for h in found.heads for p in h.ov_top + h.qk_top for i in (p.first, p.second)})
    return CircuitsReport(ckpt.model_dict(), found, dict(zip(ids, tokenizer.display(ids), strict=True)))


# --- the result: what circuits shows, in every format, and how --save pictures it -------------------------------------


@dataclass
class CircuitsResult:
    """`mha circuits`: composition scores (jsonl, csv and tsv: one row per pair), copying scores, token pairs."""

    doc: dict
    PICTURES = Pictures("circuits", figure="circuits_figure", page="circuits_page")

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

        return written(lambda out: write_circuits(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.circuits import circuits_view

        return circuits_view(console, self.doc)


def circuits_picture(ckpt, doc: dict) -> Picture:
    """circuits: the composition matrices (figure), every selected head's scores and pairs (page)."""
    return Picture(CircuitsResult.PICTURES, f"{ckpt.source} · circuits from the weights alone", {"doc": doc})
