"""`mha browse`: the Textual application.

Four panes over one Session (mhacli.browse.state): the layer x head grid, the selected head's map (or, by mode,
A/B/|A−B|, the map without an ablated head, explain's steps, the head's statistics), the token strip with the query
cursor and its top keys, and a status line. Drawing is mhacli.views.terminal.browse's (lines of rich Text); this module
only places it and maps keys to actions.

Imported only by `mha browse` (Textual is the `browse` extra).
"""

from __future__ import annotations

import numpy as np
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Input, ProgressBar, Static
from textual.worker import Worker, get_current_worker

from mhacli.browse.state import Ablated, Session
from mhacli.errors import Cancelled, MhaError
from mhacli.views.terminal import browse as views
from mhacli.views.terminal.grid import FULL_CELL, full_width
from mhacli.views.terminal.heatmap import MapWindow

MIN_SIZE = (60, 16)  # the smallest terminal the panes fit (80 x 24 is the design size)
GRID_SAYS = {
    "kinds": "kind score, 0–1",
    "diff": "divergence of B from A (js, bits)",
    "ablate": "divergence from the intact model (js, bits)",
}


class AblationProgress(Message):
    """From the ablation worker: `done` of `total` heads removed alone so far."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__()
        self.done, self.total = done, total


class AblationShown(Message):
    """From the ablation worker: `target` removed (the report, the run without it, its loss change), for `run`."""

    def __init__(self, target: tuple[int, int], run, value: Ablated) -> None:
        super().__init__()
        self.target, self.run, self.value = target, run, value


class AblationEnded(Message):
    """From the ablation worker: every head's loss change alone for `run` (None: not measured; `stopped` says why)."""

    def __init__(
        self, target: tuple[int, int], run, value: dict[tuple[int, int], float] | None, stopped: str = ""
    ) -> None:
        super().__init__()
        self.target, self.run, self.value, self.stopped = target, run, value, stopped


class DiffEnded(Message):
    """From the diff worker: the report and runs for `run`, or the error that stopped it."""

    def __init__(self, run, value, error: str = "", cancelled: bool = False) -> None:
        super().__init__()
        self.run, self.value, self.error, self.cancelled = run, value, error, cancelled


class TextRan(Message):
    """From the text worker: the run of `text`, or why there is none (`error`, or cancelled)."""

    def __init__(self, text: str, run, error: str = "", cancelled: bool = False) -> None:
        super().__init__()
        self.text, self.run, self.error, self.cancelled = text, run, error, cancelled


class Pane(Widget):
    """A pane drawn from the session as lines; its first line is its name (reversed while it has the focus)."""

    can_focus = True
    label = ""

    def header(self, extra: str = ""):  # -> rich Text
        return views.pane_header(self.label, extra, self.has_focus, self.size.width)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    @property
    def browser(self) -> BrowseApp:
        return self.app  # type: ignore[return-value]


class GridPane(Pane):
    label = "heads"
    BINDINGS = [
        Binding("up", "move(-1, 0)", show=False), Binding("down", "move(1, 0)", show=False),
        Binding("left", "move(0, -1)", show=False), Binding("right", "move(0, 1)", show=False),
    ]  # fmt: skip

    def action_move(self, d_layer: int, d_head: int) -> None:
        self.browser.session.move(d_layer, d_head)
        self.browser.selection_changed()

    def render(self):  # -> rich Text
        app = self.browser
        s = app.session
        f = s.head_filter
        extra = f"filter {f.text}: {len(s.shown())} of {s.n_layer * s.n_head}" if f else f"{app.mode}"
        cells = app.grid_cells()
        says = GRID_SAYS.get(app.mode, GRID_SAYS["kinds"])
        lines = views.grid_view(cells, s.n_layer, s.n_head, (s.layer, s.head), self.size.width, app.color, says)
        return views.joined([self.header(extra), *lines])

    def on_click(self, event) -> None:
        s = self.browser.session
        full = full_width(s.n_head, s.n_layer) + 1 <= self.size.width
        step = FULL_CELL + 2 if full else 1
        layer, head = event.y - 2, (event.x - full_width(0, s.n_layer)) // step
        if 0 <= layer < s.n_layer and 0 <= head < s.n_head and (layer, head) in s.shown():
            s.layer, s.head = layer, head
            self.browser.selection_changed()


