"""`--save FILE.html`: one self-contained interactive page (data -> str).

No library, no network: the script (mhacli/views/web/page.js) and style (page.css) are package resources inlined
into the page, the data sits in a `<script type="application/json">` block read with JSON.parse, and a
Content-Security-Policy forbids every fetch.

The data block (one JSON object):
- `title`, `caption`: the command and the model and text, shown as text (never as HTML); the caption of a run with
heads removed (`--ablate`) starts with them (`ablated: L0H3 (zeroed) · ...`, mhacli.views.ablated);
- `tokens`: the text's tokens, `layers`/`heads`: the grid's rows and columns;
- `cells`: one per head in the grid: `layer`, `head`, `name` (`L1H2`), `label` (under the thumbnail), `title`
(tooltip), `colour` (the ring: the kind's colour, or the value's), `info` ([key, value] pairs shown when opened);
- `grid`: `{"colour": "kind" | "value", "says": what a value colour means}`; `kinds`: letter and colour per kind;
- `maps` (absent when the command has none): `{"A": [...], "B": [...]}`, one string per cell: the head's lower
triangle row by row (query i over keys 0..i, T(T+1)/2 values), each weight w as the byte round(255 w),
zlib-deflated, base64. The log view is computed from these bytes (log10 of level/255: 1/255 to 1);
- `thumbs`: one string per cell, S x S bytes (S = min(T, THUMB)): the largest byte of each block of cells, base64;
- `panels`: the large view of an opened head: `[{"title", "kind": "map" | "diff", "sets": ["A"] | ["A", "B"]}]`;
- `start`: the cell opened first.

Many heads (SmolLM2-135M: 30 layers x 9 heads): the opened head's panel is sticky (it stays in view while the page
scrolls down a long grid), and every page has a head filter (`L3`, `H5`, `L3H5` name layers and heads exactly; any
other word is looked for in a head's title, label and numbers; rows with no match hide). The token search shows only
where there is a text (not on the census page). See docs/pictures-many-heads.md.
"""

from __future__ import annotations

import base64
import html
import json
import zlib
from collections.abc import Sequence
from importlib import resources

import numpy as np

from mhacli.analyses.heads import HeadView
from mhacli.analyses.stats import KINDS, STAT_NAMES
from mhacli.io.tokenizer import quoted
from mhacli.views.display import KIND_HEX, KIND_LETTER
from mhacli.views.terminal.heatmap import ramp

