"""`mha patch -f text`: the layer x head grid of scores (each head's kind letter after it) and the ranking.

By position (`--by-pos`): a head x position table. Heads are written L1H2 (a K/V head on GQA k/v sites: L1KV0).
"""

from __future__ import annotations


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
    if any(r["pos"] is not None for r in rows):
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
    for r in rows[:top]:
        name = f"L{r['layer']}H{r['head']}" if r["head"] is not None else f"L{r['layer']}KV{r['kv_head']}"
        pos = f" pos {r['pos']}" if r["pos"] is not None else ""
        lines.append(f"  {name:<8}{pos} score {_fmt(r['score'])}  value {r['value']:.4f}  {r['kind'] or ''}")
    return "\n".join(lines) + "\n"
