"""Plain text views (the default when stdout is not a terminal): aligned, no colour, no ANSI, no box drawing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TextIO

from mhacli.analyses.heads import HeadView
from mhacli.analyses.partial import strongest
from mhacli.engine.arch import family
from mhacli.views.display import token_label


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def head_line(view: HeadView) -> str:
    s = view.stats
    stats = "  ".join(f"{k}={fmt(v)}" for k, v in s.values.items())
    kv = f"  kv_head={view.kv_head}" if view.kv_head is not None and view.kv_head != view.head else ""
    return f"layer {s.layer} head {s.head}{kv}  kind={s.kind}{kind_evidence(s)}  {stats}"


def kind_evidence(s) -> str:
    """' (0.920, 38 rows)' for the kinds that need support, ' (0.998)' for the others."""
    score = "-" if s.score is None else f"{s.score:.3f}"
    rows = s.kind_support
    return f" ({score}, {rows} rows)" if rows is not None else f" ({score})"


def write_inspect(
    out: TextIO, views: Sequence[HeadView], tokens: Sequence[str], *, query: int | None = None, top: int | None = None
) -> None:
    labels = [token_label(t, 12) for t in tokens]
    out.write("tokens: " + " ".join(f"{i}:{t}" for i, t in enumerate(labels)) + "\n")
    for view in views:
        out.write("\n" + head_line(view) + "\n")
        attention = view.shown_map()
        if query is not None:
            for j in range(query + 1):
                out.write(f"{j:>5} {labels[j]:<12} {attention[query, j]:.4f}\n")
        elif top is not None:
            for i in range(attention.shape[0]):
                best, weights = strongest(attention, i, top)
                keys = ", ".join(f"{j}:{labels[j]} {w:.3f}" for j, w in zip(best, weights))
                out.write(f"{i:>5} {labels[i]:<12} -> {keys}\n")
        else:
            n = attention.shape[0]
            out.write(" " * 19 + "".join(f"{j:>6}" for j in range(n)) + "\n")
            for i in range(n):
                cells = "".join(f"{attention[i, j]:6.2f}" if j <= i else "      " for j in range(n))
                out.write(f"{i:>5} {labels[i]:<12} {cells.rstrip()}\n")


# The text table's columns: short names of the statistics (README, "mha stats"), values rounded for reading.
TEXT_COLUMNS = (
    ("entropy", "entropy", 3), ("max_weight", "max_w", 3), ("mean_distance", "dist", 1), ("first_token", "first", 3),
    ("self", "self", 3), ("previous_token", "prev", 3), ("duplicate_token", "dup", 3), ("induction", "ind", 3),
)  # fmt: skip


def write_stats(out: TextIO, views: Sequence[HeadView], stat: str = "auto") -> None:
    """One aligned row per head.

    Name, kind, kind score (0-1), every statistic, and the rows behind the duplicate and induction means. `stat`
    other than auto orders the heads by that statistic, largest first (undefined last).
    """
    if stat != "auto":
        views = sorted(views, key=lambda v: (v.stats.values[stat] is None, -(v.stats.values[stat] or 0.0)))
    header = ["head", "kind", "score", *(short for _, short, _ in TEXT_COLUMNS), "rows"]
    rows = []
    for v in views:
        s = v.stats
        cells = [f"L{s.layer}H{s.head}", s.kind, "-" if s.score is None else f"{s.score:.3f}"]
        cells += ["-" if s.values[name] is None else f"{s.values[name]:.{d}f}" for name, _, d in TEXT_COLUMNS]
        cells.append(f"{s.support.get('duplicate_token', 0)}/{s.support.get('induction', 0)}")
        rows.append(cells)
    _aligned(out, header, rows)


# --- mha diff ---------------------------------------------------------------------------------------------------

from mhacli.analyses.diff import DIFF_COLUMNS, METRICS, DiffReport, table_row  # noqa: E402
from mhacli.views.formats import format_cell, write_table  # noqa: E402


def fmt_divergence(v: float) -> str:
    """Divergences span many decades (a float16 copy: 1e-7): significant digits, not fixed decimals."""
    return f"{v:.6g}"


def diff_cells(report: DiffReport) -> list[list]:
    """DIFF_COLUMNS rows with the divergence pre-formatted, for write_table and the plain table."""
    rows = []
    for r in report.heads:
        row = table_row(r)
        row[DIFF_COLUMNS.index("divergence")] = fmt_divergence(r.divergence)
        rows.append(row)
    return rows


def write_diff_table(out: TextIO, fmt: str, report: DiffReport) -> None:
    """csv/tsv: one row per compared head pair, largest divergence first."""
    write_table(out, fmt, DIFF_COLUMNS, diff_cells(report))


def _aligned(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def write_diff(out: TextIO, report: DiffReport, model_a: str, model_b: str, n_tokens: Sequence[int]) -> None:
    """Plain `mha diff`: a short header, then every head pair ranked by divergence (and the nearest heads)."""
    (la, ha), (lb, hb) = report.shape_a, report.shape_b
    if report.mode == "paired":
        mode = f"paired: each head against the same head of MODEL_B ({la} layers x {ha} heads)"
    else:
        mode = f"matched: MODEL_A {la} x {ha}, MODEL_B {lb} x {hb}; one-to-one Hungarian assignment"
    tokens = f"{n_tokens[0]} tokens" if len(n_tokens) == 1 else f"{min(n_tokens)}-{max(n_tokens)} tokens each, averaged"
    header = [
        ("model_a", model_a),
        ("model_b", model_b),
        ("metric", f"{report.metric}: {METRICS[report.metric]}"),
        ("mode", mode),
        ("texts", f"{report.n_texts} ({tokens})"),
    ]
    width = max(len(k) for k, _ in header)
    out.write("".join(f"{k:<{width}}  {v}\n" for k, v in header) + "\n")
    rows = [[format_cell(c) or "-" for c in row] for row in diff_cells(report)]
    _aligned(out, ["rank", *DIFF_COLUMNS], [[str(i), *r] for i, r in enumerate(rows, start=1)])
    if report.mode == "matched":
        for side, unmatched in (("MODEL_A", report.unmatched_a), ("MODEL_B", report.unmatched_b)):
            if unmatched:
                out.write(f"\nunmatched heads of {side}: " + ", ".join(f"L{lay}H{h}" for lay, h in unmatched) + "\n")
        out.write("\nnearest MODEL_A head of each MODEL_B head\n")
        near = [
            [str(n.layer_b), str(n.head_b), str(n.layer_a), str(n.head_a), fmt_divergence(n.divergence)]
            for n in report.nearest or []
        ]
        _aligned(out, ["layer_b", "head_b", "layer_a", "head_a", "divergence"], near)


# --- mha ablate / mha prune ---------------------------------------------------------------------------------------

from mhacli.views.display import line_chart  # noqa: E402


def ablate_header(doc: dict) -> list[tuple[str, str]]:
    """What was measured: texts, targets, method and the intact model's loss."""
    scored = "all targets" if doc["loss_from"] <= 1 else f"targets at positions >= {doc['loss_from']}"
    return [
        ("texts", f"{doc['n_texts']} ({doc['n_targets']} targets scored: {scored})"),
        (
            "method",
            f"{doc['method']} (a removed head's output is {'0' if doc['method'] == 'zero' else 'its mean output'})",
        ),
        ("baseline", f"{doc['baseline_loss']:.4f} nats/token"),
    ]


