"""`mha browse`: the Textual app driven headlessly by its pilot on the bundled model.

No mocks: the real model, the real API, assertions on the text the screen shows. Also the command's error paths
through the real entry point, and a smoke test in a real terminal (tmux), skipped where tmux is absent.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, run_mha

pytest.importorskip("textual", reason="mha browse needs the browse extra (textual)")

from mhacli.browse.app import BrowseApp  # noqa: E402
from mhacli.browse.state import Session, parse_filter  # noqa: E402
from mhacli.views.terminal.browse import KEYS  # noqa: E402

TEXT = "The cat sat on the mat. The cat sat on the mat."  # the README's example: L0H3 previous-token, L1H2 induction
SMALL, LARGE = (80, 24), (160, 50)


@pytest.fixture(scope="module")
def model():
    import mhacli

    return mhacli.load("sample")


@pytest.fixture(scope="module")
def induction_head() -> tuple[int, int]:
    """The induction head as `mha stats -f json` reports it on TEXT (the README names L1H2)."""
    result = run_mha("stats", TEXT, "-f", "json")
    assert result.returncode == 0, result.stderr
    heads = [(h["layer"], h["head"]) for h in json.loads(result.stdout)["heads"] if h["kind"] == "induction"]
    assert len(heads) == 1, heads
    return heads[0]


def screen_text(app: BrowseApp) -> str:
    """What the terminal shows, as text: every line of the screen the compositor draws."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def map_colours(app: BrowseApp) -> list[list[tuple[str, str]]]:
    """The map pane's cells as drawn: (text, style) of every segment of its lines (half-blocks differ by colour)."""
    region = app.query_one("#map").region
    strips = app.screen._compositor.render_strips()[region.y : region.bottom]
    return [[(seg.text, str(seg.style)) for seg in strip.crop(region.x, region.right)] for strip in strips]


def drive(app: BrowseApp, *keys: str, size=SMALL, then=None, colours: list | None = None) -> str:
    """Start the app headless at `size`, press `keys`, let the workers finish, run `then(pilot)`, return the screen.

    The map's cells go into `colours` when given.
    """

    async def go() -> str:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            for key in keys:
                await pilot.press(key)
            await app.workers.wait_for_complete()  # `a`, `d` and `t` compute in worker threads
            await pilot.pause()
            if then is not None:
                await then(pilot)
            await pilot.pause()
            if colours is not None:
                colours.extend(map_colours(app))
            return screen_text(app)

    return asyncio.run(go())


def map_rows(screen: str) -> list[str]:
    """The map pane's lines (right of the grid's border), from the key ruler down."""
    return [line.split("▕", 1)[1] for line in screen.splitlines() if "▕" in line][2:]


def typed(text: str) -> list[str]:
    return [{"/": "slash", ">": "greater_than_sign", ".": "full_stop", " ": "space"}.get(c, c) for c in text]


# --- the grid and the map ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "160x50"])
def test_arrow_keys_move_the_selection_and_change_the_map(model, size):
    before, after = [], []
    first = drive(BrowseApp(Session(model, TEXT)), size=size, colours=before)
    moved = drive(BrowseApp(Session(model, TEXT)), "down", "right", "right", size=size, colours=after)
    assert "[B 0.89]" in first and "L0H0 broad" in first  # L0H0 selected at the start
    assert "[I 0.71]" in moved and "L1H2 induction 0.71" in moved
    assert "[B 0.89]" not in moved
    assert map_rows(first)[1:] == map_rows(moved)[1:]  # the same triangle of half-blocks ...
    assert before[3:] != after[3:]  # ... in other colours: another head's weights
    for screen in (first, moved):
        assert all(len(line) == size[0] for line in screen.splitlines())  # nothing wider than the terminal
        assert len(screen.splitlines()) == size[1]


def test_the_query_row_is_marked_and_a_large_terminal_labels_rows_with_tokens(model):
    screen = drive(BrowseApp(Session(model, TEXT)), size=LARGE)
    marked = [line for line in map_rows(screen) if "▶" in line]
    assert len(marked) == 1 and re.search(r"16 at/\.\s*▶", marked[0]), marked  # query 17 is in the pair 16/17


