"""Terminal views with rich, one module per command, over shared drawing primitives.

The commands: inspect, stats, diff, explain, ablate + prune, census, circuits, info, verify; browse: the panes of the
interactive app. The primitives: heatmap (colour scale, half-block maps, windows), grid (the layer x head
overview), text (lines of segments that fit a width) and common (console, kind styles, titles, legends).
The only package that imports rich; commands import the views from here.
"""

from mhacli.views.terminal.ablate import render_ablate, render_prune
from mhacli.views.terminal.census import render_census
from mhacli.views.terminal.circuits import render_circuits
from mhacli.views.terminal.common import KIND_STYLE, Canvas, Drawing, drawn, make_console
from mhacli.views.terminal.diff import render_diff
from mhacli.views.terminal.explain import PLAIN_WIDTH, explain_lines, explain_text, explain_view, render_explain
from mhacli.views.terminal.info import info_table, render_info
from mhacli.views.terminal.inspect import render_inspect
from mhacli.views.terminal.stats import render_stats
from mhacli.views.terminal.verify import render_verify, verify_view

__all__ = [
    "Canvas", "Drawing", "KIND_STYLE", "PLAIN_WIDTH", "drawn", "explain_lines", "explain_text", "explain_view",
    "info_table", "make_console", "render_ablate", "render_census", "render_circuits", "render_diff",
    "render_explain", "render_info", "render_inspect", "render_prune", "render_stats", "render_verify", "verify_view",
]  # fmt: skip