THUMB = 48  # thumbnail side in cells (longer texts are max-pooled to it)
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
    "connect-src 'none'; font-src 'none'; form-action 'none'; base-uri 'none'"
)
TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mha">
<title>{title}</title>
<style>
{css}
</style>
</head>
<body>
<header>
<h1 id="title"></h1>
<p id="caption"></p>
<div id="controls">
<label>filter heads <input id="filter" type="search" placeholder="e.g. induction, L3, L2H5" autocomplete="off"></label>
<span id="filter-count"></span>
<span id="search-box"><label>search tokens
<input id="search" type="search" placeholder="e.g. cat" autocomplete="off"></label>
<span id="search-count"></span></span>
<span id="scale"><label><input type="radio" name="scale" id="scale-lin" checked> weights</label>
<label><input type="radio" name="scale" id="scale-log"> log weights</label></span>
<span id="legend"></span>
</div>
</header>
<div id="error" hidden></div>
<main>
<section id="grid-box"><h2>{heading}: click one</h2><div id="grid"></div></section>
<section id="detail"><h2 id="head-title"></h2><div id="hover"></div>
<div id="detail-row"><div id="maps"></div><dl id="info"></dl></div></section>
</main>
<section id="text-box"><h2>text: hover a token to see where it looks{note}</h2><div id="strip"></div></section>
<script type="application/json" id="mha-data">{data}</script>
<script>
{js}
</script>
</body>
</html>
"""


GRID_HEADING = "heads (layer × head)"  # a page whose grid is not one of heads names its own (grid.heading, grid.corner)


def resource(name: str) -> str:
    return resources.files("mhacli.views.web").joinpath(name).read_text(encoding="utf-8")


def json_for_html(doc: dict) -> str:
    """JSON that cannot end its <script> block or open a comment.

    <, > and & become \\u escapes (JSON.parse reads them back).
    """
    text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build(doc: dict) -> str:
    """The page for a data block (module docstring)."""
    js = resource("page.js")
    if "</script" in js.lower():  # pragma: no cover - a guard on our own file
        raise RuntimeError("page.js must not contain </script")
    note = "" if doc.get("maps") else " (this view has no maps)"
    return TEMPLATE.format(
        csp=CSP,
        title=html.escape(doc["title"]),
        css=resource("page.css"),
        data=json_for_html(doc),
        js=js,
        note=html.escape(note),
        heading=html.escape(doc["grid"].get("heading", GRID_HEADING)),
    )


# --- encoding the maps ----------------------------------------------------------------------------------------------


def quantise(attention: np.ndarray) -> np.ndarray:
    """[n_seq, n_seq] weights -> uint8 levels round(255 w), clipped to 0..255."""
    return np.clip(np.rint(np.asarray(attention, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def encode_map(levels: np.ndarray) -> str:
    """[n_seq, n_seq] uint8 -> the lower triangle, row-major, deflated, base64."""
    rows, cols = np.tril_indices(levels.shape[0])
    return base64.b64encode(zlib.compress(levels[rows, cols].tobytes(), 6)).decode("ascii")


def thumbnail(levels: np.ndarray, side: int) -> np.ndarray:
    """[n_seq, n_seq] uint8 -> [side, side]: the largest level of each block (so a sharp diagonal stays visible)."""
    n = levels.shape[0]
    edges = (np.arange(side) * n) // side  # block starts, strictly increasing when side <= n
    pooled = np.maximum.reduceat(np.maximum.reduceat(levels, edges, axis=0), edges, axis=1)
    return pooled.astype(np.uint8)


def encode_thumb(levels: np.ndarray, side: int) -> str:
    return base64.b64encode(thumbnail(levels, side).tobytes()).decode("ascii")


def map_sets(sets: dict[str, Sequence[np.ndarray]]) -> tuple[dict, list[str], int]:
    """{"A": [maps], ...} -> (encoded maps, thumbnails of the last set, thumbnail side)."""
    first = next(iter(sets.values()))
    n_seq = first[0].shape[0] if first else 1
    side = min(n_seq, THUMB)
    encoded: dict[str, list[str]] = {}
    thumbs: list[str] = []
    last = list(sets)[-1]
    for name, maps in sets.items():
        encoded[name] = []
        for attention in maps:
            levels = quantise(attention)
            encoded[name].append(encode_map(levels))
            if name == last:
                thumbs.append(encode_thumb(levels, side))
    return encoded, thumbs, side


# --- what cells say -------------------------------------------------------------------------------------------------


def num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def hex_of(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def kinds_block() -> dict:
    return {k: {"letter": KIND_LETTER[k], "colour": KIND_HEX[k]} for k in KINDS}


def head_cell(v: HeadView, value: float | None = None, what: str = "kind score") -> dict:
    s = v.stats
    shown = s.score if value is None and what == "kind score" else value
    rows = f" over {s.kind_support} rows" if s.kind_support is not None else ""
    info = [["kind", f"{s.kind} (score {num(s.score, 2)}{rows})"]]
    if v.kv_head is not None and v.kv_head != v.head:
        info.append(["K/V head", str(v.kv_head)])
    info += [[name, num(s.values[name])] for name in STAT_NAMES]
    info.append(
        [
            "rows behind duplicate / induction",
            f"{s.support.get('duplicate_token', 0)} / {s.support.get('induction', 0)}",
        ]
    )
    score = "–" if shown is None else f"{shown:.2f}"
    return {
        "layer": s.layer, "head": s.head, "name": f"L{s.layer}H{s.head}",
        "label": f"{KIND_LETTER[s.kind]} {score}", "title": f"L{s.layer}H{s.head} {s.kind} {num(s.score, 2)}{rows}",
        "colour": KIND_HEX[s.kind], "info": info,
    }  # fmt: skip


def base_doc(command: str, caption: str, tokens: Sequence[str], cells: list[dict]) -> dict:
    return {
        "title": f"mha {command}", "caption": caption, "tokens": list(tokens),
        "layers": sorted({c["layer"] for c in cells}), "heads": sorted({c["head"] for c in cells}),
        "cells": cells, "grid": {"colour": "kind", "says": ""}, "kinds": kinds_block(), "start": 0,
    }  # fmt: skip


# --- one page per command -------------------------------------------------------------------------------------------


def inspect_page(
    *, views: Sequence[HeadView], tokens: Sequence[str], caption: str, stat: str = "auto", command: str = "inspect", **_
) -> str:
    """Every selected head: thumbnails ringed by kind, the opened head's map, the text strip."""
    if stat == "auto":
        cells = [head_cell(v) for v in views]
    else:
        cells = [head_cell(v, v.stats.unit_value(stat), stat) for v in views]
    doc = base_doc(command, caption, tokens, cells)
    maps, thumbs, side = map_sets({"A": [v.whole_map() for v in views]})
    scored = [v.stats.score if v.stats.score is not None else -1.0 for v in views]
    notable = [k for k, v in enumerate(views) if v.stats.kind not in ("broad", "mixed")]
    doc |= {
        "maps": maps, "thumbs": thumbs, "thumb_size": side,
        "panels": [{"title": "", "kind": "map", "sets": ["A"]}],
        "start": max(notable, key=lambda k: scored[k]) if notable else 0,
    }  # fmt: skip
    return build(doc)


