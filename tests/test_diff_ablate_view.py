"""`mha diff A B --ablate L.H` draws model B with the heads removed, in the terminal as in the json (issue 36 item 1).

The terminal view draws the most changed head's two maps under the table; they must come from the same run as
every number of the diff. Before, the json had B ablated and the terminal drew B intact: the head a user reads as
`sink` in the map was `broad` in the numbers above it.
"""

from __future__ import annotations

import re

import pytest
from helpers import parse_json

TEXT = "The cat sat on the mat. The cat sat on the mat."


@pytest.mark.parametrize("ablate", ["0.1", "0.1,0.3", "0.0,0.2"])
def test_the_terminals_model_b_map_is_the_ablated_one(mha, ablate):
    args = ("diff", "sample", "sample", TEXT, "--ablate", ablate)
    doc = parse_json(mha(*args, "-f", "json").stdout)
    top = doc["heads"][0]
    assert top["divergence"] > 0, "the premise: removing heads changes a later head"
    rich = mha(*args, "-f", "rich", env={"COLUMNS": "200"})
    assert rich.returncode == 0, rich.stderr
    text = rich.stdout.decode()
    for model, layer, head, kind in (
        ("A", top["layer_a"], top["head_a"], top["kind_a"]),
        ("B", top["layer_b"], top["head_b"], top["kind_b"]),
    ):
        shown = re.search(rf"MODEL_{model} L{layer}H{head} (\S+)", text)
        assert shown is not None, f"no map of MODEL_{model} L{layer}H{head}"
        title = shown.group(1).rstrip("…")  # a narrow panel clips its title
        assert title and kind.startswith(title), f"MODEL_{model}'s map is titled {shown.group(0)!r}, the json: {kind}"