def test_clicking_a_head_selects_it(model):
    app = BrowseApp(Session(model, TEXT))

    async def click(pilot):
        grid = app.query_one("#grid")
        x = 7 + 3 * 8  # layer label, then 8 columns a head (render.grid): head 3
        await pilot.click(grid, offset=(x, 2))  # the pane's name, the grid's header, then layer 0

    screen = drive(app, then=click)
    assert (app.session.layer, app.session.head) == (0, 3)
    assert "L0H3 previous-token" in screen


def test_the_map_scrolls_and_keeps_key_0(model):
    text = " ".join(["ROMEO: I love thee, and thou lovest me."] * 6)
    app = BrowseApp(Session(model, text))
    seen = []

    async def window(pilot):
        seen.append(app.query_one("#map").window)

    screen = drive(app, "tab", "tab", "pagedown", "left", "left", "left", "left", then=window)
    window = seen[0]
    assert window.lo > 0  # scrolled down
    assert window.pinned and window.keys[0] == 0  # the keys start later; key 0 stays in front
    assert f"rows {window.lo}–" in screen and "key 0," in screen


# --- the token strip ---------------------------------------------------------------------------------------------


def test_the_query_cursor_updates_the_top_keys(model, induction_head):
    layer, head = induction_head
    session = Session(model, TEXT)
    session.layer, session.head = layer, head
    app = BrowseApp(session)
    screen = drive(app, "tab", "left", "left")  # the tokens pane; query 17 -> 15, the second " mat" (' m')
    assert app.session.query == 15
    row = model.run(TEXT).attention(layer)[head][15, :16]
    top = int(np.argmax(row))
    assert top == 7  # the token after the first ' m': the induction head's target
    line = next(line for line in screen.splitlines() if line.startswith("query "))
    assert line.startswith(f"query 15 '·m' → █{top}:'at' {row[top]:.2f}")  # █: a swatch of the weight's colour
    before = drive(BrowseApp(Session(model, TEXT)), "tab")
    assert next(x for x in before.splitlines() if x.startswith("query ")).startswith("query 17 ")


# --- the filter ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["induction", "induction>0.5", "ind"])
def test_filter_finds_the_induction_head(model, induction_head, spec):
    app = BrowseApp(Session(model, TEXT))
    screen = drive(app, *typed("/" + spec), "enter")
    assert (app.session.layer, app.session.head) == induction_head
    assert app.session.shown() == [induction_head]
    grid = [line.split("▕")[0] for line in screen.splitlines()[2:5]]
    assert re.findall(r"[A-Z·] \d\.\d\d", " ".join(grid)) == ["I 0.71"]  # one head left in the grid
    assert "filter " + spec + ": 1 of 8" in screen


def test_a_bad_filter_says_what_it_takes_and_keeps_every_head(model):
    app = BrowseApp(Session(model, TEXT))
    screen = drive(app, *typed("/colour"), "enter")
    assert "error: 'colour' is not a kind: one of induction, previous-token" in screen
    assert len(app.session.shown()) == 8
    with pytest.raises(Exception, match="not a number"):
        parse_filter("induction>high", ("induction",), ("induction",))


# --- modes --------------------------------------------------------------------------------------------------------


def test_diff_of_the_model_with_itself_is_zero(model):
    import mhacli

    app = BrowseApp(Session(model, TEXT, model_b=mhacli.load("sample")))
    screen = drive(app, "down", "right", "right", "d")
    assert "|A−B| max 0.000" in screen
    cells = re.findall(r"[A-Z·] (\d\.\d\d)", " ".join(line.split("▕")[0] for line in screen.splitlines()[2:5]))
    assert cells == ["0.00"] * 8
    assert app.session.diff_report().max_divergence == 0.0


def test_diff_of_two_models_shows_their_divergence_grid(model):
    import mhacli

    app = BrowseApp(Session(model, TEXT, model_b=mhacli.load("sample-early")))
    screen = drive(app, "d")
    report = mhacli.diff(model, mhacli.load("sample-early"), TEXT)
    by_head = {(r.layer_a, r.head_a): r.divergence for r in report.heads}
    assert f"[B {by_head[(0, 0)]:.2f}]" in screen.replace("[P", "[B").replace("[·", "[B")
    assert "divergence of B" in screen


