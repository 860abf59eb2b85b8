"""Shared helpers for the human views (rich and plain): token labels and windows. No rich import here."""

from __future__ import annotations

VISIBLE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}


def format_bytes(n: float) -> str:
    """A size for people: 512 B, 1.5 KiB, 2.0 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def token_label(token: str, width: int = 10) -> str:
    """A token made visible (spaces as ·, newlines as ↵) and abbreviated to `width` characters."""
    shown = "".join(VISIBLE.get(ch, ch if ch.isprintable() else "�") for ch in token) or "∅"
    if len(shown) > width:
        shown = shown[: width - 1] + "…"
    return shown


def window(n_seq: int, start: int | None, size: int) -> tuple[int, int]:
    """Query rows [lo, hi) to show: `size` rows from `start`, clamped to the text; start None: the last `size` rows.

    (The default window ends at the text's last token, the one whose next token the model predicts.)
    """
    size = max(1, size)
    if start is None:
        start = n_seq - size
    lo = min(max(0, start), max(0, n_seq - 1))
    return lo, min(n_seq, lo + size)


def key_window(hi: int, size: int) -> tuple[int, int]:
    """Key columns [lo, hi) for query rows ending at `hi`: the `size` keys ending at the last shown query."""
    return max(0, hi - size), hi


def line_chart(
    series: list[tuple[str, list[tuple[float, float]]]],
    *,
    width: int = 60,
    height: int = 14,
    hline: tuple[str, float] | None = None,
    x_label: str = "",
    y_label: str = "",
) -> list[str]:
    """Points (x, y) of several series as a character chart.

    Each series drawn with its own marker (its name's first character is ignored: markers are ●, ○, ◆, ◇ in order),
    a dotted horizontal line at hline's value, the y axis labelled at top, middle and bottom, the x axis from its
    minimum to its maximum. Later series draw over earlier ones where they meet.
    """
    markers = "●○◆◇"
    points = [(x, y) for _, pts in series for x, y in pts]
    ys = [y for _, y in points] + ([hline[1]] if hline else [])
    xs = [x for x, _ in points]
    y_lo, y_hi = min(ys), max(ys)
    x_lo, x_hi = min(xs), max(xs)
    y_span, x_span = (y_hi - y_lo) or 1.0, (x_hi - x_lo) or 1.0

    def row(y: float) -> int:
        return height - 1 - round((y - y_lo) / y_span * (height - 1))

    def col(x: float) -> int:
        return round((x - x_lo) / x_span * (width - 1))

    grid = [[" "] * width for _ in range(height)]
    if hline is not None:
        r = row(hline[1])
        grid[r] = ["┄"] * width
    for n, (_, pts) in enumerate(series):
        for x, y in pts:
            grid[row(y)][col(x)] = markers[n % len(markers)]
    labels = {
        0: f"{y_hi:.3g}",
        height // 2: f"{y_lo + y_span * (height - 1 - height // 2) / (height - 1):.3g}",
        height - 1: f"{y_lo:.3g}",
    }
    pad = max(len(v) for v in labels.values())
    lines = [f"{y_label}"] if y_label else []
    lines += [f"{labels.get(r, ''):>{pad}} ┤{''.join(cells)}" for r, cells in enumerate(grid)]
    lines.append(" " * pad + " └" + "─" * width)
    left, right = f"{x_lo:.3g}", f"{x_hi:.3g}"
    lines.append(" " * (pad + 2) + left + x_label.center(width - len(left) - len(right)) + right)
    legend = "   ".join(f"{markers[n % len(markers)]} {name}" for n, (name, _) in enumerate(series))
    if hline is not None:
        legend += f"   ┄ {hline[0]}"
    lines.append(" " * (pad + 2) + legend)
    return lines


# Head kinds in pictures (figures, the HTML page): the terminal's letters (render.KIND_STYLE) and, for colour,
# the Okabe-Ito palette (told apart with the common colour-vision deficiencies), close to the terminal's hues.
KIND_LETTER = {
    "induction": "I", "previous-token": "P", "duplicate-token": "D", "self": "S", "sink": "K", "broad": "B",
    "mixed": "·",
}  # fmt: skip
KIND_HEX = {
    "induction": "#CC79A7", "previous-token": "#56B4E9", "duplicate-token": "#0072B2", "self": "#009E73",
    "sink": "#E69F00", "broad": "#999999", "mixed": "#D9D9D9",
}  # fmt: skip
