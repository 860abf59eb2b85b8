"""Terminal rendering: every view at several widths, from 1 token to n_positions tokens, fits and never crashes."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from rich.console import Console

from mhacli.analyses.heads import analyse
from mhacli.io.tokenizer import load_tokenizer
from mhacli.io.weights import load_model
from mhacli.views.terminal import inspect_view, stats_view

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def console(width: int, **kwargs) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=True, color_system="truecolor", **kwargs), buf


def visible_lines(buf: io.StringIO) -> list[str]:
    return ANSI.sub("", buf.getvalue()).splitlines()


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(str(tiny_model)), load_tokenizer(tiny_model)


@pytest.mark.parametrize("width", [40, 80, 120, 200])
@pytest.mark.parametrize("n_tokens", [1, 7, 64])
@pytest.mark.parametrize("view", ["map", "query", "top", "stats"])
def test_views_fit_the_width(model, width, n_tokens, view):
    ckpt, tok = model
    ids = np.random.default_rng(n_tokens).integers(0, 400, size=n_tokens)
    tokens = tok.display(ids.tolist())
    views = list(
        analyse(ckpt, ids, layers=[1], heads=[0, 3]) if view != "stats" else analyse(ckpt, ids, keep_maps=False)
    )
    con, buf = console(width)
    if view == "stats":
        con.print(stats_view(con, views, 2, 4, "previous_token", n_tokens))
    else:
        con.print(
            inspect_view(
                con,
                views,
                tokens,
                query=n_tokens - 1 if view == "query" else None,
                top=3 if view == "top" else None,
            )
        )
    lines = visible_lines(buf)
    assert lines, "nothing rendered"
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, too_wide[:3]


def test_long_text_map_is_windowed_and_says_so(model):
    ckpt, tok = model
    ids = np.random.default_rng(0).integers(0, 400, size=64)
    views = list(analyse(ckpt, ids, layers=[0], heads=[0]))
    con, buf = console(60)
    con.print(inspect_view(con, views, tok.display(ids.tolist())))
    text = " ".join("\n".join(visible_lines(buf)).split())
    assert re.search(r"showing query rows \d+–63 and key 0 and keys \d+–63 ", text) and "--from" in text  # the end
    con, buf = console(60)
    con.print(inspect_view(con, views, tok.display(ids.tolist()), start=40))
    assert "showing query rows 40–" in "\n".join(visible_lines(buf))


def test_whitespace_tokens_are_visible(model):
    ckpt, tok = model
    ids = tok.encode("a\n\tb  c")
    views = list(analyse(ckpt, np.asarray(ids), layers=[0], heads=[0]))
    con, buf = console(100)
    con.print(inspect_view(con, views, tok.display(ids)))
    text = "\n".join(visible_lines(buf))
    assert "↵" in text and "→" in text and "·" in text


def test_no_color_keeps_the_shades_and_drops_colour(model, monkeypatch):
    ckpt, tok = model
    ids = np.arange(10)
    views = list(analyse(ckpt, ids, layers=[0], heads=[0]))
    monkeypatch.setenv("NO_COLOR", "1")
    con, buf = console(100)
    con.print(inspect_view(con, views, tok.display(ids.tolist())))
    out = buf.getvalue()
    assert "38;2;" not in out and "48;2;" not in out, "truecolor codes despite NO_COLOR"
    assert any(ch in out for ch in "░▒▓█")


def test_grouped_heads_name_their_kv_head(model):
    """On MQA/GQA models each head's title says which K/V head it reads; on MHA models it says nothing extra."""
    from mhacli.analyses.heads import HeadView

    ckpt, tok = model
    ids = np.arange(6)
    views = list(analyse(ckpt, ids, layers=[0]))
    con, buf = console(100)
    con.print(inspect_view(con, views, tok.display(ids.tolist())))
    assert "kv" not in "\n".join(visible_lines(buf))
    grouped = [HeadView(v.stats, v.attention, v.head // 2) for v in views]  # as if 2 query heads per K/V head
    con, buf = console(100)
    con.print(inspect_view(con, grouped, tok.display(ids.tolist())))
    text = "\n".join(visible_lines(buf))
    assert "L0H3/kv1" in text and "L0H0/kv0" in text
    con, buf = console(100)
    con.print(inspect_view(con, grouped[3:4], tok.display(ids.tolist()), query=2))  # the one-head views say it in full
    assert "L0H3 (K/V head 1)" in "\n".join(visible_lines(buf))