def test_diff_runs_in_a_worker_and_escape_cancels_it(model, monkeypatch):
    import mhacli

    gate = threading.Event()
    real = Session.compute_diff

    def slow(self):
        gate.wait(30)
        return real(self)

    monkeypatch.setattr(Session, "compute_diff", slow)
    app = BrowseApp(Session(model, TEXT, model_b=mhacli.load("sample")))
    seen = {}

    async def go() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            await pilot.press("d")
            said = screen_text(app)
            await pilot.press("right")  # live while it runs
            seen["running"] = (app.query_one("#progress").display, app.mode, app.session.head, said)
            await pilot.press("escape")
            gate.set()
            await app.workers.wait_for_complete()
            await pilot.pause()
            seen["cancelled"] = (app.mode, app.session.has_diff(), screen_text(app))
            await pilot.press("d")  # again, to the end this time
            await app.workers.wait_for_complete()
            await pilot.pause()
            seen["done"] = (app.mode, screen_text(app))

    asyncio.run(go())
    assert seen["running"][:3] == (True, "kinds", 1) and "comparing A and B (Esc cancels)" in seen["running"][3]
    assert seen["cancelled"][:2] == ("kinds", False) and "diff cancelled" in seen["cancelled"][2]
    assert seen["done"][0] == "diff" and "|A−B| max 0.000" in seen["done"][1]


def test_diff_without_a_second_model_says_how(model):
    screen = drive(BrowseApp(Session(model, TEXT)), "d")
    assert "error: no second model: start mha browse with --diff MODEL_B" in screen


def test_explain_mode_shows_the_selected_head_and_query(model):
    screen = drive(BrowseApp(Session(model, TEXT)), "down", "right", "right", "tab", "left", "e")
    assert "layer 1, head 2, query token 16 'at'" in screen
    assert "1. input to layer 1 at token 16" in screen


def test_stats_mode_shows_the_numbers_of_mha_stats(model, induction_head):
    app = BrowseApp(Session(model, TEXT))
    screen = drive(app, "down", "right", "right", "s")
    s = next(x for x in model.run(TEXT).stats() if (x.layer, x.head) == induction_head)
    assert re.search(
        rf"induction\s+{s.values['induction']:.2f}\s+{s.values['induction']:.2f}\s+{s.support['induction']}", screen
    )
    assert re.search(rf"entropy\s+{s.values['entropy']:.3f}", screen)


def test_ablating_the_previous_token_head_changes_the_induction_head(model):
    app = BrowseApp(Session(model, TEXT))
    # L0H3 (previous-token) removed, then the selection moves to L1H2: K-composition breaks its stripe
    screen = drive(app, "right", "right", "right", "a", "down", "left")
    report, run, delta = app.session.ablation((0, 3))
    div = {(r.layer_a, r.head_a): r.divergence for r in report.heads}
    assert all(div[(0, h)] == 0.0 for h in range(4))  # layer 0 cannot see a removal in its own output
    assert div[(1, 2)] == max(div.values()) > 0.1
    assert f"L0H3 removed, loss {delta:+.3f} nats/token; grid: each head's divergence" in screen and delta > 0
    assert "without L0H3" in screen and "with it" in screen


class SlowAblation:
    """Run.ablate made to wait before each head until the test releases it (a slow model, under the test's control).

    It wraps ops.ablation's per-head tick (progress_tick, which Run.ablate's ticker calls): the numbers are untouched.
    """

    def __init__(self, monkeypatch) -> None:
        import mhacli.ops.ablation

        self.heads = threading.Semaphore(0)
        real = mhacli.ops.ablation.progress_tick

        def gated(progress, total, what="heads"):
            tick = real(progress, total, what)

            def slow() -> None:
                self.heads.acquire(timeout=30)
                assert tick is not None
                tick()

            return None if tick is None else slow

        monkeypatch.setattr(mhacli.ops.ablation, "progress_tick", gated)

    def release(self, n: int) -> None:
        for _ in range(n):
            self.heads.release()