def stats_page(*, views: Sequence[HeadView], tokens: Sequence[str], caption: str, stat: str, **_) -> str:
    return inspect_page(views=views, tokens=tokens, caption=caption, stat=stat, command="stats")


def diff_page(
    *, report, views_a: Sequence[HeadView], views_b: Sequence[HeadView], tokens: Sequence[str], caption: str, **_
) -> str:
    """B's grid ringed by divergence (its share of the largest), each head opened as A, B and B - A."""
    from mhacli.analyses.diff import METRICS

    top = report.max_divergence
    a_of = {(v.layer, v.head): v for v in views_a}
    b_of = {(v.layer, v.head): v for v in views_b}
    rows = sorted(report.heads, key=lambda r: (r.layer_b, r.head_b))
    cells, maps_a, maps_b = [], [], []
    for r in rows:
        share = r.divergence / top if top > 0 else 0.0
        partner = f"L{r.layer_a}H{r.head_a}"
        info = [
            ["divergence", f"{r.divergence:.4g} ({report.metric})"],
            ["MODEL_A head", f"{partner} {r.kind_a}"],
            ["MODEL_B head", f"L{r.layer_b}H{r.head_b} {r.kind_b}"],
        ]
        info += [[f"Δ {name}", num(r.stat_deltas[name])] for name in STAT_NAMES]
        cells.append({
            "layer": r.layer_b, "head": r.head_b, "name": f"L{r.layer_b}H{r.head_b}",
            "label": f"{KIND_LETTER[r.kind_b]} {r.divergence:.2g}",
            "title": f"L{r.layer_b}H{r.head_b} (A: {partner}) {report.metric} {r.divergence:.3g}",
            "colour": hex_of(ramp(share)), "info": info,
        })  # fmt: skip
        maps_a.append(a_of[(r.layer_a, r.head_a)].whole_map())
        maps_b.append(b_of[(r.layer_b, r.head_b)].whole_map())
    doc = base_doc("diff", caption, tokens, cells)
    maps, thumbs, side = map_sets({"A": maps_a, "B": maps_b})
    most = report.heads[0] if report.heads else None
    says = f"ring colour: {METRICS[report.metric]}, as a share of the largest ({top:.3g}); thumbnails: MODEL_B"
    doc |= {
        "grid": {"colour": "value", "says": says},
        "maps": maps, "thumbs": thumbs, "thumb_size": side,
        "panels": [{"title": "MODEL_A", "kind": "map", "sets": ["A"]},
                   {"title": "MODEL_B", "kind": "map", "sets": ["B"]},
                   {"title": "B − A", "kind": "diff", "sets": ["A", "B"]}],
        "start": rows.index(most) if most is not None else 0,
    }  # fmt: skip
    return build(doc)


