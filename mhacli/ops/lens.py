"""The logit lens (`lens`, Run.lens): a request in, a report out.

The computation is mhacli.analyses.lens; here the memory guard runs first, token ids become the tokenizer's strings
and the report gets its document (`mha lens -f json`, docs/commands/lens.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mhacli.analyses.lens import POS_BLOCK, Lens, lens
from mhacli.io.textin import TokenizedText
from mhacli.ops.memory import Size, check_memory, heads_bytes
from mhacli.views.formats import written
from mhacli.views.save import Picture, Pictures, caption

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


@dataclass(frozen=True)
class LensRequest:
    top: int = 5
    positions: Sequence[int] | None = None  # None: every position
    max_memory: Size = None


def lens_bytes(ckpt, n_seq: int) -> int:
    """A streamed forward (no map kept) and a block of logits [POS_BLOCK, vocab] float32 (and its float64 row)."""
    c = ckpt.config
    return heads_bytes(ckpt, n_seq, c.n_layer, c.n_head, False) + 4 * min(n_seq, POS_BLOCK) * c.vocab_size * 2


@dataclass(frozen=True)
class LensReport:
    """The lens' numbers, the model and the text, and every token id's string; `to_dict` is the document."""

    model: dict
    tokens: list[str]
    token_ids: list[int]
    lens: Lens
    strings: dict[int, str]

    def layers(self) -> list[dict]:
        s = self.strings
        return [
            {
                "layer": layer,
                "positions": [
                    {
                        "pos": cell.pos,
                        "top": [{"token": s[i], "id": i, "prob": p} for i, p in zip(cell.top_ids, cell.top_probs)],
                        "next": None
                        if cell.next_id is None
                        else {"token": s[cell.next_id], "id": cell.next_id, "prob": cell.next_prob,
                              "rank": cell.next_rank},
                    }
                    for cell in cells
                ],
            }
            for layer, cells in self.lens.layers
        ]  # fmt: skip

    def to_dict(self) -> dict:
        return {"model": self.model, "tokens": self.tokens, "token_ids": self.token_ids, "layers": self.layers()}


def run_lens(ckpt, tokenizer, text: TokenizedText, request: LensRequest) -> LensReport:
    """`mha lens` and Run.lens: every layer's prediction at every requested position."""
    check_memory(lens_bytes(ckpt, len(text.ids)), request.max_memory, "text")
    found = lens(ckpt, text.ids, request.top, request.positions)
    ids = sorted(
        {i for _, cells in found.layers for c in cells for i in c.top_ids}
        | {c.next_id for _, cells in found.layers for c in cells if c.next_id is not None}
    )
    strings = dict(zip(ids, tokenizer.display(ids), strict=True))
    return LensReport(ckpt.model_dict(), list(text.tokens), text.ids.tolist(), found, strings)


# --- the result: what lens shows, in every format, and how --save pictures it -----------------------------------------


@dataclass
class LensResult:
    """`mha lens`: jsonl gives one (layer, position) per line; csv and tsv its top token and the next token's rank."""

    doc: dict
    COLUMNS = ("layer", "pos", "top_token", "top_id", "top_prob", "next_token", "next_id", "next_prob", "next_rank")
    PICTURES = Pictures("lens", figure="lens_figure", page="lens_page")

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> Iterator[dict]:
        return ({"layer": layer["layer"]} | cell for layer in self.doc["layers"] for cell in layer["positions"])

    def rows(self) -> Iterator[list]:
        for layer in self.doc["layers"]:
            for cell in layer["positions"]:
                top, nxt = cell["top"][0], cell["next"] or {}
                yield [
                    layer["layer"], cell["pos"], top["token"], top["id"], top["prob"],
                    nxt.get("token"), nxt.get("id"), nxt.get("prob"), nxt.get("rank"),
                ]  # fmt: skip

    def plain(self) -> str:
        from mhacli.views.readout import write_lens

        return written(lambda out: write_lens(out, self.doc))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.lens import lens_view

        return lens_view(console, self.doc)


def lens_picture(ckpt, text: TokenizedText, doc: dict) -> Picture:
    """lens: the document (the layer x position table of top tokens and probabilities)."""
    return Picture(LensResult.PICTURES, caption(ckpt.source, "".join(text.tokens), len(text.ids)), {"doc": doc})