def write_ablate(out: TextIO, doc: dict) -> None:
    """Plain `mha ablate`: a header, then every head by its loss increase, largest first."""
    header = ablate_header(doc)
    width = max(len(k) for k, _ in header)
    out.write("".join(f"{k:<{width}}  {v}\n" for k, v in header) + "\n")
    rows = [
        [
            str(i),
            str(r["layer"]),
            str(r["head"]),
            r["kind"],
            f"{r['loss']:.4f}",
            f"{r['delta']:+.4f}",
            f"{r['delta_pct']:+.1f}%",
        ]
        for i, r in enumerate(doc["heads"], start=1)
    ]
    _aligned(out, ["rank", "layer", "head", "kind", "loss", "delta", "delta_pct"], rows)


def prune_chart(doc: dict, width: int = 60, height: int = 14) -> list[str]:
    """Loss against the fraction of heads removed: importance order and random orders' mean, the allowed loss."""
    imp = [(s["fraction"], s["loss"]) for s in doc["importance"]["curve"]]
    rnd = [(s["fraction"], s["loss_mean"]) for s in doc["random"]["curve"]]
    bound = doc["baseline_loss"] * (1 + doc["max_increase"])
    return line_chart(
        [("least important first", imp), (f"random order (mean of {doc['random']['seeds']})", rnd)],
        width=width,
        height=height,
        hline=(f"baseline + {doc['max_increase']:.0%}", bound),
        x_label="fraction of heads removed",
        y_label="loss (nats/token)",
    )