def delta_colour(delta: float, top: float) -> str:
    """Loss up: red, loss down: blue, by the share of the largest change; no change: light grey."""
    x = min(abs(delta) / top, 1.0) if top > 0 else 0.0
    end = (178, 24, 43) if delta > 0 else (33, 102, 172)
    return hex_of(tuple(round(230 + (c - 230) * x) for c in end))  # type: ignore[arg-type]


def ablate_page(*, doc: dict, views: Sequence[HeadView] | None, tokens: Sequence[str], caption: str, **_) -> str:
    """Heads ringed by Δloss; opened, the intact model's map of the head on the first text."""
    heads = sorted(doc["heads"], key=lambda r: (r["layer"], r["head"]))
    top = max((abs(r["delta"]) for r in heads), default=0.0)
    cells = [
        {
            "layer": r["layer"],
            "head": r["head"],
            "name": f"L{r['layer']}H{r['head']}",
            "label": f"{KIND_LETTER[r['kind']]} {r['delta']:+.2f}",
            "title": f"L{r['layer']}H{r['head']} Δloss {r['delta']:+.4f}",
            "colour": delta_colour(r["delta"], top),
            "info": [
                ["Δloss", f"{r['delta']:+.4f} nats/token ({r['delta_pct']:+.1f}%)"],
                ["loss without it", f"{r['loss']:.4f}"],
                ["baseline loss", f"{doc['baseline_loss']:.4f}"],
                ["kind", r["kind"]],
                ["method", doc["method"]],
            ],
        }
        for r in heads
    ]
    page = base_doc("ablate", caption, tokens, cells)
    page["grid"] = {
        "colour": "value",
        "says": f"ring colour: Δloss with the head removed (red: loss rises, blue: falls; "
        f"largest {top:.3g} nats/token)",
    }
    if views:
        by_pos = {(v.layer, v.head): v for v in views}
        maps, thumbs, side = map_sets({"A": [by_pos[(c["layer"], c["head"])].whole_map() for c in cells]})
        page |= {
            "maps": maps,
            "thumbs": thumbs,
            "thumb_size": side,
            "panels": [{"title": "{head}, intact model, first text", "kind": "map", "sets": ["A"]}],
        }
    if heads:
        best = max(heads, key=lambda r: r["delta"])
        page["start"] = heads.index(best)
    return build(page)


def census_page(*, doc: dict, caption: str, **_) -> str:
    """Heads ringed by kind, labelled with their confidence; opened, the evidence and each source's means."""
    cells = []
    for h in sorted(doc["heads"], key=lambda h: (h["layer"], h["head"])):
        ev = h["evidence"]
        info = [
            ["kind", h["kind"]],
            ["confidence", f"{h['confidence']:.2f}"],
            ["evidence", f"{ev['statistic']} on {ev['source']}: mean {num(ev['mean'])}" if ev.get("source") else "–"],
        ]
        for source, s in h["by_source"].items():
            means = ", ".join(f"{k} {num(v, 2)}" for k, v in s["mean"].items() if v is not None)
            info.append([f"{source} ({s['n_texts']} texts)", means])
        cells.append({
            "layer": h["layer"], "head": h["head"], "name": f"L{h['layer']}H{h['head']}",
            "label": f"{KIND_LETTER[h['kind']]} {h['confidence']:.2f}",
            "title": f"L{h['layer']}H{h['head']} {h['kind']} (confidence {h['confidence']:.2f})",
            "colour": KIND_HEX[h["kind"]], "info": info,
        })  # fmt: skip
    page = base_doc("census", caption, [], cells)
    return build(page)


