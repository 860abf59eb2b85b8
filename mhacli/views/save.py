"""`--save FILE`, repeatable, on every command that shows heads: the writer is chosen by the file's suffix.

A command's result declares how it is pictured (`Pictures`: its figure in mhacli.views.figures, its page in
mhacli.views.page, whether it writes the attention tensor); everything here dispatches on that declaration, so a new
command adds its builders and names them, and edits nothing here. Commands call `parse` first (every path checked: a
suffix the command writes, a directory that can be written, the libraries a format needs) before any model is read,
then `write_all` with a `Picture`: what their terminal view shows, built by their operation (mhacli.ops.NAME's
NAME_picture). Each file is written whole to a temporary name beside it and renamed (formats.atomic_write_bytes).
Nothing here runs the model.

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
from mhacli.views.ablated import Ablated
from mhacli.views.formats import atomic_write_bytes, check_writable

SUFFIXES = ("npz", "png", "svg", "pdf", "html")
STATIC = ("png", "svg", "pdf")
DEFAULT_DPI = 200
MIN_DPI = 20  # below it the 5 pt labels are under a pixel and FreeType refuses to draw them
MAX_DPI = 1200


@dataclass(frozen=True)
class Target:
    path: Path
    kind: str  # one of SUFFIXES


@dataclass(frozen=True)
class Pictures:
    """How a command's result is pictured: a result class's PICTURES, which `--save` dispatches on.

    `figure`: the name of its builder in mhacli.views.figures (.png, .svg, .pdf), `page`: in mhacli.views.page
    (.html); None where there is none. `npz`: it writes the attention tensor. Each builder takes the Picture's
    `data` as keyword arguments and its `caption`.
    """

    command: str  # as the user typed it, for messages
    figure: str | None = None
    page: str | None = None
    npz: bool = False

    @property
    def kinds(self) -> tuple[str, ...]:
        """The suffixes this command writes."""
        has = {"npz": self.npz, **dict.fromkeys(STATIC, self.figure is not None), "html": self.page is not None}
        return tuple(kind for kind in SUFFIXES if has[kind])


@dataclass(frozen=True)
class Picture:
    """What a command shows, for its writers: `of` (the result's Pictures) picks the figure and page.

    `caption` names the model and the text; `data` holds the view's inputs (views, tokens, report, doc, ...) as
    keyword arguments; `ablated` the heads the run removed (the figure's title and the page's header name them).
    """

    of: Pictures
    caption: str
    data: dict[str, Any] = field(default_factory=dict)
    ablated: Ablated | None = None


def suffix_list(kinds: tuple[str, ...]) -> str:
    return ", ".join(f".{k}" for k in kinds)


def parse(paths: list[Path] | None, pictures: Pictures, *, dpi: int = DEFAULT_DPI) -> list[Target]:
    """Check every --save path before any work.

    A suffix this command writes (`pictures`: its result's PICTURES), a writable place, no path twice, matplotlib
    installed when a static figure is asked for. Returns the targets in the order given.
    """
    allowed, command = pictures.kinds, pictures.command
    targets: list[Target] = []
    for path in paths or []:
        kind = path.suffix.lower().lstrip(".")
        if kind not in SUFFIXES:
            what = f"suffix {path.suffix!r} is not a known file type" if path.suffix else "the file name has no suffix"
            raise UsageError(f"--save {path}: {what}; mha {command} writes {suffix_list(allowed)}")
        if kind not in allowed:
            raise UsageError(f"--save {path}: mha {command} cannot write .{kind}; it writes {suffix_list(allowed)}")
        if any(t.path.resolve() == path.resolve() for t in targets):
            raise UsageError(f"--save {path} is given twice")
        check_writable(path, "--save")
        targets.append(Target(path, kind))
    if not MIN_DPI <= dpi <= MAX_DPI:
        raise UsageError(f"{{dpi}} {dpi} must be between {MIN_DPI} and {MAX_DPI}", params=("dpi",))
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
