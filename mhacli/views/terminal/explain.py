"""`mha explain`.

One head's computation for one query token, laid out once as lines of (text, style) segments that fit `width` columns
(mhacli.views.terminal.text), then drawn with rich (explain_view) or as plain text (explain_text): both formats show
the same steps, aligned the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.cells import cell_len
from rich.console import Group
from rich.text import Text

from mhacli.analyses.explain import Explanation
from mhacli.io.tokenizer import quoted
from mhacli.views.display import token_label
from mhacli.views.terminal.common import weight_colour
from mhacli.views.terminal.text import Segment, cell_label, equation, glue, labelled_vectors, num, vec_rows, wrapped

EXPLAIN_KEYS = 12  # keys listed without --full: those with the largest weights, in text order
EXPLAIN_TOKENS = 60  # tokens listed in the header
PLAIN_WIDTH = 100  # the layout width of plain text, where there is no terminal to measure
EXPLAIN_BAR = 50  # the widest attention bar (weight 1)


def shown_keys(ex: Explanation, full: bool) -> list[int]:
    """Every key with --full.

    Else the keys inside the window (all up to the query without one), at most EXPLAIN_KEYS of them: those with the
    largest weights.
    """
    n_key = ex.query_index + 1
    if full:
        return list(range(n_key))
    first = len(ex.window_masked_keys)
    if n_key - first <= EXPLAIN_KEYS:
        return list(range(first, n_key))
    return sorted((first + np.argsort(-ex.step.attention[first:], kind="stable")[:EXPLAIN_KEYS]).tolist())


def scale_text(ex: Explanation) -> str:
    if ex.scale_attn_weights and not ex.scale_attn_by_inverse_layer_idx and abs(ex.scale * ex.d_head**0.5 - 1) > 1e-12:
        return f"scale = {num(ex.scale)} (the config's query_pre_attn_scalar^(−1/2), not 1/√d_head)"
    if ex.scale_attn_weights and ex.scale_attn_by_inverse_layer_idx:
        return f"scale = 1/√d_head · 1/(layer+1) = 1/√{ex.d_head} · 1/{ex.layer + 1} = {num(ex.scale)}"
    if ex.scale_attn_weights:
        return f"scale = 1/√d_head = 1/√{ex.d_head} = {num(ex.scale)}"
    if ex.scale_attn_by_inverse_layer_idx:
        return f"scale = 1/(layer+1) = 1/{ex.layer + 1} = {num(ex.scale)} (scale_attn_weights is false: no 1/√d_head)"
    return "scale = 1 (scale_attn_weights is false: the scores are not scaled)"


def mask_text(ex: Explanation) -> str:
    i, n = ex.query_index, ex.n_seq
    if n == 1:
        hidden = "nothing is hidden: it is the only token"
    elif i == n - 1:
        hidden = "nothing is hidden: it is the last token"
    elif i == n - 2:
        hidden = f"{glue(f'key {n - 1} is hidden')} (score −∞, weight 0): it comes after token {i}, in the future"
    else:
        hidden = (
            f"{glue(f'keys {i + 1}..{n - 1} are hidden')} (score −∞, weight 0): "
            f"they come after token {i}, in the future"
        )
    outside = ex.window_masked_keys
    first = len(outside)
    sees = f"key {i}" if first == i else f"keys {first}..{i}"
    if ex.window is None:
        return f"causal mask: token {i} sees {sees}; {hidden}"
    if not outside:
        window = f"sliding window of {ex.window} keys: every key up to token {i} is inside it"
    else:
        gone = glue("key 0 is") if first == 1 else glue(f"keys 0..{first - 1} are")
        window = f"sliding window of {ex.window} keys: {gone} too far back (score −∞, weight 0)"
    return f"causal mask: token {i} sees {sees}; {window}; {hidden}"


def norm_label(ex: Explanation, j: int | str) -> str:
    """What the projections read at token j: LN(x_j), RMS(x_j), or x_j itself (OLMo)."""
    return {"layer_norm": f"LN(x_{j})", "rms_norm": f"RMS(x_{j})"}.get(ex.norm or "", f"x_{j}")


def projection_formula(ex: Explanation, what: str, j: int | str) -> str:
    """e.g. `LN(x_5) · W_Q + b_Q`, `RMS(x_j) · W_Kᵀ`, OLMo's `k_norm(x_j · W_Kᵀ)[8:16]`."""
    proj = ex.projections[what]
    w = f"W_{what.upper()}" + ("" if proj.in_out else "ᵀ")
    text = f"{norm_label(ex, j)} · {w}" + ("" if proj.bias is None else f" + b_{what.upper()}")
    if ex.qk_norm is not None and what in ("q", "k"):
        text = f"{what}_norm({text})" if ex.qk_norm.per_head else f"{what}_norm({text})[{proj.start}:{proj.end}]"
    return text