def composition_info(doc: dict, layer: int, head: int, per_mode: int = 3) -> list[list[str]]:
    """A head's strongest compositions of each mode: from earlier heads into it, and from it into later heads."""
    info = []
    for mode in doc["modes"]:
        base = doc["baseline"][mode]
        rows = [r for r in doc["composition"] if r["mode"] == mode]
        for side, other, word in (("to", "from", "into it from"), ("from", "to", "from it into")):
            mine = [r for r in rows if (r[side]["layer"], r[side]["head"]) == (layer, head)][:per_mode]
            if mine:
                text = ", ".join(f"L{r[other]['layer']}H{r[other]['head']} {r['score']:.3f}" for r in mine)
                info.append([f"{mode}-composition {word}", f"{text} (baseline {base:.3f})"])
    return info


def circuits_page(*, doc: dict, caption: str, **_) -> str:
    """Heads ringed by their copying score; opened, their strongest compositions and token pairs."""
    from mhacli.views.plain import copying_text, pair_text

    cells = []
    for h in doc["heads"]:
        name = f"L{h['layer']}H{h['head']}"
        info = [["copying score", copying_text(h["copying"])], ["K/V head", str(h["kv_head"])]]
        info += composition_info(doc, h["layer"], h["head"])
        info += [["OV attend → write", pair_text(p, "attend", "write")] for p in h["ov_top"]]
        info += [["QK query → key", pair_text(p, "query", "key")] for p in h["qk_top"]]
        cells.append({
            "layer": h["layer"], "head": h["head"], "name": name, "label": f"C {copying_text(h['copying'])}",
            "title": f"{name} copying {copying_text(h['copying'])}", "info": info,
            "colour": "#dddddd" if h["copying"] is None else delta_colour(h["copying"], 1.0),
        })  # fmt: skip
    page = base_doc("circuits", caption, [], cells)
    page["grid"] = {
        "colour": "value",
        "says": "ring colour: copying score (red: +1, copies what it attends to; blue: -1); open a head for its "
        "strongest compositions and token pairs",
    }
    return build(page)


def patch_page(*, doc: dict, caption: str, **_) -> str:
    """Each patched head ringed by its score (red: restores the clean behaviour, blue: pushes the other way).

    The resid site: one ring per layer and position (the grid's columns are positions, the cells name the token).
    """
    if doc["site"] == "resid":
        return _resid_page(doc, caption)
    cells = []
    for r in doc["heads"]:
        if r["pos"] is not None or r["head"] is None:
            continue  # the grid has one cell per query head: all positions, per query head
        name = f"L{r['layer']}H{r['head']}"
        score = "null" if r["score"] is None else f"{r['score']:+.3f}"
        cells.append({
            "layer": r["layer"], "head": r["head"], "name": name, "label": score, "title": f"{name} score {score}",
            "info": [["score", score], ["patched metric", f"{r['value']:.4f}"], ["kind", str(r["kind"])]],
            "colour": "#dddddd" if r["score"] is None else delta_colour(r["score"], 1.0),
        })  # fmt: skip
    page = base_doc("patch", caption, [], cells)
    page["grid"] = {"colour": "value", "says": f"ring colour: {doc['site']} patching score (red: +1, blue: -1)"}
    return build(page)


def _resid_page(doc: dict, caption: str) -> str:
    tokens = doc["clean"]["tokens"]
    cells = []
    for r in sorted(doc["heads"], key=lambda r: (r["layer"], r["pos"])):
        token = tokens[r["pos"]] if r["pos"] < len(tokens) else ""
        name, score = f"L{r['layer']} pos {r['pos']}", "null" if r["score"] is None else f"{r['score']:+.3f}"
        cells.append({
            "layer": r["layer"], "head": r["pos"], "name": name, "label": score,
            "title": f"{name} {quoted(token)} score {score}",
            "info": [["score", score], ["patched metric", f"{r['value']:.4f}"], ["token", quoted(token)]],
            "colour": "#dddddd" if r["score"] is None else delta_colour(r["score"], 1.0),
        })  # fmt: skip
    page = base_doc("patch", caption, [], cells)  # no maps: no token strip to search
    page["grid"] = {
        "colour": "value",
        "heading": "residual stream (layer × position)",
        "corner": "L\\pos",
        "says": "ring colour: resid patching score of the residual stream entering the layer (rows) at each position "
        "(columns) (red: +1, blue: -1)",
    }
    return build(page)