async def until(pilot, condition, timeout: float = 60) -> None:
    """Let the app run until `condition()` holds (a generous bound: the machine may be busy)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "the condition never held"
        await pilot.pause(0.05)


def test_ablation_runs_in_the_background_with_a_progress_bar_and_live_keys(model, monkeypatch):
    slow = SlowAblation(monkeypatch)
    app = BrowseApp(Session(model, TEXT))
    seen = {}

    async def go() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            await pilot.press("a")
            bar = app.query_one("#progress")
            await until(pilot, lambda: app.mode == "ablate")  # no head of the every-head pass has run yet
            seen["shown"] = (bar.display, app.ablating is not None, bar.total, bar.progress, screen_text(app))
            slow.release(3)
            await until(pilot, lambda: bar.progress == 3)
            seen["at 3"] = screen_text(app)
            await pilot.press("down", "right", "right")  # the grid moves while heads are being removed
            seen["moved"] = ((app.session.layer, app.session.head), app.ablating is not None, screen_text(app))
            slow.release(5)
            await app.workers.wait_for_complete()
            await pilot.pause()
            seen["done"] = (bar.display, app.ablating, app.mode, app.ablated, screen_text(app))

    asyncio.run(go())
    # the selected head's result is on the screen before any other head is measured (issue 36: `a` waited for all)
    shown, running, total, progress, screen = seen["shown"]
    assert (shown, running, total, progress) == (True, True, 8, 0)
    assert "ablating: 0 of 8 heads removed alone (Esc cancels); L0H0 removed" in screen and "without L0H0" in screen
    assert "ablating: 3 of 8 heads removed alone (Esc cancels)" in seen["at 3"]
    assert seen["moved"][:2] == ((1, 2), True) and "L1H2, query" in seen["moved"][2]  # the selection follows
    shown, worker, mode, ablated, screen = seen["done"]
    assert (shown, worker, mode, ablated) == (False, None, "ablate", (0, 0))  # the head selected when `a` was pressed
    assert "L0H0 removed" in screen and "without L0H0" in screen


def test_escape_cancels_the_ablation_and_the_app_stays_responsive(model, monkeypatch):
    slow = SlowAblation(monkeypatch)
    app = BrowseApp(Session(model, TEXT))
    seen = {}

    async def go() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            await pilot.press("a")
            slow.release(2)
            await until(pilot, lambda: app.query_one("#progress").progress == 2)
            await pilot.press("escape")
            slow.release(1)  # the head being removed finishes; the worker stops before the next one
            await app.workers.wait_for_complete()
            await pilot.pause()
            seen["cancelled"] = (app.mode, app.ablating, app.query_one("#progress").display, screen_text(app))
            await pilot.press("right", "s")
            await pilot.pause()
            seen["after"] = ((app.session.layer, app.session.head), app.mode, screen_text(app))

    asyncio.run(go())
    mode, worker, bar, screen = seen["cancelled"]
    assert (mode, worker, bar) == ("ablate", None, False)  # L0H0's own result, shown at once, stays
    assert "every head alone: cancelled after 3 of 8 heads" in screen
    assert app.session.alone((0, 1)) is None and "alone" not in app.session._cache  # nothing partial kept
    assert ("ablate", (0, 0)) in app.session._cache
    assert seen["after"][:2] == ((0, 1), "stats") and "entropy" in seen["after"][2]


def test_a_second_head_reuses_each_heads_loss_alone(model, monkeypatch):
    """Every head removed alone is measured once per text: `a` on another head reruns only that head's maps."""
    import mhacli.api

    calls = []
    real = mhacli.api.Run.ablate
    monkeypatch.setattr(
        mhacli.api.Run,
        "ablate",
        lambda self, *a, **k: calls.append(a[0] if a else k.get("heads")) or real(self, *a, **k),
    )
    app = BrowseApp(Session(model, TEXT))
    seen = []

    async def go() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            for keys in (("a",), ("a", "right", "a")):  # L0H0; back to kinds; L0H1
                await pilot.press(*keys)
                await app.workers.wait_for_complete()
                await pilot.pause()
                seen.append((app.mode, app.ablated, screen_text(app)))

    asyncio.run(go())
    assert [(m, a) for m, a, _ in seen] == [("ablate", (0, 0)), ("ablate", (0, 1))]
    # L0H0 alone (shown at once), then every head alone; L0H1's loss comes from that: nothing measured again
    assert calls == [[(0, 0)], None] and "L0H1 removed" in seen[1][2]


