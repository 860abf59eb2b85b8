"""Activation and path patching per head (`patch`, mhacli.patch): prompts and tokens in, a report out.

The computation is mhacli.analyses.patch; here the prompts are tokenized and checked (same length, one-token
answers), `--pairs` files are read, each head gets its kind on the clean run, and the report gets its document
(`mha patch -f json`, docs/commands/patch.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mhacli.analyses.ablate import MAX_INDEX_DIGITS
from mhacli.analyses.patch import Pair, PatchResult, check_site, patch
from mhacli.analyses.readout import check_answer_pair
from mhacli.engine.forward import forward
from mhacli.engine.segments import PACK_TOKENS
from mhacli.errors import UsageError
from mhacli.io.textin import read_json_lines
from mhacli.ops.ablation import KindTally
from mhacli.ops.inputs import encode
from mhacli.ops.tokens import one_token, quoted_tokens
from mhacli.views.patch import patch_text
from mhacli.views.save import Picture, Pictures

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

COLUMNS = ("layer", "head", "kv_head", "kind", "pos", "value", "score")


@dataclass(frozen=True)
class PatchRequest:
    clean: str | None = None
    corrupt: str | None = None
    answer: str | None = None
    wrong: str | None = None
    pairs: str | Sequence[dict] | None = None  # a JSON-lines file ("-": stdin) or the objects, instead of clean...
    metric: str = "logit_diff"
    site: str = "z"
    by_pos: bool = False
    noise: bool = False
    sender: str | None = None  # "L.H"
    receiver_site: str = "q"
    pack_tokens: int = PACK_TOKENS  # tokens per packed rerun (mhacli.engine.segments); 1: every pair alone


def parse_sender(spec: str) -> tuple[int, int]:
    layer, dot, head = spec.strip().partition(".")
    digits = [p.isascii() and p.isdigit() and len(p) <= MAX_INDEX_DIGITS for p in (layer, head)]
    if not (dot and all(digits)):
        raise UsageError(f"{{sender}} {spec[:40]!r} is not a head: write LAYER.HEAD, e.g. 1.2", params=("sender",))
    return int(layer), int(head)


def _pair_lines(path: str) -> list[tuple[str, object]]:
    """(where, object) per non-empty line of a JSON-lines file; a TextError or UsageError naming a bad line.

    Read as --texts files are (mhacli.io.textin.iter_lines): UTF-8, no NUL bytes, bounded, CRLF or LF."""
    name = "stdin" if path == "-" else path
    rows: list[tuple[str, object]] = [(f"{name} line {n}", doc) for n, doc in read_json_lines(path, "pairs")]
    if not rows:
        raise UsageError(f"{{pairs}} {path} has no pairs", params=("pairs",))
    return rows


def _checked_pairs(rows: list[tuple[str, object]]) -> list[tuple[str, dict]]:
    """Each object is a {"clean", "corrupt", "answer", "wrong"} of strings; a UsageError names one that is not."""
    for where, obj in rows:
        keys = ("clean", "corrupt", "answer", "wrong")
        if not isinstance(obj, dict) or any(not isinstance(obj.get(k), str) for k in keys):
            raise UsageError(
                f'{{pairs}} {where}: expected {{"clean", "corrupt", "answer", "wrong"}}, each a string',
                params=("pairs",),
            )
    return rows  # type: ignore[return-value]  # checked above


def _pair(ckpt, tokenizer, clean: str, corrupt: str, answer: str, wrong: str, where: str) -> tuple[Pair, dict]:
    c = ckpt.config
    a = one_token(tokenizer, c.vocab_size, text=answer, token_id=None, param="answer")
    w = one_token(tokenizer, c.vocab_size, text=wrong, token_id=None, param="wrong")
    assert a is not None and w is not None
    prefix = f"{where}: " if where else ""
    try:
        check_answer_pair(a.id, w.id, c.vocab_size)
    except UsageError as e:
        raise UsageError(prefix + str(e), params=e.params) from None
    ct = encode(clean, ckpt, tokenizer, truncate=False)
    kt = encode(corrupt, ckpt, tokenizer, truncate=False)
    if len(ct.ids) != len(kt.ids):
        raise UsageError(
            f"{prefix}the clean and corrupted prompts differ in length: {len(ct.ids)} tokens "
            f"[{quoted_tokens(ct.tokens)}] and {len(kt.ids)} tokens [{quoted_tokens(kt.tokens)}]; "
            "patching needs the same positions",
            params=("clean", "corrupt"),
        )
    doc = {
        "clean": {"tokens": list(ct.tokens), "token_ids": [int(i) for i in ct.ids]},
        "corrupt": {"tokens": list(kt.tokens), "token_ids": [int(i) for i in kt.ids]},
        "answer": a.to_dict(),
        "wrong": w.to_dict(),
    }
    return Pair(np.asarray(ct.ids), np.asarray(kt.ids), a.id, w.id), doc


def read_pairs(ckpt, tokenizer, r: PatchRequest) -> tuple[list[Pair], dict]:
    """The request's pairs and the first pair's document; UsageErrors name the line of a bad pair."""
    if r.pairs is not None:
        if r.clean is not None or r.corrupt is not None:
            raise UsageError("give CLEAN CORRUPT or {pairs}, not both", params=("pairs",))
        found = [
            _pair(ckpt, tokenizer, o["clean"], o["corrupt"], o["answer"], o["wrong"], where)
            for where, o in _checked_pairs(
                _pair_lines(r.pairs) if isinstance(r.pairs, str) else [(f"pair {n}", o) for n, o in enumerate(r.pairs)]
            )
        ]
        if not found:
            raise UsageError("{pairs}: no pairs given", params=("pairs",))
        return [p for p, _ in found], found[0][1]
    if r.clean is None or r.corrupt is None:
        raise UsageError("give CLEAN and CORRUPT prompts, or {pairs}", params=("pairs",))
    if r.answer is None or r.wrong is None:
        raise UsageError("give {answer} and {wrong}: one token each", params=("answer", "wrong"))
    pair, doc = _pair(ckpt, tokenizer, r.clean, r.corrupt, r.answer, r.wrong, "")
    return [pair], doc


def head_kinds(ckpt, tokenizer, ids: np.ndarray) -> dict[tuple[int, int], str]:
    """Each head's kind on the clean prompt (the census' classifier)."""
    text = encode([int(i) for i in ids], ckpt, tokenizer, truncate=False)
    tally = KindTally([text], ckpt.config.n_head)
    for trace in forward(ckpt, text.ids, sinks=tally.sinks(0)):
        tally(0, trace)
    return {h: tally.kind(h) for h in tally.kinds}


def run_patch(ckpt, tokenizer, request: PatchRequest) -> dict:
    """`mha patch`'s document (CLI.md, Patching)."""
    r = request
    check_site(r.site)
    sender = parse_sender(r.sender) if r.sender is not None else None
    pairs, first = read_pairs(ckpt, tokenizer, r)
    result = patch(
        ckpt,
        pairs,
        metric_kind=r.metric,
        site=r.site,
        by_pos=r.by_pos or r.site == "resid",  # the whole residual stream of a layer is the source run itself
        direction="noise" if r.noise else "denoise",
        sender=sender,
        receiver_site=r.receiver_site,
        pack_tokens=r.pack_tokens,
    )
    site = r.receiver_site if sender is not None else r.site
    kinds = {} if site == "resid" else head_kinds(ckpt, tokenizer, pairs[0].clean)
    return patch_doc(ckpt, first, len(pairs), r, sender, site, result, kinds)