def page_for(picture) -> str:
    """The page of a save.Picture: the builder its result names (Pictures.page), in this module."""
    ablated = picture.ablated  # a run with heads removed says so first in its caption (the header)
    caption = picture.caption if ablated is None else f"{ablated.describe()} · {picture.caption}"
    return globals()[picture.of.page](caption=caption, **picture.data)


def attribute_page(*, doc: dict, views: Sequence[HeadView] | None, tokens: Sequence[str], caption: str, **_) -> str:
    """Heads ringed by their direct share of the metric; opened, the head's map and the tokens it promotes."""
    heads = sorted((r for r in doc["components"] if r["component"] == "head"), key=lambda r: (r["layer"], r["head"]))
    top = max((abs(r["attribution"]) for r in heads), default=0.0)

    def tokens_of(effects: list[dict]) -> str:
        return ", ".join(f"{quoted(e['token'])} {e['value']:+.2f}" for e in effects)

    cells = []
    for r in heads:
        info = [["share", f"{r['attribution']:+.4f} of {doc['metric']} {doc['value']:.4f}"], ["kind", str(r["kind"])]]
        info.append(["K/V head", str(r["kv_head"])])
        if "promotes" in r:
            info += [["promotes", tokens_of(r["promotes"])], ["suppresses", tokens_of(r["suppresses"])]]
        cells.append({
            "layer": r["layer"], "head": r["head"], "name": f"L{r['layer']}H{r['head']}",
            "label": f"{KIND_LETTER.get(r['kind'] or '', '·')} {r['attribution']:+.2f}",
            "title": f"L{r['layer']}H{r['head']} share {r['attribution']:+.4f}",
            "colour": delta_colour(r["attribution"], top), "info": info,
        })  # fmt: skip
    page = base_doc("attribute", caption, tokens, cells)
    page["grid"] = {
        "colour": "value",
        "says": f"ring colour: the head's direct share of {doc['metric']} (red: raises it, blue: lowers it; "
        f"largest {top:.3g}); sum {doc['sum']:.4f}, model {doc['value']:.4f}",
    }
    if views:
        by_pos = {(v.layer, v.head): v for v in views}
        maps, thumbs, side = map_sets({"A": [by_pos[(c["layer"], c["head"])].whole_map() for c in cells]})
        page |= {
            "maps": maps, "thumbs": thumbs, "thumb_size": side,
            "panels": [{"title": "{head}: where it looks", "kind": "map", "sets": ["A"]}],
        }  # fmt: skip
    if heads:
        page["start"] = heads.index(max(heads, key=lambda r: r["attribution"]))
    return build(page)


def lens_page(*, doc: dict, caption: str, **_) -> str:
    """Rows: layers (-1: the embeddings), columns: positions; each cell the top token, ringed by its probability."""
    cells = []
    for layer in doc["layers"]:
        for c in layer["positions"]:
            top, nxt = c["top"][0], c["next"]
            info = [["top tokens", ", ".join(f"{quoted(t['token'])} {t['prob']:.3f}" for t in c["top"])]]
            if nxt is not None:
                info.append(["next token", f"{quoted(nxt['token'])}: prob {nxt['prob']:.4f}, rank {nxt['rank']}"])
            cells.append({
                "layer": layer["layer"], "head": c["pos"], "name": f"layer {layer['layer']} pos {c['pos']}",
                "label": f"{quoted(top['token'])} {top['prob']:.2f}",
                "title": f"layer {layer['layer']} at {quoted(doc['tokens'][c['pos']])}: "
                         f"{quoted(top['token'])} {top['prob']:.3f}",
                "colour": hex_of(ramp(top["prob"])), "info": info,
            })  # fmt: skip
    page = base_doc("lens", caption, doc["tokens"], cells)
    page["grid"] = {
        "colour": "value",
        "says": "rows: layers (-1: the embeddings), columns: positions; colour: the top token's probability",
    }
    return build(page)