def test_a_completed_ablation_shows_the_numbers_of_mha_ablate(model):
    doc = json.loads(run_mha("ablate", TEXT, "-f", "json").stdout)
    want = {(h["layer"], h["head"]): h["delta"] for h in doc["heads"]}
    app = BrowseApp(Session(model, TEXT))
    got = {}

    async def go() -> None:
        async with app.run_test(size=LARGE) as pilot:
            await pilot.pause()
            await pilot.press("right", "right", "right", "a")  # L0H3 removed
            await app.workers.wait_for_complete()
            await pilot.pause()
            got["status"] = screen_text(app)
            for layer, head in want:
                app.session.layer, app.session.head = layer, head
                app.selection_changed()
                await pilot.pause()
                found = re.search(rf"L{layer}H{head} removed alone: loss ([+-]\d+\.\d{{3}})", screen_text(app))
                got[(layer, head)] = float(found.group(1)) if found else None

    asyncio.run(go())
    for head, delta in want.items():
        assert got[head] is not None and abs(got[head] - delta) <= 5e-4 + 1e-9, (head, got[head], delta)
    status = re.search(r"L0H3 removed, loss ([+-]\d+\.\d{3}) nats/token", got["status"])
    assert status and abs(float(status.group(1)) - want[(0, 3)]) <= 5e-4 + 1e-9


def test_the_walkthrough_of_the_browse_page(model, induction_head):
    """docs/commands/browse.md's "Find the induction head": each step's keys, and what the step says happens."""
    page = (REPO / "docs" / "commands" / "browse.md").read_text(encoding="utf-8")
    for said in ("`/`, type `induction`, Enter", "Tab (the tokens pane) and ← twice", "`7:'at' 0.84`",
                 "`/` Enter clears the filter; ↑ → moves there", "↓ ← back to L1H2", "the loss rises"):  # fmt: skip
        assert said in page, said
    app = BrowseApp(Session(model, TEXT))
    steps = {}

    async def go() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            steps[1] = screen_text(app)
            for key in typed("/induction"):
                await pilot.press(key)
            await pilot.press("enter")
            await pilot.pause()
            steps[2] = (app.session.shown(), (app.session.layer, app.session.head), screen_text(app))
            await pilot.press("tab", "left", "left")
            await pilot.pause()
            steps[3] = (app.session.query, screen_text(app))
            await pilot.press("slash", "enter", "up", "right")
            await pilot.pause()
            steps["4a"] = (len(app.session.shown()), (app.session.layer, app.session.head))
            await pilot.press("a")
            await app.workers.wait_for_complete()
            await pilot.press("down", "left")
            await pilot.pause()
            steps["4b"] = ((app.session.layer, app.session.head), app.mode, screen_text(app))
            await pilot.press("q")

    asyncio.run(go())
    grid = " ".join(line.split("▕")[0] for line in steps[1].splitlines()[2:5])
    assert len(re.findall(r"[A-Z·] \d\.\d\d", grid)) == 8 and "I 0.71" in grid and "P 0.99" in grid  # step 1
    assert steps[2][:2] == ([induction_head], induction_head) and "L1H2 induction" in steps[2][2]  # step 2
    query, screen = steps[3]
    assert query == 15 and app.session.tokens[15] == " m" and "7:'at' 0.84" in screen  # step 3
    assert steps["4a"] == (8, (0, 3))  # step 4: the filter cleared, L0H3 selected
    selected, mode, screen = steps["4b"]
    report, _, delta = app.session.ablation((0, 3))
    top = max(report.heads, key=lambda r: r.divergence)
    assert selected == induction_head == (top.layer_a, top.head_a) and mode == "ablate"  # changes most
    assert delta is not None and delta > 0 and f"loss {delta:+.3f}" in screen  # the loss rises
    assert app.return_code == 0  # step 5


def test_help_lists_every_key(model):
    screen = drive(BrowseApp(Session(model, TEXT)), "question_mark")
    for key, what in KEYS:
        assert key in screen and what in screen, key
    closed = drive(BrowseApp(Session(model, TEXT)), "question_mark", "escape")
    assert "Tab Shift+Tab" not in closed


def test_the_text_edit_reruns_with_the_model_loaded(model):
    app = BrowseApp(Session(model, TEXT))

    async def edit(pilot):
        await pilot.press("t")
        await pilot.pause()
        box = app.screen.query_one("#text")
        box.value = "ROMEO: I love thee. ROMEO: I love thee."
        await pilot.press("enter")
        await app.workers.wait_for_complete()  # the new text runs in a worker thread

    screen = drive(app, then=edit)
    assert app.session.model is model
    assert app.session.tokens == model.run("ROMEO: I love thee. ROMEO: I love thee.").tokens
    assert "14 tokens" in screen and "ran the new text: 14 tokens" in screen
    assert "ROMEO│:│·I│·love" in screen