class MapPane(Pane):
    label = "map"
    BINDINGS = [
        Binding("up", "scroll_rows(-1)", show=False), Binding("down", "scroll_rows(1)", show=False),
        Binding("pageup", "scroll_rows(-10)", show=False), Binding("pagedown", "scroll_rows(10)", show=False),
        Binding("left", "scroll_keys(-1)", show=False), Binding("right", "scroll_keys(1)", show=False),
    ]  # fmt: skip

    start = 0  # first query row shown (or first line of a text view)
    keys: tuple[int, int] | None = None  # key columns shown; None: the keys up to the last row shown
    window: MapWindow | None = None  # the last map window drawn

    def action_scroll_rows(self, step: int) -> None:
        rows = 2 if self.browser.color and self.browser.mode in ("kinds", "diff", "ablate") else 1
        self.start = max(0, min(self.start + step * rows, self._last_row()))
        self.refresh()

    def action_scroll_keys(self, step: int) -> None:
        win = self.window
        if win is None or self.browser.mode not in ("kinds", "diff", "ablate"):
            return
        shown = [k for k in win.keys[1 if win.pinned else 0 :]]
        lo = max(0, min(shown[0] + step * max(1, len(shown) // 4), win.n_seq - len(shown)))
        self.keys = (lo, lo + len(shown) + (1 if win.pinned and lo == 0 else 0))
        self.refresh()

    def _last_row(self) -> int:
        if self.browser.mode in ("kinds", "diff", "ablate"):
            return max(0, self.browser.session.run.n_seq - 1)
        return max(0, len(self.browser.text_lines(self.size.width)) - 1)

    def follow(self, query: int) -> None:
        """Scroll so that the query row is on screen."""
        win = self.window
        if win is not None and not win.lo <= query < win.hi:
            self.start = max(0, query - (win.hi - win.lo) // 2)

    def on_resize(self, event) -> None:
        """The terminal changed size (the map pane follows it): lay the panes out again."""
        self.browser.layout_panes()

    def on_mouse_scroll_down(self, event) -> None:
        self.action_scroll_rows(3)

    def on_mouse_scroll_up(self, event) -> None:
        self.action_scroll_rows(-3)

    def render(self):  # -> rich Text
        app = self.browser
        width, height = self.size.width, self.size.height
        try:
            body, note = app.map_lines(self, width, height - 1)
        except MhaError as exc:
            body, note = [views.message_line(str(exc), width, True)], ""
        return views.joined([self.header(note), *body[: height - 1]])


class TokenPane(Pane):
    label = "tokens"
    BINDINGS = [
        Binding("left", "query(-1)", show=False), Binding("right", "query(1)", show=False),
        Binding("home", "query_to(0)", show=False), Binding("end", "query_to(-1)", show=False),
    ]  # fmt: skip

    def action_query(self, step: int) -> None:
        self.browser.move_query(step)

    def action_query_to(self, to: int) -> None:
        s = self.browser.session
        self.browser.move_query(to=to % s.run.n_seq)

    def render(self):  # -> rich Text
        app = self.browser
        s = app.session
        width = self.size.width
        strip = views.token_strip(s.tokens, s.query, width, max(1, self.size.height - 2))
        top = views.top_keys_line(s.tokens, s.query, s.top_keys(), app.color, width)
        name = f"L{s.layer}H{s.head}, query {s.query} of {s.run.n_seq} ([ ] move it)"
        return views.joined([self.header(name), *strip, top])


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape", "close", show=False), Binding("question_mark", "close", show=False)]
    DEFAULT_CSS = (
        "HelpScreen { align: center middle; } "
        "#help { width: auto; max-width: 100%; height: auto; background: $panel; padding: 0 1; }"
    )

    def compose(self) -> ComposeResult:
        yield Static(views.joined(views.help_lines()), id="help")

    def action_close(self) -> None:
        self.dismiss(None)


class TextScreen(ModalScreen[str | None]):
    """`t`: the text in an input line; Enter runs it, Esc keeps the old one."""

    BINDINGS = [Binding("escape", "close", show=False)]
    DEFAULT_CSS = (
        "TextScreen { align: center middle; } #edit { width: 90%; height: auto; background: $panel; padding: 0 1; }"
    )

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(id="edit"):
            yield Static("edit the text, Enter runs it, Esc keeps the old one")
            yield Input(value=self.text, id="text")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_close(self) -> None:
        self.dismiss(None)


class BrowseApp(App):
    """`mha browse`: every head of a model on a text, under the arrow keys."""

    CSS = """
    #top { height: 1; }
    #body { height: 1fr; }
    #grid { width: 40; border-right: vkey $secondary; }
    #map { width: 1fr; padding-left: 1; }
    #tokens { height: 4; border-top: hkey $secondary; }
    #status { height: 1; }
    #progress { height: 1; display: none; }
    #progress Bar { width: 1fr; }
    #filter { dock: bottom; display: none; height: 1; border: none; padding: 0; }
    """
    BINDINGS = [
        Binding("q", "quit", "quit"), Binding("ctrl+c", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help"), Binding("slash", "filter", "filter"),
        Binding("d", "mode('diff')", "diff"), Binding("e", "mode('explain')", "explain"),
        Binding("s", "mode('stats')", "stats"), Binding("a", "mode('ablate')", "ablate"),
        Binding("t", "edit_text", "text"), Binding("escape", "mode('kinds')", show=False),
        Binding("left_square_bracket", "query(-1)", show=False),
        Binding("right_square_bracket", "query(1)", show=False),
        Binding("tab", "cycle(1)", show=False, priority=True),
        Binding("shift+tab", "cycle(-1)", show=False, priority=True),
    ]  # fmt: skip
    FOCUS_ORDER = ("#grid", "#tokens", "#map")

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session
        self.mode = "kinds"
        self.ablated: tuple[int, int] | None = None
        self.message = ""
        self.color = not self.no_color
        self.ablating: Worker | None = None  # the ablation running in a thread (`a`), None when none runs
        self.rerunning: Worker | None = None  # the new text being run in a thread (`t`), None when none runs
        self.diffing: Worker | None = None  # the diff being computed in a thread (`d`), None when none runs

    def compose(self) -> ComposeResult:
        yield Static(id="top")
        with Horizontal(id="body"):
            yield GridPane(id="grid")
            yield MapPane(id="map")
        yield TokenPane(id="tokens")
        yield ProgressBar(id="progress", show_eta=False)
        yield Static(id="status")
        yield Input(placeholder="kind (induction, prev, sink...) or statistic>x (induction>0.5); Enter", id="filter")

    def on_mount(self) -> None:
        self.title = "mha browse"
        self.query_one(GridPane).focus()
        self.layout_panes()

    def layout_panes(self) -> None:
        """The grid as wide as its full cells where they take at most 55% of the width, else narrower (compact)."""
        s = self.session
        width = self.size.width
        grid_w = full_width(s.n_head, s.n_layer) + 2
        if grid_w > width * 11 // 20:
            grid_w = max(full_width(0, s.n_layer) + s.n_head + 2, min(width // 3, 34))
        self.query_one(GridPane).styles.width = min(max(grid_w, 24), width * 11 // 20)
        self.redraw()

    # -- drawing --------------------------------------------------------------------------------------------------
    def redraw(self) -> None:
        s = self.session
        w, h = self.size
        small = w < MIN_SIZE[0] or h < MIN_SIZE[1]
        if small:
            top = views.message_line(
                f"terminal too small: {w}×{h}, mha browse needs at least {MIN_SIZE[0]}×{MIN_SIZE[1]}", w, True
            )
        else:
            source_b = s.model_b.source if s.model_b is not None else None
            top = views.top_line(
                s.model.source, s.run.n_seq, self.mode, max(1, w), source_b=source_b, removed=s.removed
            )
        self.query_one("#top", Static).update(top)
        self.query_one("#status", Static).update(
            views.message_line(self.message, max(1, w), self.message.startswith("error:"))
        )
        for pane in self.query(Pane):
            pane.refresh()

    def say(self, message: str) -> None:
        """The status line: what the last key did (an error starts with `error:` and shows in red)."""
        self.message = message
        self.redraw()

    def grid_cells(self):
        s = self.session
        shown = set(s.shown())
        try:
            if self.mode == "diff":
                return views.divergence_cells(s.diff_report(), shown)
            if self.mode == "ablate" and self.ablated is not None:
                return views.divergence_cells(s.ablation(self.ablated)[0], shown)
        except MhaError:
            pass
        return views.kind_cells(s.stats(), shown)

    def map_lines(self, pane: MapPane, width: int, height: int) -> tuple[list, str]:
        """The map pane's lines for the mode, and the note beside its name."""
        s = self.session
        if self.mode in ("explain", "stats"):
            lines = self.text_lines(width)
            start = min(pane.start, max(0, len(lines) - 1))
            return lines[start : start + height], f"{self.mode} (↑ ↓ scroll)"
        stats = s.selected_stats()
        if self.mode == "kinds":
            lines, pane.window = views.map_panel(
                s.head_map(),
                views.head_title(stats),
                s.tokens,
                s.query,
                pane.start,
                pane.keys,
                width,
                height,
                self.color,
            )
            return lines, views.map_window_note(pane.window).plain
        if self.mode == "diff":
            a, b, (lb, hb) = s.diff_maps()
            gap = np.abs(a - b)
            maps = [(a, f"A L{s.layer}H{s.head}"), (b, f"B L{lb}H{hb}"), (gap, "|A−B|")]
            return self._panels(pane, maps, width, height), f"|A−B| max {float(gap.max()):.3f}"
        if self.ablated is None:
            raise ValueError("ablate mode shows a removed head: none is chosen")
        report, run, delta = s.ablation(self.ablated)
        name = f"L{self.ablated[0]}H{self.ablated[1]}"
        maps = [(s.head_map(), "with it"), (run.attention(s.layer)[s.head], f"without {name}")]
        alone = s.alone()
        note = "" if alone is None else f"; L{s.layer}H{s.head} removed alone: loss {alone:+.3f}"
        return self._panels(pane, maps, width, height), f"{name} removed{note}"

    def ablation_note(self) -> str:
        """What ablate mode shows, with the loss change (`mha ablate`'s delta) where the model has an output head."""
        if self.ablated is None:
            raise ValueError("ablate mode shows a removed head: none is chosen")
        name = f"L{self.ablated[0]}H{self.ablated[1]}"
        delta = self.session.ablation(self.ablated)[2]
        loss = "" if delta is None else f", loss {delta:+.3f} nats/token"
        return f"{name} removed{loss}; grid: each head's divergence from the intact model"

    def _panels(self, pane: MapPane, maps, width: int, height: int) -> list:
        s = self.session
        w = (width - len(maps) + 1) // len(maps)
        panels = []
        for attention, title in maps:
            lines, pane.window = views.map_panel(
                attention,
                views.pane_title(title),
                s.tokens,
                s.query,
                pane.start,
                pane.keys,
                w,
                height,
                self.color,
                labels=False,
            )
            panels.append(lines)
        return views.side_panels(panels, width)

    def text_lines(self, width: int) -> list:
        s = self.session
        if self.mode == "explain":
            return views.explain_view(s.explanation(), s.tokens, width)
        return views.stats_lines(s.selected_stats(), s.run.n_seq)

    # -- actions --------------------------------------------------------------------------------------------------
    def selection_changed(self) -> None:
        if self.mode in ("explain", "stats"):
            self.query_one(MapPane).start = 0
        s = self.session
        selected = f"L{s.layer}H{s.head} {s.selected_stats().kind}"
        self.say(f"{self.ablation_note()}; {selected}" if self.mode == "ablate" else selected)

    def move_query(self, step: int = 0, to: int | None = None) -> None:
        s = self.session
        s.move_query(step, to)
        pane = self.query_one(MapPane)
        if self.mode in ("explain",):
            pane.start = 0
        pane.follow(s.query)
        self.redraw()

    def action_query(self, step: int) -> None:
        self.move_query(step)

    def action_mode(self, mode: str) -> None:
        s = self.session
        box = self.query_one("#filter", Input)
        if mode == "kinds" and box.display:  # Esc in the filter: close it, nothing else
            box.display = False
            self.query_one(GridPane).focus()
            return
        if mode == "kinds" and self.ablating is not None:  # Esc while ablating: stop it, nothing else
            self.ablating.cancel()
            return
        if mode == "kinds" and self.diffing is not None:  # Esc while diffing: drop it when it ends
            self.diffing.cancel()
            self.say("cancelling the diff")
            return
        if mode == "kinds" and self.rerunning is not None:  # Esc while a new text runs: keep the old one
            self.rerunning.cancel()
            self.say("cancelling the new text: the old one is kept")
            return
        if mode == self.mode:  # the mode's key again: back to the kinds view
            mode = "kinds"
        try:
            if mode == "diff" and self.start_diff():
                return  # the mode changes when the worker is done
            elif mode == "explain":
                s.explanation()
            elif mode == "ablate" and self.start_ablation((s.layer, s.head)):
                return  # the mode changes when the worker is done
        except MhaError as exc:
            self.say(f"error: {exc}")
            return
        self.enter_mode(mode)

    def enter_mode(self, mode: str) -> None:
        s = self.session
        self.mode = mode
        pane = self.query_one(MapPane)
        pane.start, pane.keys = (
            (0, None) if mode in ("explain", "stats") or self.mode == "kinds" else (pane.start, pane.keys)
        )
        pane.follow(s.query)
        what = {"ablate": self.ablation_note() if mode == "ablate" else "", "kinds": ""}
        self.say(what.get(mode, f"{mode}: L{s.layer}H{s.head}, query {s.query}"))

    # -- the diff, in a worker thread ------------------------------------------------------------------------------
    def start_diff(self) -> bool:
        """`d`: computed already, show it now (False); else start the worker (True). UsageError without --diff."""
        s = self.session
        if s.has_diff():
            return False
        if s.model_b is None:
            s.diff_report()  # raises the error that says how to start with --diff
        if self.diffing is None:
            bar = self.query_one("#progress", ProgressBar)
            bar.update(total=None, progress=0)
            bar.display = True
            self.diffing = self.diff_in_background()
        self.say("comparing A and B (Esc cancels)")
        return True

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False)
    def diff_in_background(self) -> None:
        """The diff report and both runs (Session.compute_diff), off the app's thread; shown by on_diff_ended."""
        worker = get_current_worker()
        run = self.session.run
        try:
            value = self.session.compute_diff()
        except MhaError as exc:
            self.post_message(DiffEnded(run, None, error=str(exc)))
            return
        self.post_message(DiffEnded(run, value, cancelled=worker.is_cancelled))

    def on_diff_ended(self, message: DiffEnded) -> None:
        self.diffing = None
        self.query_one("#progress", ProgressBar).display = self.busy()
        if message.error:
            self.say(f"error: {message.error}")
        elif message.cancelled:
            self.say("diff cancelled")
        elif not self.session.keep_diff(message.run, message.value):
            self.say("diff discarded: the text changed while it ran")
        else:
            self.enter_mode("diff")

    def busy(self) -> bool:
        """A worker is running (its progress bar stays shown)."""
        return any(w is not None for w in (self.ablating, self.rerunning, self.diffing))

    # -- the ablation, in a worker thread --------------------------------------------------------------------------
    def start_ablation(self, target: tuple[int, int]) -> bool:
        """`a`: remove `target`. Computed already: show it now (False). Else start the worker (True)."""
        if self.ablating is not None:
            self.say("the ablation is still running: Esc cancels it")
            return True
        self.ablated = target
        if ("ablate", target) in self.session._cache:
            return False
        n = self.session.n_layer * self.session.n_head
        each = not self.session.removed and self.session.alone(target) is None  # every head alone, first
        bar = self.query_one("#progress", ProgressBar)
        bar.update(total=n if each else None, progress=0)
        bar.display = True
        first = f"each of {n} heads removed alone, then " if each else ""
        self.say(f"ablating: {first}L{target[0]}H{target[1]} (Esc cancels)")
        self.ablating = self.ablate_in_background(target)
        return True

    @work(thread=True, exclusive=True, group="ablate", exit_on_error=False)
    def ablate_in_background(self, target: tuple[int, int]) -> None:
        """`target` removed, shown as soon as it is measured; then every head removed alone, off the app's thread.

        Session.compute_removal first (AblationShown: the app shows it), then Session.compute_alone (AblationEnded
        with it). Progress goes to the app as messages (post_message is thread-safe); a cancelled worker stops
        between two heads (Run.ablate's progress callback returns False) and its partial work is discarded; what
        was shown stays.
        """
        worker = get_current_worker()
        session = self.session
        run = session.run

        def progress(done: int, total: int) -> bool:
            if worker.is_cancelled:
                return False
            self.post_message(AblationProgress(done, total))
            return True

        try:
            value = session.compute_removal(target)
            if worker.is_cancelled:
                self.post_message(AblationEnded(target, run, None, "ablation cancelled"))
                return
            self.post_message(AblationShown(target, run, value))
            effects = session.compute_alone(progress) if session.needs_alone() else None
        except Cancelled as exc:
            self.post_message(
                AblationEnded(target, run, None, f"every head alone: cancelled after {exc.done} of {exc.total} heads")
            )
            return
        except MhaError as exc:
            self.post_message(AblationEnded(target, run, None, f"error: {exc}"))
            return
        self.post_message(AblationEnded(target, run, effects))

    def on_ablation_progress(self, message: AblationProgress) -> None:
        if self.ablating is None:
            return
        self.query_one("#progress", ProgressBar).update(total=message.total, progress=message.done)
        done = f"{message.done} of {message.total} heads removed alone (Esc cancels)"
        self.say(f"ablating: {done}" + (f"; {self.ablation_note()}" if self.mode == "ablate" else ""))

    def on_ablation_shown(self, message: AblationShown) -> None:
        """The removed head's result, before every head alone is measured: shown now."""
        if not self.session.keep_ablation(message.target, message.run, message.value):
            return  # the text changed while it ran; AblationEnded says so
        self.ablated = message.target
        self.enter_mode("ablate")
        if self.ablating is not None and self.session.needs_alone():
            n = self.session.n_layer * self.session.n_head
            self.say(f"ablating: 0 of {n} heads removed alone (Esc cancels); {self.ablation_note()}")

    def on_ablation_ended(self, message: AblationEnded) -> None:
        """Every head alone measured (`value`: their effects), or stopped (`stopped` says why; what was shown stays)."""
        self.ablating = None
        self.query_one("#progress", ProgressBar).display = self.busy()
        if message.stopped:
            self.say(message.stopped)
        elif not self.session.keep_alone(message.run, message.value):
            self.say("ablation discarded: the text changed while it ran")
        elif self.mode == "ablate":
            self.selection_changed()
        else:
            self.redraw()

    def action_cycle(self, step: int) -> None:
        """Tab / Shift+Tab: grid -> tokens -> map (an open filter or editor keeps the focus)."""
        if not isinstance(self.screen.focused, Pane):
            return
        names = [f"#{self.screen.focused.id}"]
        order = self.FOCUS_ORDER
        at = order.index(names[0]) if names[0] in order else 0
        self.query_one(order[(at + step) % len(order)]).focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""  # a fresh filter each time: `/` Enter clears the one applied (the grid's header names it)
        box.display = True
        box.focus()
        self.message = (
            "filter: a kind (induction, prev, sink...) or statistic>x (induction>0.5); Enter applies, Esc closes"
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter":
            return
        event.input.display = False
        try:
            n = self.session.set_filter(event.value, views.KINDS)
        except MhaError as exc:
            self.say(f"error: {exc}")
            return
        self.query_one(GridPane).focus()
        f = self.session.head_filter
        self.say(f"filter {f.text}: {n} head{'s' if n != 1 else ''}" if f else "filter cleared: every head")

    def action_edit_text(self) -> None:
        def done(text: str | None) -> None:
            if text is None or text == self.session.text or self.rerunning is not None:
                return
            for worker in (self.ablating, self.diffing):
                if worker is not None:
                    worker.cancel()
            bar = self.query_one("#progress", ProgressBar)
            bar.update(total=None, progress=0)
            bar.display = True
            self.say("running the new text (Esc keeps the old one)")
            self.rerunning = self.run_text_in_background(text)

        self.push_screen(TextScreen(self.session.text), done)

    @work(thread=True, exclusive=True, group="text", exit_on_error=False)
    def run_text_in_background(self, text: str) -> None:
        """The new text's run and statistics (Session.prepare), off the app's thread; shown by on_text_ran."""
        worker = get_current_worker()
        try:
            run = self.session.prepare(text)
        except MhaError as exc:
            self.post_message(TextRan(text, None, error=str(exc)))
            return
        self.post_message(TextRan(text, run, cancelled=worker.is_cancelled))

    def on_text_ran(self, message: TextRan) -> None:
        self.rerunning = None
        self.query_one("#progress", ProgressBar).display = self.busy()
        if message.error:
            self.say(f"error: {message.error} (the old text is kept)")
            return
        if message.cancelled:
            self.say("new text cancelled: the old one is kept")
            return
        self.session.adopt(message.text, message.run)
        if self.mode in ("diff", "ablate"):
            self.mode = "kinds"  # their results were for the old text, and are long to redo: on their key again
        pane = self.query_one(MapPane)
        pane.start, pane.keys = 0, None
        pane.follow(self.session.query)
        self.say(f"ran the new text: {self.session.run.n_seq} tokens")
