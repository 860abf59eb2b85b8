"""`--save FILE`, repeatable, on every command that shows heads: the writer is chosen by the file's suffix.

Commands call `parse` first (every path checked: a suffix the command writes, a directory that can be written, the
libraries a format needs) before any model is read, then `write_all` with what their terminal view shows. Each file
is written whole to a temporary name beside it and renamed (output.atomic_write_bytes). Nothing here runs the
model: the pictures that need maps a command did not compute (diff's, ablate's) are built by the operations
(mhacli.ops.diff.diff_picture, mhacli.ops.ablation.ablate_picture).

- `.npz`: the attention tensor (inspect only; output.save_npz);
- `.png`, `.svg`, `.pdf`: a static figure (mhacli.views.figures, matplotlib: the `plot` extra);
- `.html`: one self-contained interactive page (mhacli.views.page; no network, no library).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhacli.errors import UsageError, missing_extra
from mhacli.views.formats import atomic_write_bytes, check_writable

SUFFIXES = ("npz", "png", "svg", "pdf", "html")
STATIC = ("png", "svg", "pdf")
# what each command can write
ALLOWED = {
    "inspect": ("npz", "png", "svg", "pdf", "html"),
    "stats": ("png", "svg", "pdf", "html"),
    "diff": ("png", "svg", "pdf", "html"),
    "ablate": ("png", "svg", "pdf", "html"),
    "prune": ("png", "svg", "pdf"),
    "census": ("png", "svg", "pdf", "html"),
    "circuits": ("png", "svg", "pdf", "html"),
}
DEFAULT_DPI = 200
MAX_DPI = 1200


@dataclass(frozen=True)
class Target:
    path: Path
    kind: str  # one of SUFFIXES


@dataclass(frozen=True)
class Picture:
    """What a command shows, for its writers: `command` picks the figure and page.

    `caption` names the model and the text; `data` holds the view's inputs (views, tokens, report, doc, ...) as
    keyword arguments.
    """

    command: str
    caption: str
    data: dict[str, Any] = field(default_factory=dict)


def suffix_list(kinds: tuple[str, ...]) -> str:
    return ", ".join(f".{k}" for k in kinds)


def parse(paths: list[Path] | None, command: str, *, dpi: int = DEFAULT_DPI) -> list[Target]:
    """Check every --save path before any work.

    A suffix this command writes, a writable place, no path twice, matplotlib installed when a static figure is
    asked for. Returns the targets in the order given.
    """
    allowed = ALLOWED[command]
    targets: list[Target] = []
    for path in paths or []:
        kind = path.suffix.lower().lstrip(".")
        if kind not in SUFFIXES:
            what = f"suffix {path.suffix!r} is not a known file type" if path.suffix else "the file name has no suffix"
            raise UsageError(f"--save {path}: {what}; mha {command} writes {suffix_list(allowed)}")
        if kind not in allowed:
            raise UsageError(f"--save {path}: mha {command} cannot write .{kind}; it writes {suffix_list(allowed)}")
        check_writable(path)
        if any(t.path.resolve() == path.resolve() for t in targets):
            raise UsageError(f"--save {path} is given twice")
        targets.append(Target(path, kind))
    if not 1 <= dpi <= MAX_DPI:
        raise UsageError(f"--dpi {dpi} must be between 1 and {MAX_DPI}")
    if any(t.kind in STATIC for t in targets):
        require_matplotlib()
    return targets


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise missing_extra("--save .png/.svg/.pdf", "matplotlib", "plot")


def wants(targets: list[Target], *kinds: str) -> bool:
    return any(t.kind in kinds for t in targets)


def write_all(targets: list[Target], picture: Picture, *, dpi: int = DEFAULT_DPI) -> None:
    """Write every target: the figure is drawn once per run and saved in each static format asked for."""
    figure = None
    for t in targets:
        if t.kind == "npz":
            from mhacli.views.formats import save_npz

            d = picture.data
            save_npz(t.path, d["views"], d["token_ids"], d["tokens"])
        elif t.kind == "html":
            from mhacli.views import page as webpage

            atomic_write_bytes(t.path, webpage.page_for(picture).encode("utf-8"))
        else:
            from mhacli.views import figures

            if figure is None:
                figure = figures.figure_for(picture)
            atomic_write_bytes(t.path, figures.to_bytes(figure, t.kind, dpi))
    if figure is not None:
        from mhacli.views import figures

        figures.close(figure)


def caption(model: str, text: str | None, n_tokens: int | None = None, limit: int = 80) -> str:
    """`model · "the text…" (17 tokens)`: the model and the text, cut to `limit` characters, on one line."""
    parts = [model]
    if text is not None:
        flat = " ".join(text.split())
        if len(flat) > limit:
            flat = flat[: limit - 1] + "…"
        parts.append(f"“{flat}”")
    if n_tokens is not None:
        parts.append(f"({n_tokens} tokens)")
    return " · ".join(parts[:2]) + (f" {parts[2]}" if len(parts) > 2 else "")


# --- what each command hands over ------------------------------------------------------------------------------------


def inspect_picture(ckpt, tokens, views) -> Picture:
    """inspect: the selected heads' maps (HeadViews with attention), the tokens."""
    c = ckpt.config
    return Picture(
        "inspect",
        caption(ckpt.source, "".join(tokens.tokens), len(tokens.ids)),
        {
            "views": views,
            "tokens": list(tokens.tokens),
            "token_ids": tokens.ids.tolist(),
            "n_layer": c.n_layer,
            "n_head": c.n_head,
            "model": ckpt.source,
        },
    )


def stats_picture(ckpt, tokens, views, stat: str) -> Picture:
    """stats: every head's statistics (maps too when a page is written: `wants(targets, "html")`)."""
    c = ckpt.config
    return Picture(
        "stats",
        caption(ckpt.source, "".join(tokens.tokens), len(tokens.ids)),
        {"views": views, "tokens": list(tokens.tokens), "n_layer": c.n_layer, "n_head": c.n_head, "stat": stat},
    )


def prune_picture(ckpt, texts, doc: dict) -> Picture:
    first = texts[0]
    text = caption(ckpt.source, "".join(first.tokens), len(first.ids))
    if len(texts) > 1:
        text += f"; loss over {len(texts)} texts"
    return Picture("prune", text, {"doc": doc})


def census_picture(ckpt, doc: dict) -> Picture:
    ran = ", ".join(f"{name} ({s.get('n_texts', 0)} texts)" for name, s in doc["sources"].items())
    return Picture("census", f"{ckpt.source} · census over {ran}", {"doc": doc})


def circuits_picture(ckpt, doc: dict) -> Picture:
    """circuits: the composition matrices (figure), every selected head's scores and pairs (page)."""
    return Picture("circuits", f"{ckpt.source} · circuits from the weights alone", {"doc": doc})