def test_an_empty_text_edit_keeps_the_old_text(model):
    app = BrowseApp(Session(model, TEXT))

    async def edit(pilot):
        await pilot.press("t")
        await pilot.pause()
        app.screen.query_one("#text").value = "   "
        await pilot.press("enter")
        await app.workers.wait_for_complete()

    screen = drive(app, then=edit)
    assert "error: text is empty (the old text is kept)" in screen
    assert app.session.text == TEXT


def test_escape_while_a_new_text_runs_keeps_the_old_text(model, monkeypatch):
    """`t`'s run happens in a worker: keys stay live while it runs, and Esc keeps the old text."""
    gate = threading.Event()
    real = Session.prepare

    def slow(self, text):
        gate.wait(30)
        return real(self, text)

    monkeypatch.setattr(Session, "prepare", slow)
    app = BrowseApp(Session(model, TEXT))
    seen = {}

    async def go() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            await pilot.press("t")
            await pilot.pause()
            app.screen.query_one("#text").value = "ROMEO: I love thee. ROMEO: I love thee."
            await pilot.press("enter")
            await pilot.pause()
            bar = app.query_one("#progress")
            seen["running"] = (bar.display, app.rerunning is not None, screen_text(app))
            await pilot.press("right")  # live while it runs
            seen["moved"] = (app.session.layer, app.session.head)
            await pilot.press("escape")
            gate.set()
            await app.workers.wait_for_complete()
            await pilot.pause()
            seen["after"] = (bar.display, app.rerunning, screen_text(app))

    asyncio.run(go())
    assert seen["running"][:2] == (True, True) and "running the new text (Esc keeps the old one)" in seen["running"][2]
    assert seen["moved"] == (0, 1)
    assert seen["after"][:2] == (False, None) and "new text cancelled: the old one is kept" in seen["after"][2]
    assert app.session.text == TEXT and app.session.run.n_seq == 18


def test_a_text_over_the_memory_limit_is_refused_with_a_message(model):
    session = Session(model, TEXT, memory_limit=model.memory_needed(18))
    with pytest.raises(Exception, match="needs about .* more than the .* allowed"):
        session.rerun(TEXT + " And more words than before.")
    assert session.text == TEXT


def test_no_color_draws_shades(model, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = BrowseApp(Session(model, TEXT))
    assert app.no_color and not app.color
    screen = drive(app, "down", "right", "right")
    rows = map_rows(screen)
    assert not any("▀" in r or "▄" in r for r in rows)
    assert any(c in "".join(rows) for c in "░▒▓█")
    assert "I 0.71" in screen  # the grid's numbers without colour


def test_a_terminal_too_small_says_so_until_it_grows(model):
    app = BrowseApp(Session(model, TEXT))
    screen = drive(app, size=(50, 12))
    assert "terminal too small: 50×12" in screen
    grown = []
    app = BrowseApp(Session(model, TEXT))

    async def resize(pilot):
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        grown.append(screen_text(app))

    drive(app, size=(50, 12), then=resize)
    assert grown[0].splitlines()[0].startswith("mha browse sample:tiny-shakespeare")
    assert all(len(line) == 100 for line in grown[0].splitlines())


def test_q_quits_with_exit_code_0(model):
    app = BrowseApp(Session(model, TEXT))
    drive(app, "q")
    assert app.return_code == 0


# --- the command: errors, the missing extra ------------------------------------------------------------------------


def test_without_textual_one_error_line_names_the_extra():
    code = (
        "import sys; sys.modules['textual'] = None; from mhacli.__main__ import entry; "
        "sys.argv = ['mha', 'browse', 'hi']; entry()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.splitlines() == [
        'error: mha browse needs textual: pip install "mhacli[browse]" (from a checkout: pip install ".[browse]")'
    ]


def test_other_commands_never_import_textual():
    code = "import sys; from mhacli.cli import run; run(['stats', 'hi', '-f', 'json']); print('textual' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.stdout.decode().splitlines()[-1] == "False"


def test_piped_stdout_is_refused():
    result = run_mha("browse", TEXT)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "error: mha browse is interactive and needs a terminal on stdout; mha stats and mha inspect print to pipes"
    ]