def gqa_text(ex: Explanation) -> str:
    g = ex.kv_head
    if ex.layout == "MHA":
        return f"head {ex.head} has its own K/V head (MHA)"
    if ex.layout == "MQA":
        return f"MQA: query head {ex.head} reads K/V head {g}, the one every query head shares"
    group = ex.kv_group
    return (
        f"GQA: query head {ex.head} reads {glue(f'K/V head {g}')} = {glue(f'{ex.head} // {ex.group_size}')}, "
        f"shared by query heads {group[0]}..{group[-1]} (group size {ex.group_size}); its k and v are that K/V "
        f"head's rows of {ex.projections['k'].weight.split('.')[-2]} and {ex.projections['v'].weight.split('.')[-2]}"
    )


@dataclass
class Layout:
    """The explanation being laid out: its lines, the width they fit, and what every step names."""

    ex: Explanation
    tokens: Sequence[str]
    width: int
    full: bool
    plain: bool
    lines: list[list[Segment]] = field(default_factory=list)

    @property
    def x_i(self) -> str:
        return f"x_{self.ex.query_index}"

    def add(self, lines: list[list[Segment]]) -> None:
        self.lines.extend(lines)

    def section(self, title: str) -> None:
        self.lines.append([])
        self.add(wrapped(title, self.width, indent=0, style="bold underline", hang=3))

    def note(self, text: str, style: str = "dim") -> None:
        self.add(wrapped(text, self.width, style=style))

    def equation(self, lhs: str, formula: str, v: np.ndarray) -> None:
        self.add(equation(lhs, formula, v, self.width, self.full))


def explain_lines(
    ex: Explanation, tokens: Sequence[str], width: int, *, full: bool = False, plain: bool = False
) -> list[list[Segment]]:
    """The whole explanation as lines of (text, style) segments, none wider than `width` (at least 40) columns."""
    out = Layout(ex, tokens, max(width, 40), full, plain)
    keys = shown_keys(ex, full)
    header(out)
    step_input(out)
    step_projections(out)
    step_query(out)
    step_keys(out, keys)
    step_scores(out, keys)
    step_head_output(out)
    step_concat(out)
    step_check(out)
    return out.lines


def header(out: Layout) -> None:
    """The head and query named, then every token (the query highlighted, later tokens dim)."""
    ex, tokens, width = out.ex, out.tokens, out.width
    i = ex.query_index
    plural = "s" if ex.n_seq > 1 else ""
    title = (
        f"layer {ex.layer}, head {ex.head}, query token {i} {quoted(cell_label(tokens[i], 20).rstrip())} "
        f"(of {ex.n_seq} token{plural})"
    )
    out.add(wrapped(title, width, 0, "bold"))
    if not out.full:
        out.note(f"vectors: first and last components, then {glue('‖L2 norm‖;')} --full shows all")
    items = [f"{j}:{cell_label(t, 12).rstrip()}" for j, t in enumerate(tokens[:EXPLAIN_TOKENS])]
    line: list[Segment] = [("tokens:", "dim")]
    for j, item in enumerate(items + (["…"] if len(tokens) > EXPLAIN_TOKENS else [])):
        if sum(cell_len(t) for t, _ in line) + 1 + cell_len(item) > width:
            out.lines.append(line)
            line = [(" " * 7, "")]
        line += [(" ", ""), (item, "bold reverse" if j == i else ("dim" if j > i else ""))]
    out.lines.append(line)