def _or_minus(n: int | None) -> int:
    return -1 if n is None else n


def patch_doc(ckpt, first: dict, n_pairs: int, r: PatchRequest, sender, site: str, result: PatchResult, kinds) -> dict:
    c = ckpt.config
    per_kv = site in ("k", "v")
    gqa = c.n_kv_head != c.n_head
    heads: list[dict] = []
    for (layer, h, pos), value in zip(result.units, result.values):
        qh = None if h is None or (per_kv and gqa) else h
        kv = None if h is None else h if per_kv else c.kv_head(h)  # resid: no head
        kind = kinds.get((layer, h)) if qh is not None else None
        heads.append(
            {"layer": layer, "head": qh, "kv_head": kv, "kind": kind, "pos": pos, "value": float(value),
             "score": result.score(float(value))}
        )  # fmt: skip
    heads.sort(key=lambda d: (-(d["score"] or 0.0), d["layer"], _or_minus(d["kv_head"])))  # stable: unit order
    return {
        "model": ckpt.model_dict(),
        **first,
        "n_pairs": n_pairs,
        "metric": r.metric,
        "site": site,
        "direction": "noise" if r.noise else "denoise",
        "sender": None if sender is None else {"layer": sender[0], "head": sender[1]},
        "clean_value": result.clean_value,
        "corrupt_value": result.corrupt_value,
        "heads": heads,
    }


# --- the result: what patch shows, in every format --------------------------------------------------------------


@dataclass(frozen=True)
class PatchedHead:
    """One patched unit: a query head (head None: a K/V head, for k/v sites on GQA models), at pos or everywhere.

    The resid site patches no head: head, kv_head and kind are None, pos the position of the layer's residual stream.
    """

    layer: int
    head: int | None
    kv_head: int | None
    kind: str | None
    pos: int | None
    value: float  # the metric with this unit patched (mean over pairs)
    score: float | None  # (value - corrupt) / (clean - corrupt); None when clean = corrupt


@dataclass
class PatchReport:
    """`mha patch` and mhacli.patch: one row per patched head (jsonl, csv, tsv), the document for json, the grid.

    `heads` are sorted by score, largest first; `clean_value`/`corrupt_value` the metric's means over the pairs.
    """

    doc: dict
    COLUMNS: Sequence[str] = COLUMNS
    PICTURES = Pictures("patch", figure="patch_figure", page="patch_page")

    @property
    def heads(self) -> list[PatchedHead]:
        return [PatchedHead(**{k: r[k] for k in COLUMNS}) for r in self.doc["heads"]]

    @property
    def clean_value(self) -> float:
        return float(self.doc["clean_value"])

    @property
    def corrupt_value(self) -> float:
        return float(self.doc["corrupt_value"])

    def to_dict(self) -> dict:
        return self.doc

    def records(self) -> list[dict]:
        return self.doc["heads"]

    def rows(self) -> Iterator[list]:
        for r in self.doc["heads"]:
            yield [r[k] for k in COLUMNS]

    def plain(self) -> str:
        return patch_text(self.doc)

    def view(self, console: Console) -> RenderableType:
        from mhacli.views.terminal.patch import patch_view

        return patch_view(console, self.doc)


def patch_picture(ckpt, doc: dict) -> Picture:
    """patch: the score grid (figure), every head ringed by its score (page)."""
    first = "".join(doc["clean"]["tokens"])
    return Picture(PatchReport.PICTURES, f"{ckpt.source} · patch {doc['site']} · {first[:60]!r}", {"doc": doc})
