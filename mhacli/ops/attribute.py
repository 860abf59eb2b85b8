"""Direct logit attribution (`attribute`, Run.attribute): a request in, a report out.

The computation is mhacli.analyses.attribute; here the answer and wrong tokens named by the user become ids
(mhacli.ops.tokens), the memory guard runs first, token ids become the tokenizer's strings, and the report gets its
document (`mha attribute -f json`, docs/commands/attribute.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mhacli.analyses.attribute import HEAD_BLOCK, Attribution, Component, attribute
from mhacli.analyses.heads import analyse
from mhacli.io.textin import TokenizedText
from mhacli.ops.memory import Size, check_memory, heads_bytes
from mhacli.ops.tokens import Token, one_token
from mhacli.views.formats import written
from mhacli.views.save import Picture, Pictures, Target, caption, wants

if TYPE_CHECKING:
    from rich.console import Console, RenderableType


@dataclass(frozen=True)
class AttributeRequest:
    """What to attribute: the answer and wrong tokens (text or id; answer None: the top prediction), where, how."""

    answer: str | None = None
    answer_id: int | None = None
    wrong: str | None = None
    wrong_id: int | None = None
    pos: int = -1
    fold_value_bias: bool = False
    top_tokens: int = 3
    max_memory: Size = None


def attribute_bytes(ckpt, n_seq: int) -> int:
    """A streamed forward (no map kept) and the promoted-token block [HEAD_BLOCK, vocab] float32."""
    c = ckpt.config
    return heads_bytes(ckpt, n_seq, c.n_layer, c.n_head, False) + 4 * HEAD_BLOCK * c.vocab_size * 2


@dataclass(frozen=True)
class AttributionReport:
    """The analysis' numbers, the model and the text, and every token id's string; `to_dict` is the document."""

    model: dict
    tokens: list[str]
    token_ids: list[int]
    attribution: Attribution
    answer: Token
    wrong: Token | None
    kv_heads: tuple[int, ...]  # the K/V head each query head reads
    strings: dict[int, str]  # token id -> its string, for each promoted or suppressed token

    def _effects(self, effects) -> list[dict]:
        return [{"token": self.strings[e.id], "id": e.id, "value": e.value} for e in effects]

    def component(self, c: Component) -> dict:
        """One component's row: the fields that apply to it (a head: its K/V head, kind and tokens)."""
        row: dict = {"component": c.component}
        if c.layer is not None:
            row["layer"] = c.layer
        key = (c.layer or 0, c.head or 0)
        if c.head is not None:
            row |= {"head": c.head, "kv_head": self.kv_heads[c.head], "kind": self.attribution.kinds.get(key)}
        row["attribution"] = c.attribution
        if c.head is not None and self.attribution.promotes:
            row["promotes"] = self._effects(self.attribution.promotes[key])
            row["suppresses"] = self._effects(self.attribution.suppresses[key])
        return row

    def components(self) -> list[dict]:
        """Every component, largest attribution first (model order breaks ties)."""
        rows = [self.component(c) for c in self.attribution.components]
        rows.sort(key=lambda r: -r["attribution"])
        return rows

    def to_dict(self) -> dict:
        a = self.attribution
        return {
            "model": self.model, "tokens": self.tokens, "token_ids": self.token_ids, "pos": a.pos,
            "answer": self.answer.to_dict(), "wrong": None if self.wrong is None else self.wrong.to_dict(),
            "metric": a.metric, "value": a.value, "sum": a.sum, "completeness_error": a.completeness_error,
            "fold_value_bias": a.fold_value_bias, "components": self.components(),
        }  # fmt: skip


def answer_tokens(tokenizer, vocab_size: int, request: AttributeRequest) -> tuple[Token | None, Token | None]:
    """The answer and wrong tokens the request names (each None when not given)."""
    r = request
    answer = one_token(tokenizer, vocab_size, text=r.answer, token_id=r.answer_id, param="answer")
    wrong = one_token(tokenizer, vocab_size, text=r.wrong, token_id=r.wrong_id, param="wrong")
    return answer, wrong


def run_attribute(ckpt, tokenizer, text: TokenizedText, request: AttributeRequest) -> AttributionReport:
    """`mha attribute` and Run.attribute: the answer's logit (difference) at the position, split into components."""
    c = ckpt.config
    answer, wrong = answer_tokens(tokenizer, c.vocab_size, request)
    check_memory(attribute_bytes(ckpt, len(text.ids)), request.max_memory, "text")
    found = attribute(
        ckpt,
        text.ids,
        None if answer is None else answer.id,
        None if wrong is None else wrong.id,
        request.pos,
        fold_value_bias=request.fold_value_bias,
        top_tokens=request.top_tokens,
    )
    if answer is None:
        answer = Token(found.answer, tokenizer.display([found.answer])[0])
    ids = sorted({e.id for effects in (found.promotes, found.suppresses) for es in effects.values() for e in es})
    strings = dict(zip(ids, tokenizer.display(ids), strict=True))
    kv_heads = tuple(c.kv_head(h) for h in range(c.n_head))
    return AttributionReport(
        ckpt.model_dict(), list(text.tokens), text.ids.tolist(), found, answer, wrong, kv_heads, strings
    )


# --- the result: what attribute shows, in every format, and how --save pictures it ----------------------------------


@dataclass
class AttributeResult:
    """`mha attribute`: every component's share; `top` components in the terminal ranking."""

    doc: dict
    top: int = 12
    COLUMNS = ("component", "layer", "head", "kv_head", "kind", "attribution")
    PICTURES = Pictures("attribute", figure="attribute_figure", page="attribute_page")

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> list[dict]:
        return self.doc["components"]

    def rows(self) -> Iterator[list]:
        return ([r.get(k) for k in self.COLUMNS] for r in self.doc["components"])

    def plain(self) -> str:
        from mhacli.views.readout import write_attribute

        return written(lambda out: write_attribute(out, self.doc, self.top))

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.attribute import attribute_view

        return attribute_view(console, self.doc, self.top)


def attribute_picture(targets: list[Target], ckpt, text: TokenizedText, doc: dict) -> Picture:
    """attribute: the document; the page also gets every head's map of the text (what each head looked at)."""
    views = list(analyse(ckpt, text.ids, keep_maps=True)) if wants(targets, "html") else None
    shown = caption(ckpt.source, "".join(text.tokens), len(text.ids))
    return Picture(AttributeResult.PICTURES, shown, {"doc": doc, "views": views, "tokens": list(text.tokens)})