def in_a_terminal(*args: str, columns: int = 80, lines: int = 24) -> subprocess.CompletedProcess:
    """`mha ARGS` with stdin and stdout on a pseudo-terminal of that size, stderr captured.

    The errors raised before the app starts.
    """
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR", "COLUMNS", "LINES")}
    try:
        return subprocess.run(
            [sys.executable, "-m", "mhacli", *args],
            stdin=slave,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=env,
            timeout=120,
        )
    finally:
        os.close(slave)
        os.close(master)


@pytest.mark.parametrize(
    "args,message",
    [
        (["browse", TEXT, "-m", "./no-such-model"], "./no-such-model"),
        (["browse", ""], "text is empty"),
        (["browse", TEXT, "--diff", "./no-such-model-b"], "./no-such-model-b"),
        (["browse", TEXT, "--ablate", "7.0"], "7"),
        (["browse", TEXT, "--max-memory", "1K"], "--max-memory"),
    ],
    ids=["bad-model", "empty-text", "bad-diff-model", "bad-ablate", "memory"],
)
def test_errors_are_one_line_and_exit_2(args, message):
    result = in_a_terminal(*args)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_a_terminal_too_small_is_refused_before_starting():
    result = in_a_terminal("browse", TEXT, columns=40, lines=10)
    err = result.stderr.decode()
    assert result.returncode == 2
    assert err.splitlines() == ["error: the terminal is 40×10; mha browse needs at least 60×16 (80×24 or more is best)"]


# --- a real terminal: tmux ----------------------------------------------------------------------------------------

TMUX = shutil.which("tmux")
needs_tmux = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")


