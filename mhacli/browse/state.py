"""What `mha browse` shows, without Textual.

The loaded model(s), the run on the current text, the selected head and query, the filter and the modes' results. Every
number comes from the Python API (mhacli.api), the same objects `mha stats`, `mha explain`, `mha diff` and `mha ablate`
report; nothing here draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mhacli.api import HeadStats, Model, Run, diff
from mhacli.errors import Cancelled, MhaError, TextError, UsageError

TOP_K = 5  # keys listed for the query token
FILTER_OPS = (">=", "<=", ">", "<")
MODES = ("kinds", "diff", "explain", "stats", "ablate")
Progress = Callable[[int, int], "bool | None"]  # Run.ablate's: (heads done, heads in all) -> False to stop
# compute_ablation: the divergence report with the head removed, the run without it, each head's loss change alone
Ablated = tuple[object, Run, "dict[tuple[int, int], float] | None"]


@dataclass(frozen=True)
class HeadFilter:
    """`/` in the grid.

    Heads of one kind (`induction`, `prev` for previous-token), or a statistic against a threshold (`induction>0.5`,
    `entropy<1`; the statistic as `mha stats -f json` has it).
    """

    text: str
    kind: str | None = None
    stat: str | None = None
    op: str = ">"
    threshold: float = 0.0

    def matches(self, s) -> bool:  # s: HeadStats
        if self.kind is not None:
            return s.kind == self.kind
        v = s.values.get(self.stat)
        if v is None or v != v:
            return False
        return {">": v > self.threshold, "<": v < self.threshold, ">=": v >= self.threshold, "<=": v <= self.threshold}[
            self.op
        ]


def parse_filter(text: str, kinds: tuple[str, ...], stats: tuple[str, ...]) -> HeadFilter | None:
    """A filter from what was typed after `/`; None for an empty one (show every head).

    UsageError names the kinds and statistics when the text is neither.
    """
    text = text.strip()
    if not text:
        return None
    for op in FILTER_OPS:
        name, sep, value = text.partition(op)
        if sep:
            stat = _one_name(name.strip().replace("-", "_"), stats, "statistic")
            try:
                threshold = float(value)
            except ValueError:
                raise UsageError(f"{value.strip()!r} is not a number: write e.g. induction>0.5") from None
            return HeadFilter(text, stat=stat, op=op, threshold=threshold)
    return HeadFilter(text, kind=_one_name(text.lower(), kinds, "kind"))


def _one_name(name: str, names: tuple[str, ...], what: str) -> str:
    """`name`, or the one of `names` it starts (prev -> previous-token)."""
    if name in names:
        return name
    found = [n for n in names if n.startswith(name)] if name else []
    if len(found) == 1:
        return found[0]
    raise UsageError(f"{name!r} is not a {what}: one of {', '.join(names)}")


@dataclass
class Session:
    """The browser's state.

    `memory_limit`: bytes a run may need (Model.memory_needed); a text that needs more is refused with a message, as
    the commands' --max-memory refuses it.
    """

    model: Model
    text: str
    model_b: Model | None = None
    removed: tuple[tuple[int, int], ...] = ()
    memory_limit: int | None = None
    truncate: bool = False
    layer: int = 0
    head: int = 0
    query: int = 0
    head_filter: HeadFilter | None = None
    run: Run = field(init=False)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.run = self._make_run(self.text)
        self.query = self.run.n_seq - 1

    @property
    def n_layer(self) -> int:
        return self.model.config.n_layer

    @property
    def n_head(self) -> int:
        return self.model.config.n_head

    @property
    def tokens(self) -> list[str]:
        return self.run.tokens

    def _make_run(self, text: str) -> Run:
        run = self.model.run(text, truncate=self.truncate, remove=self.removed)
        if self.memory_limit is not None:
            needed = self.model.memory_needed(run.n_seq)
            if needed > self.memory_limit:
                raise TextError(
                    f"this text ({run.n_seq} tokens) needs about {needed / 2**20:.0f} MiB with every layer's maps, "
                    f"more than the {self.memory_limit / 2**20:.0f} MiB allowed: use a shorter text"
                )
        run.stats()  # the grid needs every head's statistics: computed now, so errors surface here
        return run

    def rerun(self, text: str) -> None:
        """The same model(s) on a new text (`t`); the selection stays, the query moves to the last token.

        On an error nothing changes and the error is raised.
        """
        self.adopt(text, self.prepare(text))

    def prepare(self, text: str) -> Run:
        """The run of a new text with every head's statistics, without changing the session (a worker calls this)."""
        return self._make_run(text)

    def adopt(self, text: str, run: Run) -> None:
        """Show `run` (prepare's, of `text`) from now on."""
        self.text, self.run, self._cache = text, run, {}
        self.query = run.n_seq - 1

    # -- what is selected ------------------------------------------------------------------------------------------
    def stats(self) -> dict[tuple[int, int], HeadStats]:
        """(layer, head) -> HeadStats, as `mha stats` computes them (with --ablate: of the ablated run)."""
        return {(s.layer, s.head): s for s in self.run.stats()}

    def selected_stats(self) -> HeadStats:
        return self.stats()[(self.layer, self.head)]

    def shown(self) -> list[tuple[int, int]]:
        """The heads the filter lets through, layer-major."""
        f = self.head_filter
        return [key for key, s in self.stats().items() if f is None or f.matches(s)]

    def set_filter(self, text: str, kinds: tuple[str, ...]) -> int:
        """Apply `/TEXT`; the selection moves to the first head shown when it is filtered out.

        Returns the number of heads shown.
        """
        stat_names = tuple(next(iter(self.stats().values())).values)
        self.head_filter = parse_filter(text, kinds, stat_names)
        shown = self.shown()
        if shown and (self.layer, self.head) not in shown:
            self.layer, self.head = shown[0]
        return len(shown)

    def move(self, d_layer: int, d_head: int) -> None:
        """Arrow keys in the grid: the next shown head in that direction (wrapping within the row or column)."""
        shown = set(self.shown())
        if not shown:
            return
        layer, head = self.layer, self.head
        for _ in range(self.n_layer * self.n_head):
            layer = (layer + d_layer) % self.n_layer
            head = (head + d_head) % self.n_head
            if (layer, head) in shown:
                self.layer, self.head = layer, head
                return

    def move_query(self, step: int | None = None, to: int | None = None) -> None:
        n = self.run.n_seq
        self.query = min(max(0, self.query + (step or 0) if to is None else to), n - 1)

    def head_map(self, layer: int | None = None, head: int | None = None) -> np.ndarray:
        """[q_pos, k_pos] float32: the selected head's attention (Run.attention: one layer, computed once)."""
        layer = self.layer if layer is None else layer
        return self.run.attention(layer)[self.head if head is None else head]

    def top_keys(self, k: int = TOP_K) -> list[tuple[int, float]]:
        """The query's k strongest keys in the selected head, (key, weight), strongest first (ties: earlier key)."""
        row = self.head_map()[self.query, : self.query + 1]
        order = np.argsort(-row, kind="stable")[:k]
        return [(int(j), float(row[j])) for j in order]

    # -- modes ----------------------------------------------------------------------------------------------------
    def explanation(self):  # -> Explanation
        """`mha explain` for the selected head and query (the intact model: refused with --ablate)."""
        key = ("explain", self.layer, self.head, self.query)
        if key not in self._cache:
            self._cache[key] = self.run.explain(self.layer, self.head, self.query)
        return self._cache[key]

    def diff_report(self):  # -> DiffReport
        """`mha diff` of this model (A) against --diff MODEL_B (B) on the text.

        With --ablate, as `mha diff --ablate`: the heads are removed from B only.
        """
        if "diff" not in self._cache:
            self.keep_diff(self.run, self.compute_diff())
        return self._cache["diff"][0]

    def has_diff(self) -> bool:
        return "diff" in self._cache

    def compute_diff(self) -> tuple[object, Run, Run]:
        """diff_report's report and the runs of A and B, nothing kept (a worker thread calls this)."""
        if self.model_b is None:
            raise UsageError("no second model: start mha browse with --diff MODEL_B to compare")
        run = self.run
        report = diff(self.model, self.model_b, self.text, remove_b=self.removed, truncate=self.truncate)
        run_a = self.model.run(ids=run.ids) if self.removed else run
        run_b = self.model_b.run(ids=run.ids, remove=self.removed)
        return report, run_a, run_b

    def keep_diff(self, run: Run, value: tuple[object, Run, Run]) -> bool:
        """Keep what compute_diff returned for `run`; False (nothing kept) when the text has changed since."""
        if run is not self.run:
            return False
        self._cache["diff"] = value
        return True

    def diff_maps(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """The selected head's map in A, its counterpart's in B (the same head, or the matched one), and which."""
        report = self.diff_report()
        _, run_a, run_b = self._cache["diff"]
        row = next((r for r in report.heads if (r.layer_a, r.head_a) == (self.layer, self.head)), None)
        if row is None:
            raise UsageError(f"L{self.layer}H{self.head} has no partner in MODEL_B (unmatched)")
        return (
            run_a.attention(self.layer)[self.head],
            run_b.attention(row.layer_b)[row.head_b],
            (row.layer_b, row.head_b),
        )

    def ablation(self, target: tuple[int, int]) -> tuple[object, Run, float | None]:
        """Head `target` removed (with the --ablate heads), computed now if `compute_ablation` has not run for it.

        See compute_ablation; the result is kept for this text.
        """
        key = ("ablate", target)
        if key not in self._cache:
            self.keep_ablation(target, self.run, self.compute_ablation(target))
        return self._cache[key]

    def compute_ablation(self, target: tuple[int, int], progress: Progress | None = None) -> Ablated:
        """Head `target` removed, and every head removed alone; nothing kept (a worker thread calls this).

        Every head's divergence from the intact model with `target` (and the --ablate heads) removed (mhacli.diff,
        as `mha diff M M --ablate L.H`), the run without it, and each head's loss change in nats/token when removed
        alone (Run.ablate over every head, `mha ablate`'s numbers; None where the model has no output head or heads
        are removed already; measured once per text). progress(done, total) is Run.ablate's, per head: returning False
        raises Cancelled.
        """
        report, without, mine = self.compute_removal(target)
        every = self.compute_alone(progress)
        return report, without, mine if every is None else every

    def compute_removal(self, target: tuple[int, int]) -> Ablated:
        """compute_ablation's first part, what `a` shows at once: `target` removed, its own loss change alone.

        The effects hold `target`'s alone (Run.ablate of that head), or every head's where measured already.
        """
        run = self.run
        effects: dict[tuple[int, int], float] | None = self._cache.get("alone")  # measured once per text
        if effects is None and not self.removed:
            try:
                effects = {target: run.ablate([target]).heads[0].delta}
            except MhaError:
                effects = None
        removed = tuple(sorted(set(self.removed) | {target}))
        report = diff(self.model, self.model, self.text, remove_b=removed, truncate=self.truncate)
        without = self.model.run(ids=run.ids, remove=removed)
        return report, without, effects

    def compute_alone(self, progress: Progress | None = None) -> dict[tuple[int, int], float] | None:
        """compute_ablation's second part: every head's loss change removed alone (None with --ablate heads).

        Measured once per text (the cached effects when there are); progress as in compute_ablation.
        """
        effects = self._cache.get("alone")
        if effects is not None or self.removed:
            return effects
        try:
            result = self.run.ablate(progress=progress)
        except Cancelled:
            raise
        except MhaError:
            return None
        return {(e.layer, e.head): e.delta for e in result.heads}

    def needs_alone(self) -> bool:
        """Whether compute_alone has work to do (no --ablate heads, not measured for this text yet)."""
        return not self.removed and "alone" not in self._cache

    def keep_ablation(self, target: tuple[int, int], run: Run, value: Ablated) -> bool:
        """Keep what compute_ablation returned for `run`; False (nothing kept) when the text has changed since."""
        if run is not self.run:
            return False
        report, without, effects = value
        self._cache[("ablate", target)] = (report, without, None if effects is None else effects[target])
        if effects is not None and len(effects) == self.n_layer * self.n_head:  # every head: measured for this text
            self._cache["alone"] = effects
        return True

    def keep_alone(self, run: Run, effects: dict[tuple[int, int], float] | None) -> bool:
        """Keep compute_alone's effects for `run`; False when the text has changed since."""
        if run is not self.run:
            return False
        if effects is not None:
            self._cache["alone"] = effects
        return True

    def alone(self, head: tuple[int, int] | None = None) -> float | None:
        """The loss change with `head` (default the selected one) removed alone, once an ablation has run; else None."""
        effects = self._cache.get("alone")
        return None if effects is None else effects.get(head or (self.layer, self.head))
