"""`mha patch -f text`: the layer x head grid of scores (each head's kind letter after it) and the ranking.

By position (`--by-pos`): a head x position table. Heads are written L1H2 (a K/V head on GQA k/v sites: L1KV0).
The resid site: a layer x position table under the positions, the clean tokens and the corrupted ones that differ.
"""

from __future__ import annotations

from mhacli.views.display import token_label

CELL = 6  # a resid table's column: a score (+0.16, -10.00) or a token abbreviated to it


def header_lines(doc: dict) -> int:
    """The lines before the first score: the model and metric line, the values, the table's column header(s)."""
    return 5 if doc["site"] == "resid" else 3


def _fmt(score: float | None) -> str:
    return "   -" if score is None else f"{score:+.2f}"


def patch_text(doc: dict, top: int = 10) -> str:
    """The layer x head grid of scores (kind letter after each) and the ranking; by position: a head x pos table."""
    lines = [
        f"{doc['model'].get('source', '')}  site {doc['site']}  {doc['direction']}  metric {doc['metric']}"
        + (f"  sender L{doc['sender']['layer']}H{doc['sender']['head']}" if doc["sender"] else "")
        + f"  pairs {doc['n_pairs']}",
        f"clean {doc['clean_value']:.4f}  corrupt {doc['corrupt_value']:.4f}  "
        "score = (patched - corrupt) / (clean - corrupt)",
    ]
    rows = doc["heads"]
    if doc["site"] == "resid":
        lines += _resid_table(doc)
    elif any(r["pos"] is not None for r in rows):
        table: dict[tuple, dict[int, float | None]] = {}
        for r in rows:
            table.setdefault((r["layer"], r["head"], r["kv_head"]), {})[r["pos"]] = r["score"]
        n = 1 + max(r["pos"] for r in rows)
        lines.append("head    " + " ".join(f"{p:>5}" for p in range(n)))
        for (layer, h, kv), cells in sorted(table.items()):
            name = f"L{layer}H{h}" if h is not None else f"L{layer}KV{kv}"
            lines.append(f"{name:<8}" + " ".join(f"{_fmt(cells.get(p)):>5}" for p in range(n)))
    else:
        grid: dict[int, dict[int, dict]] = {}
        for r in rows:
            grid.setdefault(r["layer"], {})[r["head"] if r["head"] is not None else r["kv_head"]] = r
        width = 1 + max(max(g) for g in grid.values())
        label = "kv" if rows and rows[0]["head"] is None else "head"
        lines.append(f"layer\\{label} " + " ".join(f"{h:>7}" for h in range(width)))
        for layer in sorted(grid):
            row = [grid[layer].get(h) for h in range(width)]
            lines.append(
                f"{layer:>10} "
                + " ".join("       " if d is None else f"{_fmt(d['score']):>6}{(d['kind'] or ' ')[0]}" for d in row)
            )
    lines.append("top:")
    tokens = doc["clean"]["tokens"]
    for r in rows[:top]:
        pos = f" pos {r['pos']}" if r["pos"] is not None else ""
        if r["kv_head"] is None:  # resid: a layer's residual stream at a position
            name, what = f"L{r['layer']}", token_label(tokens[r["pos"]]) if r["pos"] < len(tokens) else ""
        else:
            name = f"L{r['layer']}H{r['head']}" if r["head"] is not None else f"L{r['layer']}KV{r['kv_head']}"
            what = r["kind"] or ""
        lines.append(f"  {name:<8}{pos} score {_fmt(r['score'])}  value {r['value']:.4f}  {what}")
    return "\n".join(lines) + "\n"


def _resid_table(doc: dict) -> list[str]:
    """Layers x positions; columns labelled by position, clean token and the corrupted token where it differs."""
    rows = doc["heads"]
    n = 1 + max((r["pos"] for r in rows), default=-1)
    clean, corrupt = doc["clean"]["tokens"], doc["corrupt"]["tokens"]

    def label(tokens: list[str], p: int, only_changed: bool = False) -> str:
        if p >= len(tokens) or (only_changed and p < len(clean) and tokens[p] == clean[p]):
            return " " * CELL
        return f"{token_label(tokens[p], CELL):>{CELL}}"

    grid: dict[int, dict[int, float | None]] = {}
    for r in rows:
        grid.setdefault(r["layer"], {})[r["pos"]] = r["score"]
    lines = [
        f"{'layer/pos':>10} " + " ".join(f"{p:>{CELL}}" for p in range(n)),
        f"{'clean':>10} " + " ".join(label(clean, p) for p in range(n)),
        f"{'corrupt':>10} " + " ".join(label(corrupt, p, only_changed=True) for p in range(n)),
    ]
    for layer in sorted(grid):
        lines.append(f"{layer:>10} " + " ".join(f"{_fmt(grid[layer].get(p)):>{CELL}}" for p in range(n)))
    return [line.rstrip() for line in lines]