def prune_summary(doc: dict) -> list[str]:
    n = doc["model"]["n_layer"] * doc["model"]["n_head"]
    imp, rnd = doc["importance"]["prunable_fraction"], doc["random"]["prunable_fraction"]
    pruned = ", ".join(f"L{a}H{b}" for a, b in doc["pruned"]) or "none"
    return [
        f"within {doc['max_increase']:.0%} of the baseline loss ({doc['baseline_loss']:.4f} nats/token):",
        f"  least important first: {imp:.0%} of the {n} heads can go ({round(imp * n)} heads)",
        f"  random order:          {rnd:.0%}",
        f"  pruned heads: {pruned}",
    ]


def write_prune(out: TextIO, doc: dict) -> None:
    """Plain `mha prune`: the chart, the two curves as a table, and the prunable fractions."""
    header = ablate_header(doc)
    width = max(len(k) for k, _ in header)
    out.write("".join(f"{k:<{width}}  {v}\n" for k, v in header) + "\n")
    out.write("\n".join(prune_chart(doc)) + "\n\n")
    rows = []
    for s, r in zip(doc["importance"]["curve"], doc["random"]["curve"]):
        removed = " ".join(f"L{a}H{b}" for a, b in s["removed"])
        rows.append(
            [
                str(s["n_removed"]),
                f"{s['fraction']:.3f}",
                f"{s['loss']:.4f}",
                f"{r['loss_mean']:.4f}",
                f"{r['loss_std']:.4f}",
                removed,
            ]
        )
    _aligned(out, ["n_removed", "fraction", "loss", "random_mean", "random_std", "removed this round"], rows)
    out.write("\n" + "\n".join(prune_summary(doc)) + "\n")


# --- mha census -------------------------------------------------------------------------------------------------


def census_sources(doc: dict) -> list[str]:
    """One line per source: what the census ran."""
    lines = []
    for name, s in doc["sources"].items():
        if name == "corpus":
            lines.append(
                f"corpus: {s['n_texts']} texts, {s['n_tokens']} tokens ({s['failed']} failed) from {s['path']}"
            )
        else:
            read = "the second copy" if name == "repeat" else "every row"
            lines.append(
                f"{name}: {s['n_texts']} sequences of {s['n_tokens']} tokens, seed {s['seed']}, read on {read}"
            )
    return lines


def evidence_text(h: dict) -> str:
    """'induction 0.931 on repeat (400 rows)': the statistic behind the kind, its source and its support."""
    e = h["evidence"]
    mean = "-" if e["mean"] is None else f"{e['mean']:.3f}"
    rows = h["by_source"][e["source"]]["support"].get(e["statistic"])
    return f"{e['statistic']} {mean} on {e['source']}" + (f" ({rows} rows)" if rows is not None else "")


def write_census(out: TextIO, doc: dict) -> None:
    for line in census_sources(doc):
        out.write(line + "\n")
    out.write("\n")
    rows = [
        [str(h["layer"]), str(h["head"]), h["kind"], f"{h['confidence']:.2f}", evidence_text(h)] for h in doc["heads"]
    ]
    _aligned(out, ["layer", "head", "kind", "confidence", "evidence"], rows)


# --- mha census: the table -------------------------------------------------------------------------------------------

from mhacli.analyses.census import TALLIED  # noqa: E402
from mhacli.analyses.stats import SUPPORTED_STATS  # noqa: E402

CENSUS_COLUMNS = (
    "layer",
    "head",
    "kind",
    "confidence",
    "source",
    "n_texts",
    *(f"{w}_{name}" for name in TALLIED for w in ("mean", "std")),
    "duplicate_rows",
    "induction_rows",
)


def census_rows(doc: dict) -> Iterator[list]:
    """csv/tsv: one row per head and source, CENSUS_COLUMNS."""
    for h in doc["heads"]:
        for source, s in h["by_source"].items():
            yield [
                h["layer"],
                h["head"],
                h["kind"],
                h["confidence"],
                source,
                s["n_texts"],
                *(x for name in TALLIED for x in (s["mean"][name], s["std"][name])),
                *(s["support"][name] for name in SUPPORTED_STATS),
            ]


# --- mha info ---------------------------------------------------------------------------------------------------------


def layout_text(a: dict) -> str:
    heads = f"{a['n_head']} query heads x d_head {a['d_head']}"
    if a["layout"] == "MHA":
        return f"MHA: {heads}, each with its own K/V head"
    if a["layout"] == "MQA":
        return f"MQA: {heads}, all reading one shared K/V head"
    g = a["group_size"]
    return f"GQA: {heads}, {a['n_kv_head']} K/V heads (group size {g}: query head h reads K/V head h // {g})"