def step_input(out: Layout) -> None:
    """1. The residual stream entering the layer at the query token, and the norm the projections read."""
    ex, x_i = out.ex, out.x_i
    i, L = ex.query_index, ex.layer
    out.section(f"1. input to layer {L} at token {i}")
    if L == 0 and ex.rope is None:
        out.note(f"{x_i} = {glue(f'wte[{ex.token_id}] + wpe[{i}]')}: the token and position embeddings")
    elif L == 0:
        scaled = "" if abs(ex.embed_scale - 1.0) < 1e-6 else f" · {num(ex.embed_scale)}"
        out.note(
            f"{x_i} = {glue(f'embed_tokens[{ex.token_id}]{scaled}')}: "
            + ("the token embedding" if not scaled else "the token embedding times the model's scale (√n_embd)")
            + " (positions enter in step 2, as rotations of q and k)"
        )
    else:
        out.note(f"{x_i}: the residual stream after {glue(f'layer {L - 1}')}")
    out.equation(x_i, "", ex.input)
    ln_x = norm_label(ex, i)
    if ex.norm == "layer_norm":
        out.equation(ln_x, f"({x_i} − μ)/√(σ² + ε) · γ + β", ex.ln_input)
        weight = ex.norm_weight or ""
        if ex.ln_mean is None or ex.ln_var is None:
            raise ValueError("a LayerNorm explanation carries the norm's mean and variance")
        out.note(
            f"{glue(f'μ = {num(ex.ln_mean)},')} {glue(f'σ² = {num(ex.ln_var)},')} "
            f"{glue(f'ε = {ex.layer_norm_epsilon:g};')} "
            f"{glue(f'γ, β = {weight}, .bias')}"
        )
    elif ex.norm == "rms_norm":
        out.equation(ln_x, f"{x_i} / √(mean({x_i}²) + ε) · γ", ex.ln_input)
        if ex.ln_var is None:
            raise ValueError("an RMSNorm explanation carries the norm's mean square")
        out.note(
            f"{glue(f'mean({x_i}²) = {num(ex.ln_var)},')} {glue(f'ε = {ex.layer_norm_epsilon:g};')} "
            + glue("γ = " + gain_text(ex, ex.norm_weight or ""))
        )
    else:
        out.note(
            f"no norm before attention: the projections read {x_i} itself (this model's RMSNorms come after "
            "attention and after the MLP, on each branch before it is added to the residual stream)"
        )


def gain_text(ex: Explanation, weight: str) -> str:
    """A norm's gain as the checkpoint stores it: the weight, or 1 + weight (Gemma)."""
    return weight if not ex.norm_gain_offset else f"{ex.norm_gain_offset:g} + {weight}"


def step_projections(out: Layout) -> None:
    """2. Where the head's q, k and v come from: the slices of the projection weights, and QK-norm."""
    ex, width = out.ex, out.width
    out.section(f"2. query, keys and values (d_head = {ex.d_head})")
    if ex.layout != "MHA":
        out.note(gqa_text(ex), "")
    out.note(ex.projections_note)  # the family's words: GPT-2's packed c_attn, or [out, in] rows
    for k, proj in ex.projections.items():
        w_part = glue(f"W_{k.upper()} = {proj.where()}")
        b_part = "" if proj.bias is None else "   " + glue(f"b_{k.upper()} = {proj.bias_where()}")
        out.add(wrapped(w_part + b_part, width, hang=4))
    if ex.qk_norm is not None:
        qk = ex.qk_norm
        where = (
            "over each head's d_head values (one weight shared by every head), taken after the head's slice: "
            f"{glue(f'rms(q_{ex.query_index}) = {num(qk.query_rms)};')}"
            if qk.per_head
            else "over the whole q_proj / k_proj output (every head), taken before the head's slice: "
            f"{glue(f'rms(q_proj({out.x_i})) = {num(qk.query_rms)};')}"
        )
        out.note(
            f"QK-norm: q_norm and k_norm are RMSNorms {where} "
            f"{glue(f'γ_q = {gain_text(ex, ex.layer_prefix + qk.q_weight)},')} "
            f"{glue(f'γ_k = {gain_text(ex, ex.layer_prefix + qk.k_weight)}')}"
        )


