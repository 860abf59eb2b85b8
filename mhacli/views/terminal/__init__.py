"""Terminal views with rich, one module per command, over shared drawing primitives.

The commands: inspect, stats, diff, explain, ablate + prune, census, circuits, info, verify; browse: the panes of the
interactive app. The primitives: heatmap (colour scale, half-block maps, windows), grid (the layer x head
overview), text (lines of segments that fit a width) and common (console, kind styles, titles, legends).
Each view returns a renderable (rich's Group, Table, Text) and never prints. The only package that imports rich;
results import the views from here.
"""

from mhacli.views.terminal.ablate import ablate_view, prune_view
from mhacli.views.terminal.census import census_view
from mhacli.views.terminal.common import KIND_STYLE, make_console
from mhacli.views.terminal.diff import diff_view
from mhacli.views.terminal.explain import PLAIN_WIDTH, explain_lines, explain_text, explain_view
from mhacli.views.terminal.info import info_table
from mhacli.views.terminal.inspect import inspect_view
from mhacli.views.terminal.stats import stats_view
from mhacli.views.terminal.verify import verify_view

__all__ = [
    "KIND_STYLE", "PLAIN_WIDTH", "ablate_view", "census_view", "diff_view", "explain_lines", "explain_text",
    "explain_view", "info_table", "inspect_view", "make_console", "prune_view", "stats_view", "verify_view",
]  # fmt: skip