class Tmux:
    """One tmux server of its own (a private socket), one 80 x 24 window running a command.

    The window stays visible after the command exits (remain-on-exit), so its exit status can be read.
    """

    def __init__(self, command: str, env: dict, status: Path) -> None:
        self.socket = f"mha-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.status = status
        # the command's exit status is written to a file; the shell then waits, keeping the restored screen visible
        shell = f"{command}; echo $? > {shlex.quote(str(status))}; sleep 600"
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "80", "-y", "24", shell)

    def tmux(self, *args: str) -> str:
        result = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, env=self.env, timeout=30)
        return result.stdout.decode()

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p")

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        """Poll the screen until `pattern` shows (a generous bound: the machine may be busy)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never showed; the screen:\n{self.screen()}")

    def exit_status(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.status.exists() and self.status.read_text().strip():
                return int(self.status.read_text())
            time.sleep(0.2)
        raise AssertionError(f"still running; the screen:\n{self.screen()}")

    def close(self) -> None:
        self.tmux("kill-server")


def tmux_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR", "TMUX")}
    env["TERM"] = "xterm-256color"
    return env


def mha_command(args: str) -> str:
    return f"cd {shlex.quote(str(REPO))} && {shlex.quote(sys.executable)} -m mhacli {args}"


@needs_tmux
@pytest.mark.parametrize("how,quit_key", [("argument", "q"), ("argument", "C-c"), ("pipe", "q")])
def test_in_a_real_terminal(how, quit_key, tmp_path):
    """TEXT as an argument, or piped (the keys then come from the terminal, /dev/tty); q and Ctrl+C exit 0."""
    command = mha_command(f"browse {shlex.quote(TEXT)}")
    if how == "pipe":
        command = (
            f"cd {shlex.quote(str(REPO))} && echo {shlex.quote(TEXT)} | {shlex.quote(sys.executable)} -m mhacli browse"
        )
    t = Tmux(command, tmux_env(), tmp_path / "status")
    try:
        t.wait_for(r"mha browse sample:tiny-shakespeare\s+18 tokens")
        t.tmux("send-keys", "Down", "Right", "Right")
        screen = t.wait_for(r"L1H2 induction 0\.71")
        assert "[I 0.71]" in screen
        t.tmux("send-keys", "Tab", "Left", "Left")
        assert "7:'at'" in t.wait_for(r"query 15 '·m' → ")
        t.tmux("send-keys", quit_key)
        assert t.exit_status() == 0
        assert "heads" not in t.screen()  # the terminal is restored: the app's screen is gone
    finally:
        t.close()


@needs_tmux
def test_every_help_example_starts_and_quits(tmp_path):
    """`mha browse --help`'s examples (tests/test_help.py runs the other commands' examples with a pipe)."""
    from helpers import examples_in, help_text

    for n, line in enumerate(examples_in(help_text("browse"))):
        t = Tmux(mha_command(line.removeprefix("mha ")), tmux_env(), tmp_path / f"status{n}")
        try:
            t.wait_for(r"mha browse sample:tiny-shakespeare")
            t.tmux("send-keys", "d" if "--diff" in line else "a")
            t.wait_for(r"\|A−B\| max" if "--diff" in line else r"removed")
            t.tmux("send-keys", "q")
            assert t.exit_status() == 0, line
        finally:
            t.close()


def test_the_browse_page_lists_every_key():
    readme = (REPO / "docs" / "commands" / "browse.md").read_text(encoding="utf-8")
    rows = {
        tuple(c.strip().replace("\\|", "|") for c in line.strip("|").split(" | "))
        for line in readme.splitlines()
        if line.startswith("| ")
    }
    for key, what in KEYS:
        assert (key, what) in rows, f"docs/commands/browse.md: no row for {key!r}"


def test_escape_closes_the_filter_and_leaves_the_mode(model):
    app = BrowseApp(Session(model, TEXT))
    seen = []

    async def state(pilot):
        seen.append((app.mode, app.query_one("#filter").display, app.focused.id))

    drive(app, "s", *typed("/in"), "escape", then=state)
    assert seen == [("stats", False, "grid")]
    assert app.session.head_filter is None


def test_started_without_a_head_explain_refuses_and_says_why(model):
    app = BrowseApp(Session(model, TEXT, removed=((0, 3),)))
    screen = drive(app, "e")
    assert "without L0H3" in screen.splitlines()[0]
    assert "error: explain runs the intact model" in screen
    assert app.mode == "kinds"
    kinds = {(s.layer, s.head): s.kind for s in model.run(TEXT, remove=[(0, 3)]).stats()}
    assert app.session.selected_stats().kind == kinds[(0, 0)]


def test_a_model_with_many_heads_fits_80_columns(tmp_path, tokenizer_dir):
    """12 heads a layer do not fit full cells at 80 columns: one character a head (render.grid's compact layout)."""
    from helpers import build_model

    import mhacli

    wide = mhacli.load(build_model(tmp_path / "wide", tokenizer_dir, n_layer=3, n_head=12, n_embd=48))
    app = BrowseApp(Session(wide, "hello world, hello world"))
    seen = []

    async def click(pilot):
        await pilot.click(app.query_one("#grid"), offset=(7 + 11, 4))  # layer 2, head 11
        seen.append((app.session.layer, app.session.head))

    screen = drive(app, "down", "left", then=click)
    assert seen == [(2, 11)]
    grid = [line.split("▕")[0] for line in screen.splitlines()[1:6]]
    assert re.match(r"layer\s+0\s+·\s+10$", grid[1].strip()), grid  # the head ruler of render.grid
    assert re.match(r"\s+2\s+\S{12}\s*$", grid[4]), grid
    assert f"L2H11 {app.session.selected_stats().kind}" in screen
    assert all(len(line) == 80 for line in screen.splitlines())


def test_diff_with_ablate_removes_the_heads_from_b_only(model):
    """As `mha diff M M --ablate 0.3`: A intact, B without L0H3; layer 0 unchanged, L1H2 changed most."""
    import mhacli

    app = BrowseApp(Session(model, TEXT, model_b=mhacli.load("sample"), removed=((0, 3),)))
    screen = drive(app, "d")
    want = mhacli.diff(model, model, TEXT, remove_b=[(0, 3)])
    got = app.session.diff_report()
    assert [(r.layer_a, r.head_a, r.divergence) for r in got.heads] == [
        (r.layer_a, r.head_a, r.divergence) for r in want.heads
    ]
    assert (got.heads[0].layer_a, got.heads[0].head_a) == (1, 2)
    a, b, _ = app.session.diff_maps()
    assert np.array_equal(a, model.run(TEXT).attention(0)[0]) and np.array_equal(b, a)  # L0H0: layer 0 is unchanged
    assert "|A−B| max 0.000" in screen