def step_query(out: Layout) -> None:
    """2, continued: the query vector (before and after RoPE where the model rotates it), and how keys are made."""
    ex, s = out.ex, out.ex.step
    i, d = ex.query_index, ex.d_head
    keys_range = "0" if i == 0 else f"0..{i}"
    if ex.rope is None:
        out.equation(f"q_{i}", projection_formula(ex, "q", i), s.query)
        out.note(
            f"{glue('k_j = ' + projection_formula(ex, 'k', 'j'))} and "
            f"{glue('v_j = ' + projection_formula(ex, 'v', 'j'))}, "
            f"for the visible keys j = {keys_range}:",
            "",
        )
        return
    r = ex.rope
    if s.query_pre_rope is None:
        raise ValueError("a RoPE explanation carries the query before the rotation")
    out.equation(f"q_{i} before RoPE", projection_formula(ex, "q", i), s.query_pre_rope)
    scaled = "" if r.attention_scaling == 1.0 else f"; cos and sin are scaled by {num(r.attention_scaling)}"
    rd = r.rotary_dim
    partial = "" if rd == d else f"; partial rotary: only the first {rd} of the {d} values are rotated, the rest pass"
    out.note(
        f"RoPE ({r.rope_type}, {glue(f'θ = {r.rope_theta:g}):')} coordinates c and c + {rd // 2} of q and of every "
        f"k form a pair, turned by the angle {glue('position × inv_freq[c]')} (inv_freq = θ^(−2c/{rd}) for the "
        f"default type){scaled}{partial}"
    )
    out.equation(f"angles at {i}", f"{i} · inv_freq", r.angles[i])
    out.equation(f"q_{i}", f"q_{i} before RoPE, rotated by the angles at {i}", s.query)
    out.note(
        f"{glue('k_j = ' + projection_formula(ex, 'k', 'j'))}, rotated by the angles at j, and "
        f"{glue('v_j = ' + projection_formula(ex, 'v', 'j'))} (not rotated), for the keys j = {keys_range}:",
        "",
    )


def token_width(tokens: Sequence[str], keys: Sequence[int]) -> int:
    """Cells for the token labels of the listed keys: the longest label, at most 12."""
    return min(12, max(cell_len(token_label(tokens[j], 12)) for j in keys))


def step_keys(out: Layout, keys: list[int]) -> None:
    """2, continued: each listed key's k and v (compact beside its token, or every component with --full)."""
    ex, s, width = out.ex, out.ex.step, out.width
    i = ex.query_index
    j_w, tok_w = len(str(i)), token_width(out.tokens, keys)
    for j in keys:
        prefix = f"  {j:>{j_w}} {cell_label(out.tokens[j], tok_w)} "
        if out.full:
            out.lines.append([(prefix.rstrip(), "bold")])
            if s.keys_pre_rope is not None:
                out.add(equation(f"k_{j} before RoPE", "", s.keys_pre_rope[j], width, True, indent=4, style=""))
            out.add(equation(f"k_{j}", "", s.keys[j], width, True, indent=4, style=""))
            out.add(equation(f"v_{j}", "", s.values[j], width, True, indent=4, style=""))
        else:
            out.add(labelled_vectors(prefix, [("k", s.keys[j]), ("v", s.values[j])], width))
    if len(keys) < i + 1:
        outside = len(ex.window_masked_keys)
        why = "those with the largest weights in step 3" if len(keys) < i + 1 - outside else "those inside the window"
        out.note(f"{len(keys)} of {i + 1} keys shown: {why}; --full lists all")