def kv_cache_text(c: dict, a: dict) -> str:
    from mhacli.views.display import format_bytes

    kv, dtype = a["kv_cache"], a["kv_cache"]["checkpoint_dtype"]
    ours, mha = kv["bytes_per_token"], kv["mha_bytes_per_token"]
    text = (
        f"2 x {c['n_layer']} layers x {a['n_kv_head']} K/V heads x {a['d_head']} = {kv['values_per_token']:,} values: "
        f"{format_bytes(ours['float32'])} float32, {format_bytes(ours['checkpoint_dtype'])} {dtype}"
    )
    if a["layout"] == "MHA":
        return text
    return text + (
        f"; full MHA would need {format_bytes(mha['float32'])} / {format_bytes(mha['checkpoint_dtype'])} "
        f"({a['n_head'] // a['n_kv_head']}x more)"
    )


def window_text(windows: list[int | None]) -> str:
    sliding = [n for n, w in enumerate(windows) if w is not None]
    if not sliding:
        return "none: every layer sees every earlier token"
    if len(sliding) == len(windows):
        return f"{windows[0]} keys in every layer"
    return f"{windows[sliding[0]]} keys in layers {', '.join(map(str, sliding))}; the others full"


def softcap_text(caps: list, logits: float | None) -> str:
    """Soft-capping in words (Gemma 2), or "" when the model caps nothing."""
    parts = []
    if any(cap is not None for cap in caps):
        shown = {cap for cap in caps if cap is not None}
        which = "every layer" if None not in caps else f"layers {', '.join(str(i) for i, x in enumerate(caps) if x)}"
        parts.append(
            f"attention scores at {', '.join(f'{x:g}' for x in sorted(shown))} in {which} (cap · tanh(s / cap))"
        )
    if logits is not None:
        parts.append(f"output logits at {logits:g}")
    return "; ".join(parts)


def rope_text(rope: dict) -> str:
    rest = ", ".join(f"{k} {v}" for k, v in rope.items() if k not in ("rope_type", "truncate") and v is not None)
    return f"{rope['rope_type']} ({rest})"


def value_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


INFO_SHOWN = {
    "model_type", "n_layer", "n_head", "n_kv_head", "d_head", "layout", "layer_types", "window", "rope", "sliding_rope",
}  # fmt: skip


def info_lines(doc: dict) -> list[tuple[str, str]]:
    """`mha info`'s (key, value) lines for people: the files, the layout, the KV cache, then the rest of the config."""
    from mhacli.io.files import escape_unprintable

    c, a = doc["config"], doc["attention"]
    lines = [
        ("model", doc["source"]),
        ("directory", doc["directory"]),
        ("weights", ", ".join(doc["weight_files"]) + f" ({', '.join(doc['dtypes'])}, read as float32)"),
        *[("quantisation", ", ".join(f"{k} {n}" for k, n in q.items())) for q in [doc.get("quantisation")] if q],
        ("bytes", f"{doc['bytes']['on_disk']:,} on disk, {doc['bytes']['float32']:,} as float32"),
        ("architecture", c["model_type"]),
        ("parameters", f"{doc['parameters']:,}"),
        ("layers", str(c["n_layer"])),
        ("attention", layout_text(a)),
        ("KV cache per token", kv_cache_text(c, a)),
    ]
    if family(c["model_type"]).SLIDING_WINDOWS:  # a family that can give layers a sliding window
        lines.append(("sliding window", window_text(a["sliding_window"])))
    caps = softcap_text(a.get("softcap") or [], a.get("logit_softcap"))
    if caps:
        lines.append(("soft-cap", caps))
    lines += [(key, value_text(value)) for key, value in c.items() if key not in INFO_SHOWN]
    if isinstance(c.get("rope"), dict):
        lines.append(("rope", rope_text(c["rope"])))
        if c.get("sliding_rope") is not None:
            lines.append(("rope (sliding layers)", rope_text(c["sliding_rope"])))
    return [(key, escape_unprintable(value)) for key, value in lines]  # file names: no escape sequences


# --- mha verify -------------------------------------------------------------------------------------------------------


