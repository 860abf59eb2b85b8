"""`mha lens` on a terminal: a layer x position table of the top token, coloured by its probability.

The actual next token's rank beside it; the positions that fit the width (the last ones), rows from the embeddings
down."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.text import Text

from mhacli.views.display import token_label
from mhacli.views.readout import layer_label
from mhacli.views.terminal.common import one_line, weight_colour
from mhacli.views.terminal.heatmap import uses_color

TOKEN_W = 7  # the top token's label
CELL = TOKEN_W + 4  # the token, a space, the next token's rank (3 wide)
LABEL = 5


def rank_text(rank: int | None) -> str:
    return "" if rank is None else str(rank) if rank < 1000 else "1k+"


def lens_view(console: Console, doc: dict) -> Group:
    """Rows: layers (emb, 0, 1, ...), columns: the last positions that fit; a note names the ones left out."""
    layers = doc["layers"]
    positions = [c["pos"] for c in layers[0]["positions"]]
    fits = max(1, (console.width - LABEL) // (CELL + 1))
    shown_pos = positions[-fits:]
    index = {p: k for k, p in enumerate(positions)}
    color = uses_color(console)
    tokens = doc["tokens"]
    head = Text("pos".ljust(LABEL), style="bold")
    toks = Text("token".ljust(LABEL), style="bold")
    for p in shown_pos:
        head.append(str(p).center(CELL) + " ", style="bold")
        toks.append(token_label(tokens[p], CELL).center(CELL) + " ", style="bold")
    lines: list[RenderableType] = [
        one_line(Text("logit lens: each layer's top next token (colour: its probability) and the actual next token's "
                      "rank", style="bold")),
        one_line(head, "crop"),
        one_line(toks, "crop"),
    ]  # fmt: skip
    for layer in layers:
        line = Text()
        line.append(layer_label(layer["layer"]).rjust(LABEL - 1) + " ", style="bold")
        for p in shown_pos:
            cell = layer["positions"][index[p]]
            top = cell["top"][0]
            label = token_label(top["token"], TOKEN_W).ljust(TOKEN_W)
            prob = top["prob"]
            style = f"{'black' if prob > 0.6 else 'white'} on {weight_colour(prob)}" if color else ""
            line.append(label, style=style)
            nxt = cell["next"]
            rank = rank_text(None if nxt is None else nxt["rank"])
            line.append(" " + rank.rjust(3) + " ", style="bold green" if rank == "1" else "dim")
        lines.append(one_line(line, "crop"))
    nxt_line = Text()
    nxt_line.append("next".ljust(LABEL), style="bold")
    for p in shown_pos:
        nxt_line.append(
            token_label(tokens[p + 1], CELL).center(CELL) + " " if p + 1 < len(tokens) else " " * (CELL + 1)
        )
    lines.append(one_line(nxt_line, "crop"))
    note = "number: the rank of the actual next token (1: the lens' top token is it); the last row is the model's own"
    if len(shown_pos) < len(positions):
        note += f"; showing positions {shown_pos[0]}–{shown_pos[-1]} of {len(positions)} (--pos picks others)"
    lines.append(Text(note, style="dim"))
    return Group(*lines)