def step_scores(out: Layout, keys: list[int]) -> None:
    """3. Scores, scale, mask and softmax: a row per listed key with its weight drawn as a bar."""
    ex, s, width, tokens = out.ex, out.ex.step, out.width, out.tokens
    i = ex.query_index
    out.section(
        "3. scores, scaling, causal mask, softmax"
        if ex.window is None
        else "3. scores, scaling, causal and sliding-window mask, softmax"
    )
    out.note(f"{glue(f's_j = q_{i} · k_j:')} the raw score of {glue('key j')}", "")
    out.note(scale_text(ex), "")
    out.note(mask_text(ex), "")
    if s.capped_scores is None:
        out.note(
            f"a_j = {glue('softmax(scale · s)_j')} = {glue('exp(scale · s_j)')} / {glue('Σ_i exp(scale · s_i)')}", ""
        )
    else:
        out.note(
            f"soft-cap (attn_logit_softcapping = {ex.softcap:g}): "
            f"{glue(f'c_j = {ex.softcap:g} · tanh(scale · s_j / {ex.softcap:g})')}, "
            f"then {glue('a_j = softmax(c)_j')}: the weights shown are the capped ones",
            "",
        )
    j_w = len(str(i))
    s_w = max(5, *(len(num(s.scores[j])) for j in keys))
    c_w = max(6, *(len(num(s.scaled_scores[j])) for j in keys))
    capped = s.capped_scores
    k_w = 0 if capped is None else max(6, *(len(num(capped[j])) for j in keys)) + 1
    fixed = 2 + j_w + 1 + 1 + s_w + 1 + c_w + k_w + 1 + 6 + 1  # everything but the token label and the bar
    tok_w = max(4, min(token_width(tokens, keys), width - fixed - 8))
    bar_w = max(0, min(EXPLAIN_BAR, width - fixed - tok_w))
    capped_head = "" if capped is None else f" {'capped':>{k_w - 1}}"
    out.lines.append(
        [(f"  {'j':>{j_w}} {'token':<{tok_w}} {'q·k':>{s_w}} {'scaled':>{c_w}}{capped_head} {'a_j':>6}", "dim")]
    )
    for j in keys:
        a = float(s.attention[j])
        scores = f"{num(s.scores[j]):>{s_w}} {num(s.scaled_scores[j]):>{c_w}}"
        if capped is not None:
            scores += f" {num(capped[j]):>{k_w - 1}}"
        row = f"  {j:>{j_w}} {cell_label(tokens[j], tok_w)} {scores} {a:6.4f} "
        out.lines.append([(row, ""), (("#" if out.plain else "█") * int(round(a * bar_w)), weight_colour(a))])
    if len(keys) < i + 1:
        rest = max(0.0, 1.0 - float(s.attention[keys].sum()))
        outside = len(ex.window_masked_keys)
        hidden = (
            [f"{i + 1 - outside - len(keys)} other keys share a weight of {rest:.4f}"]
            if i + 1 - outside > len(keys)
            else []
        )
        hidden += [f"the {outside} keys outside the window have weight 0"] if outside else []
        out.note(f"{'; '.join(hidden)}; --full lists them")


def step_head_output(out: Layout) -> None:
    """4. The head's output: the values averaged with the weights."""
    ex = out.ex
    i = ex.query_index
    out.section(f"4. head {ex.head}'s output")
    out.equation(f"z_{ex.head}", "Σ_j a_j v_j", ex.step.output)
    out.note(
        f"the values v_0..v_{i}, averaged with the weights a_j"
        if i
        else "the value v_0 itself: the one visible key has weight 1"
    )


