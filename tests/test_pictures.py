"""`--save FILE` pictures.

Suffix dispatch and its errors (before any work), and the static figures (PNG, SVG, PDF): they open, have the size asked
for, keep text as text, show the colour map's maximum at the strongest cell, and come out the same every run.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import parse_json

from mhacli.analyses.heads import HeadView
from mhacli.analyses.stats import layer_stats

pytest.importorskip("matplotlib", reason="matplotlib (the plot extra) is not installed")

TEXT = "The cat sat on the mat. The cat sat on the mat."


def one_error_line(result) -> str:
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert b"Traceback" not in result.stderr
    return lines[0]


# --- --save validation ----------------------------------------------------------------------------------------------


def test_unknown_suffix_is_refused_before_the_model_is_read(mha, tmp_path):
    """The missing model would be the error if --save were checked after loading."""
    r = mha("inspect", TEXT, "-m", str(tmp_path / "no-such-model"), "--save", str(tmp_path / "heads.gif"))
    line = one_error_line(r)
    assert "'.gif'" in line and ".png" in line and ".html" in line and ".npz" in line, line
    assert not (tmp_path / "heads.gif").exists()


def test_unknown_suffix_is_refused_before_stdin_is_read(mha, tmp_path):
    r = mha("stats", "-", "--save", str(tmp_path / "x.jpeg"), input=b"")  # empty stdin would be its own error
    assert "'.jpeg'" in one_error_line(r)


@pytest.mark.parametrize(
    ("command", "suffix", "writes"),
    [("prune", "html", ".png, .svg, .pdf"), ("stats", "npz", ".png, .svg, .pdf, .html"), ("census", "npz", ".png")],
)
def test_a_suffix_the_command_cannot_write_names_what_it_can(mha, tmp_path, command, suffix, writes):
    args = [command] + ([] if command == "census" else [TEXT]) + ["--save", str(tmp_path / f"out.{suffix}")]
    line = one_error_line(mha(*args))
    assert f"mha {command} cannot write .{suffix}" in line and writes in line, line


def test_unwritable_place_and_twice_the_same_file(mha, tmp_path):
    line = one_error_line(mha("inspect", TEXT, "--save", str(tmp_path / "missing" / "heads.png")))
    assert "does not exist" in line
    line = one_error_line(mha("inspect", TEXT, "--save", str(tmp_path / "a.png"), "--save", str(tmp_path / "a.png")))
    assert "twice" in line


def test_bad_dpi(mha, tmp_path):
    assert "--dpi" in one_error_line(mha("inspect", TEXT, "--save", str(tmp_path / "a.png"), "--dpi", "0"))


def test_missing_matplotlib_is_one_line_naming_the_extra(mha, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    line = one_error_line(mha("inspect", TEXT, "-m", str(tmp_path / "nothing"), "--save", str(tmp_path / "a.png")))
    assert 'pip install "mhacli[plot]"' in line, line
    # the page and the tensor need no matplotlib
    r = mha("inspect", TEXT, "--save", str(tmp_path / "a.html"), "--save", str(tmp_path / "a.npz"), "-f", "json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.html").stat().st_size > 0 and (tmp_path / "a.npz").stat().st_size > 0


# --- inspect: every format in one run -------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def pdf_media_box(data: bytes) -> list[float]:
    assert data.startswith(b"%PDF-")
    boxes = re.findall(rb"/MediaBox\s*\[\s*([-\d.\s]+)\]", data)
    assert len(boxes) == 1, boxes  # one page
    return [float(x) for x in boxes[0].split()]


def svg_texts(data: bytes) -> list[str]:
    root = ET.fromstring(data)
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_inspect_writes_every_format_in_one_run(mha, tmp_path):
    files = {s: tmp_path / f"heads.{s}" for s in ("png", "svg", "pdf", "html", "npz")}
    args = ["inspect", TEXT, "-f", "json", "--dpi", "100"]
    for f in files.values():
        args += ["--save", str(f)]
    r = mha(*args)
    assert r.returncode == 0, r.stderr
    doc = parse_json(r.stdout)
    for f in files.values():
        assert f.stat().st_size > 0, f
    assert not list(tmp_path.glob(".mha-*")), "no temporary file left behind"
    w, h = png_size(files["png"].read_bytes())
    box = pdf_media_box(files["pdf"].read_bytes())
    # the same figure in both: PDF points are 1/72 inch, the PNG has 100 pixels an inch
    assert abs(w - box[2] / 72 * 100) <= 1 and abs(h - box[3] / 72 * 100) <= 1, (w, h, box)
    texts = svg_texts(files["svg"].read_bytes())
    joined = "\n".join(texts)
    for head in doc["heads"]:
        assert f"L{head['layer']}H{head['head']} {head['kind']}" in joined, f"title of L{head['layer']}H{head['head']}"
    assert any(t.strip() == "·sat" for t in texts), "token labels are text in the SVG"
    assert "sample:tiny-shakespeare" in joined and "The cat sat on the mat." in joined, "caption: model and text"
    with np.load(files["npz"]) as z:
        assert z["attention"].shape == (2, 4, len(doc["tokens"]), len(doc["tokens"]))


def test_one_head_is_a_column_wide_at_the_dpi_asked_for(mha, tmp_path):
    out = tmp_path / "one.png"
    for dpi in (100, 250):
        r = mha("inspect", TEXT, "-l", "1", "-H", "2", "--save", str(out), "--dpi", str(dpi), "-f", "json")
        assert r.returncode == 0, r.stderr
        w, _ = png_size(out.read_bytes())
        assert w == round(3.4 * dpi), (dpi, w)
    pdf = tmp_path / "one.pdf"
    assert mha("inspect", TEXT, "-l", "1", "-H", "2", "--save", str(pdf), "-f", "json").returncode == 0
    assert pdf_media_box(pdf.read_bytes())[2] == pytest.approx(3.4 * 72, abs=0.01)


# --- the figures themselves -----------------------------------------------------------------------------------------


def diagonal_view(n: int = 8) -> HeadView:
    """Every query all on itself: the diagonal at weight 1, the rest of the lower triangle 0."""
    attn = np.eye(n, dtype=np.float32)[None]
    (s,) = layer_stats(0, attn, np.arange(n))
    return HeadView(s, attn[0], 0)


def test_strongest_cell_has_the_colour_maps_maximum():
    import matplotlib
    from matplotlib.image import imread

    from mhacli.views import figures

    n = 8
    with figures.style():
        fig = figures.inspect_figure(views=[diagonal_view(n)], tokens=[f"t{i}" for i in range(n)], caption="test")
    dpi = 100
    png = figures.to_bytes(fig, "png", dpi)
    pixels = imread(io.BytesIO(png))[..., :3]  # [rows, cols, rgb] floats 0-1
    height = pixels.shape[0]
    ax = fig.axes[0]
    fig.set_dpi(dpi)
    fig.canvas.draw()  # the same layout the PNG was drawn with

    def at(i: int, j: int) -> np.ndarray:
        x, y = ax.transData.transform((j, i))  # image: column j, row i
        return pixels[int(round(height - y)), int(round(x))]

    viridis = matplotlib.colormaps["viridis"]
    for i in range(n):
        assert np.allclose(at(i, i), viridis(1.0)[:3], atol=2 / 255), (i, at(i, i))
    assert np.allclose(at(5, 2), viridis(0.0)[:3], atol=2 / 255)
    assert np.allclose(at(2, 5), (1, 1, 1), atol=2 / 255), "keys after the query: white"


@pytest.mark.parametrize("kind", ["png", "svg", "pdf"])
def test_figures_are_reproducible(kind):
    from mhacli.views import figures

    views = [diagonal_view(6)]
    outs = []
    for _ in range(2):
        with figures.style():
            fig = figures.inspect_figure(views=views, tokens=list("abcdef"), caption="same")
        outs.append(figures.to_bytes(fig, kind, 80))
    assert outs[0] == outs[1]
    assert b"Date" not in outs[0] if kind == "svg" else True
    if kind == "pdf":
        assert b"/CreationDate" not in outs[0]


def test_a_dollar_token_is_shown_as_it_is():
    from mhacli.views import figures

    views = [diagonal_view(4)]
    with figures.style():
        fig = figures.inspect_figure(views=views, tokens=["$x$", "a", "$", "b"], caption="dollars $5")
    texts = svg_texts(figures.to_bytes(fig, "svg", 72))
    assert "$x$" in texts and "$" in texts


# --- every other command's figure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["stats", TEXT],
        ["stats", TEXT, "--stat", "entropy"],
        ["diff", "sample", "sample-early", TEXT],
        ["ablate", TEXT],
        ["prune", TEXT, "--seeds", "2", "--step", "0.25"],
        ["census", "--probe-count", "3", "-j", "1"],
    ],
    ids=["stats", "stats-entropy", "diff", "ablate", "prune", "census"],
)
def test_every_command_writes_a_figure(mha, tmp_path, args):
    from matplotlib.image import imread

    png, svg = tmp_path / "f.png", tmp_path / "f.svg"
    r = mha(*args, "--save", str(png), "--save", str(svg), "--dpi", "60", "-f", "json")
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)  # stdout stays the document
    image = imread(png)
    assert image.shape[0] > 60 and image.shape[1] >= 3.4 * 60 - 1
    assert image[..., :3].std() > 0.05, "not a blank picture"
    texts = "\n".join(svg_texts(svg.read_bytes()))
    assert "sample:tiny-shakespeare" in texts, "the caption names the model"
    if args[0] in ("stats", "diff", "ablate", "census"):
        assert "layer" in texts and "head" in texts


def test_kind_letters_match_the_terminal():
    from mhacli.analyses.stats import KINDS
    from mhacli.views.display import KIND_HEX, KIND_LETTER
    from mhacli.views.terminal import KIND_STYLE

    assert {k: v[0] for k, v in KIND_STYLE.items()} == KIND_LETTER
    assert set(KIND_HEX) == set(KINDS)


def test_package_resources_are_found():
    from mhacli.views.page import resource

    assert "DecompressionStream" in resource("page.js")
    assert ".cell" in resource("page.css")
    assert Path(__file__).resolve().parent.parent.joinpath("mhacli", "views", "web", "page.js").is_file()