def verify_lines(report, n_tokens: int) -> list[str]:  # noqa: ANN001 - mhacli.analyses.verify.VerifyReport
    """`mha verify`'s lines: one per layer, the output head's loss, then the verdict."""
    lines = [f"{'layer':>5}  {'attention max abs err':>21}  {'hidden max abs err':>18}  {'hidden bound':>12}  result"]
    for c in report.layers:
        ok = "ok" if report.layer_passed(c) else "FAIL"
        bound = report.hidden_atol * c.hidden_scale
        lines.append(
            f"{c.layer:>5}  {c.attention_max_abs_err:>21.3e}  {c.hidden_max_abs_err:>18.3e}  {bound:>12.1e}  {ok}"
        )
    if report.head is not None:
        h = report.head
        ok = "ok" if report.head_passed else "FAIL"
        lines.append(
            f"{'head':>5}  loss {h.loss:.6f} (HF {h.hf_loss:.6f}, rel err {h.loss_rel_err:.1e}); "
            f"logits max abs err {h.logits_max_abs_err:.3e}  {ok}"
        )
    else:
        lines.append(
            f"{'head':>5}  no output head in this checkpoint (no lm_head.weight, embeddings not tied): loss not checked"
        )
    verdict = "PASSED" if report.passed else "FAILED"
    lines.append(
        f"{verdict}: {n_tokens} tokens, {len(report.layers)} layers; max attention error "
        f"{report.max_attention_err:.3e} (atol {report.atol:g}), max hidden error {report.max_hidden_err:.3e}"
    )
    return lines


# --- mha circuits ----------------------------------------------------------------------------------------------------

CIRCUITS_COLUMNS = ("mode", "from_layer", "from_head", "to_layer", "to_head", "score")
CIRCUITS_RANKED = 10  # compositions per mode in the text and terminal rankings


def circuits_rows(doc: dict) -> Iterator[list]:
    """csv/tsv: one row per composition, CIRCUITS_COLUMNS."""
    for r in doc["composition"]:
        yield [r["mode"], r["from"]["layer"], r["from"]["head"], r["to"]["layer"], r["to"]["head"], r["score"]]


def circuits_header(doc: dict) -> list[str]:
    """What was read and how: the model, the weights, the random baseline of each mode."""
    weights = "norms folded as TransformerLens (--fold-ln)" if doc["fold_ln"] else "raw weights"
    base = "  ".join(f"{m} {v:.3f}" for m, v in doc["baseline"].items())
    return [
        f"circuits of {doc['model']['source']}: from the weights alone, {weights}",
        f"random baseline (mean score of random matrices of the same shapes): {base}",
    ]


def ranked_compositions(doc: dict, per_mode: int = CIRCUITS_RANKED) -> list[list[str]]:
    """The strongest `per_mode` compositions of each mode: mode, from, to, score, score / baseline."""
    rows = []
    for mode in doc["modes"]:
        base = doc["baseline"][mode]
        shown = [r for r in doc["composition"] if r["mode"] == mode][:per_mode]
        for r in shown:
            f, t = r["from"], r["to"]
            ratio = f"{r['score'] / base:.1f}x" if base else "-"
            rows.append([mode, f"L{f['layer']}H{f['head']}", f"L{t['layer']}H{t['head']}", f"{r['score']:.3f}", ratio])
    return rows


def pair_text(p: dict, first: str, second: str) -> str:
    return f"{token_label(p[first], 14)} → {token_label(p[second], 14)} {p['value']:.2f}"


def head_pairs_lines(h: dict) -> list[str]:
    """Two lines per head: what it writes when it attends to a token (OV), where a query token looks (QK)."""
    lines = []
    if h["ov_top"]:
        lines.append("  OV attend → write: " + ", ".join(pair_text(p, "attend", "write") for p in h["ov_top"]))
    if h["qk_top"]:
        lines.append("  QK query → key:    " + ", ".join(pair_text(p, "query", "key") for p in h["qk_top"]))
    return lines


def copying_text(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2f}"


def write_circuits(out: TextIO, doc: dict) -> None:
    for line in circuits_header(doc):
        out.write(line + "\n")
    out.write("\nstrongest compositions (earlier head -> later head)\n")
    _aligned(out, ["mode", "from", "to", "score", "vs baseline"], ranked_compositions(doc))
    heads = doc["heads"]
    if not heads:
        return
    out.write("\ncopying score per head: Re(sum of eigenvalues) / sum of |eigenvalues| of W_E W_OV W_U (+1 copies)\n")
    by_pos = {(h["layer"], h["head"]): h for h in heads}
    layers = sorted({h["layer"] for h in heads})
    cols = sorted({h["head"] for h in heads})
    rows = [
        [str(layer)] + [copying_text(by_pos[layer, c]["copying"]) if (layer, c) in by_pos else "" for c in cols]
        for layer in layers
    ]
    _aligned(out, ["layer"] + [f"H{c}" for c in cols], rows)
    if any(h["ov_top"] or h["qk_top"] for h in heads):
        out.write("\ntoken pairs of the leading singular directions (the largest entry of each)\n")
        for h in heads:
            out.write(f"L{h['layer']}H{h['head']}  kv_head {h['kv_head']}  copying {copying_text(h['copying'])}\n")
            for line in head_pairs_lines(h):
                out.write(line + "\n")