def step_concat(out: Layout) -> None:
    """5. Every head's output at the query token, concatenated, through W_O; this head's share of the result."""
    ex, width = out.ex, out.width
    i, h, d = ex.query_index, ex.head, ex.d_head
    r0, r1 = ex.head_rows
    n_cat = ex.n_head * d
    o = ex.out_projection
    o_name = ".".join(o.weight.split(".")[-2:])
    out.section(f"5. all {ex.n_head} heads at token {i}, concatenated, then W_O")
    out.note(f"concat = [z_0 | … | z_{ex.n_head - 1}], {ex.n_head} × {d} = {n_cat} values; ▶ marks head {h}:", "")
    h_w, span_w = len(str(ex.n_head - 1)), len(f"{n_cat - d}:{n_cat}")
    for g in range(ex.n_head):
        prefix = f"{'▶' if g == h else ' '} z_{g:<{h_w}} [{f'{g * d}:{(g + 1) * d}':>{span_w}}] "
        style = "bold yellow" if g == h else ""
        if out.full:
            out.lines.append([("  " + prefix.rstrip(), style)])
            out.add([[(" " * 6 + row, style)] for row in vec_rows(ex.heads_output[g], width - 6)])
        else:
            out.add(labelled_vectors("  " + prefix, [("=", ex.heads_output[g])], width, style))
    shape = f"[{n_cat}, {ex.n_embd}]" if o.in_out else f"[{ex.n_embd}, {n_cat}]"
    if o.bias is None:
        out.note(f"{glue(f'W_O = {o_name} {shape}')}, no bias", "")
    else:
        b_name = ".".join(o.bias.split(".")[-2:])
        out.note(f"{glue(f'W_O = {o_name} {shape},')} {glue(f'b_O = {b_name} [{ex.n_embd}]')}", "")
    formula = ("concat · W_O" if o.in_out else "concat · W_Oᵀ") + ("" if o.bias is None else " + b_O")
    out.equation(f"out_{i}", formula, ex.output)
    out.note(
        f"the attention block's output at token {i}: it is added to the residual stream {out.x_i}"
        + (", after the post_attention_layernorm" if ex.norm is None and ex.qk_norm is not None else "")
    )
    part = f"z_{h} · W_O[{r0}:{r1}, :]" if o.in_out else f"z_{h} · W_O[:, {r0}:{r1}]ᵀ"
    out.equation(f"head {h}'s part", part, ex.head_share)


def step_check(out: Layout) -> None:
    """6. Whether every intermediate matches the forward pass, and by how much."""
    ex, width = out.ex, out.width
    out.section("6. check")
    if ex.matches:
        out.add(
            wrapped(
                f"matches the model's forward pass: {glue(f'max |diff| {ex.max_abs_diff:.1e}')}", width, 2, "bold green"
            )
        )
        return
    worst = max(ex.diffs, key=lambda k: ex.diffs[k] / ex.bounds[k])
    text = (
        f"DOES NOT match the model's forward pass: max |diff| {ex.max_abs_diff:.1e}; "
        f"{worst} differs by {ex.diffs[worst]:.1e} (allowed {ex.bounds[worst]:.1e})"
    )
    out.add(wrapped(text, width, 2, "bold red"))


def explain_view(ex: Explanation, tokens: Sequence[str], width: int, *, full: bool = False) -> Group:
    """The explanation for a terminal `width` columns wide: one line per Text, cropped with an ellipsis."""
    return Group(
        *(
            Text.assemble(*line, no_wrap=True, overflow="ellipsis")
            for line in explain_lines(ex, tokens, width, full=full)
        )
    )


def explain_text(ex: Explanation, tokens: Sequence[str], *, full: bool = False, width: int = PLAIN_WIDTH) -> str:
    """The explanation as plain aligned text: no colour, no ANSI."""
    lines = explain_lines(ex, tokens, width, full=full, plain=True)
    return "".join("".join(text for text, _ in line).rstrip() + "\n" for line in lines)
