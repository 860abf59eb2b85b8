"""Plain text of `mha attribute` and `mha lens`, and the layout both their text and rich views share (no rich here).

Each function takes the command's JSON document (mhacli.ops.attribute, mhacli.ops.lens).
"""

from __future__ import annotations

from typing import TextIO

from mhacli.views.display import KIND_LETTER, token_label


def number(v: float) -> str:
    """A contribution in five characters: +1.23, +12.3, +123."""
    return f"{v:+.2f}" if abs(v) < 9.995 else f"{v:+.1f}" if abs(v) < 99.95 else f"{v:+.0f}"


def component_name(r: dict) -> str:
    """`L17H5`, `MLP 3`, `attn bias 3`, `remainder 3`, `embed`, `norm bias`, `unembed bias`."""
    kind = r["component"]
    if kind == "head":
        return f"L{r['layer']}H{r['head']}"
    label = {"mlp": "MLP", "attn_bias": "attn bias", "norm_bias": "norm bias", "unembed_bias": "unembed bias"}
    name = label.get(kind, kind)
    return f"{name} {r['layer']}" if "layer" in r else name


def metric_text(doc: dict) -> str:
    """`logit(" Mary") − logit(" John")` or `logit(" Paris")`."""
    a = f"logit({quoted(doc['answer']['token'])})"
    return a if doc["wrong"] is None else f"{a} − logit({quoted(doc['wrong']['token'])})"


def attribute_header(doc: dict) -> list[tuple[str, str]]:
    m = doc["model"]
    pos = doc["pos"]
    wrong = doc["wrong"]
    answer = f"{quoted(doc['answer']['token'])} (id {doc['answer']['id']})"
    return [
        ("model", f"{m['source']} ({m['model_type']}, {m['n_layer']} layers x {m['n_head']} heads)"),
        ("position", f"{pos} of {len(doc['tokens'])}: {quoted(doc['tokens'][pos])}, predicting the next token"),
        ("answer", answer + ("" if wrong is None else f" vs wrong {quoted(wrong['token'])} (id {wrong['id']})")),
        (
            "metric",
            metric_text(doc) + (" (value biases folded into the layer's bias)" if doc["fold_value_bias"] else ""),
        ),
    ]


def check_line(doc: dict) -> str:
    """The completeness check: the components' sum against the model's value, both shown."""
    value, total, err = doc["value"], doc["sum"], doc["completeness_error"]
    rel = err / abs(value) if value else err
    ok = "✓" if rel <= 1e-4 or err <= 1e-4 else "✗ (more than 1e-4 apart)"
    what = "logit difference" if doc["wrong"] is not None else "logit"
    return f"check: sum {total:.6f} = {what} {value:.6f} (|sum − value| {err:.1e}) {ok}"


def quoted(token: str) -> str:
    """A token in quotes as the tokenizer shows it (its display string is escaped already)."""
    return f"'{token}'"


def tokens_text(effects: list[dict], k: int = 3) -> str:
    return " ".join(quoted(e["token"]) for e in effects[:k])


def ranked(doc: dict, top: int) -> list[dict]:
    """The `top` components of largest |attribution|, largest attribution first."""
    rows = sorted(doc["components"], key=lambda r: -abs(r["attribution"]))[:top]
    return sorted(rows, key=lambda r: -r["attribution"])


def others_text(doc: dict) -> str:
    """The components that are not heads, summed by kind: `embed +0.10 · MLPs +2.31 · attn biases -0.02`."""
    totals: dict[str, float] = {}
    for r in doc["components"]:
        if r["component"] != "head":
            totals[r["component"]] = totals.get(r["component"], 0.0) + r["attribution"]
    heads = sum(r["attribution"] for r in doc["components"] if r["component"] == "head")
    names = {"mlp": "MLPs", "attn_bias": "attn biases", "remainder": "remainders", "norm_bias": "norm bias",
             "unembed_bias": "unembed bias", "embed": "embed"}  # fmt: skip
    return " · ".join([f"heads {number(heads)}"] + [f"{names[k]} {number(v)}" for k, v in totals.items()])


def write_attribute(out: TextIO, doc: dict, top: int = 12) -> None:
    """Plain `mha attribute`: the header, the check line, each layer's heads and MLP, then the ranking."""
    header = attribute_header(doc)
    width = max(len(k) for k, _ in header)
    out.write("".join(f"{k:<{width}}  {v}\n" for k, v in header))
    out.write(check_line(doc) + "\n" + others_text(doc) + "\n\n")
    n_head = doc["model"]["n_head"]
    cells: dict[tuple, str] = {}
    for r in doc["components"]:
        if r["component"] in ("head", "mlp"):
            cells[(r["layer"], r.get("head", "mlp"))] = number(r["attribution"])
    cols = [*range(n_head), "mlp"]
    out.write("layer " + " ".join(f"{('H' + str(c)) if c != 'mlp' else 'MLP':>6}" for c in cols) + "\n")
    for layer in range(doc["model"]["n_layer"]):
        out.write(f"{layer:>5} " + " ".join(f"{cells.get((layer, c), ''):>6}" for c in cols) + "\n")
    out.write(f"\ntop {min(top, len(doc['components']))} components by |attribution|\n")
    for rank, r in enumerate(ranked(doc, top), start=1):
        kind = r.get("kind") or ""
        line = f"{rank:>3}  {component_name(r):<14} {kind:<16} {r['attribution']:+.4f}"
        if "promotes" in r:
            line += f"  up {tokens_text(r['promotes'])}  down {tokens_text(r['suppresses'])}"
        out.write(line.rstrip() + "\n")


def kind_letter(kind: str | None) -> str:
    return KIND_LETTER.get(kind, " ") if kind else " "


# --- lens -------------------------------------------------------------------------------------------------------------


def layer_label(layer: int) -> str:
    return "emb" if layer == -1 else str(layer)


def write_lens(out: TextIO, doc: dict) -> None:
    """Plain `mha lens`: one line per layer and position: the top tokens with probabilities, the next token's rank."""
    tokens = doc["tokens"]
    out.write("layer  pos  token          top (prob)                              next token: prob, rank\n")
    for layer in doc["layers"]:
        for cell in layer["positions"]:
            top = "  ".join(f"{token_label(t['token'], 12)} {t['prob']:.3f}" for t in cell["top"][:3])
            nxt = cell["next"]
            nxt_text = "–" if nxt is None else f"{token_label(nxt['token'], 12)} {nxt['prob']:.3f}, rank {nxt['rank']}"
            token = token_label(tokens[cell["pos"]], 14)
            out.write(f"{layer_label(layer['layer']):>5}  {cell['pos']:>3}  {token:<14} {top:<40} {nxt_text}\n")
