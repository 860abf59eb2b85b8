"""A run with `--ablate` says so in every output; an intact run says nothing (issue 36 item 2).

json and each jsonl record carry `"ablated": [{"layer", "head"}], "method"`; text and rich start with one line
naming the heads and how they were removed; the figures are titled with it (checked in the SVG, whose text stays
text) and the HTML page's caption starts with it. csv and tsv stay pure data: the same columns as an intact run.
"""

from __future__ import annotations

import html.parser
import importlib.util
import io
import json

import pytest
from helpers import parse_json

from mhacli.ops.ablation import AblateResult, PruneResult
from mhacli.views.ablated import Ablated
from mhacli.views.output import Environment, Output

TEXT = "The cat sat on the mat. The cat sat on the mat."
ABLATE = "1.1,0.3"  # given out of order: outputs list them as given
HEADS = [{"layer": 1, "head": 1}, {"layer": 0, "head": 3}]
LINE = "ablated: L1H1, L0H3 (zeroed)"
COMMANDS = {
    "inspect": ("inspect", TEXT, "-l", "1"),
    "stats": ("stats", TEXT),
    "diff": ("diff", "sample", "sample", TEXT),
}
HEADER = {"inspect": LINE, "stats": LINE, "diff": "MODEL_B " + LINE}  # diff removes heads of MODEL_B


def run(mha, *args: str) -> str:
    result = mha(*args, env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    return result.stdout.decode()


@pytest.mark.parametrize("command", COMMANDS)
def test_json_and_every_jsonl_record_name_the_removed_heads(mha, command):
    args = COMMANDS[command]
    doc = parse_json(run(mha, *args, "--ablate", ABLATE, "-f", "json").encode())
    assert (doc["ablated"], doc["method"]) == (HEADS, "zero")
    records = [json.loads(line) for line in run(mha, *args, "--ablate", ABLATE, "-f", "jsonl").splitlines()]
    assert records and all((r["ablated"], r["method"]) == (HEADS, "zero") for r in records)
    intact = parse_json(run(mha, *args, "-f", "json").encode())
    assert "ablated" not in intact and "method" not in intact
    assert not any("ablated" in json.loads(line) for line in run(mha, *args, "-f", "jsonl").splitlines())


@pytest.mark.parametrize("fmt", ["text", "rich"])
@pytest.mark.parametrize("command", COMMANDS)
def test_text_and_rich_start_with_the_removed_heads(mha, command, fmt):
    args = COMMANDS[command]
    shown = run(mha, *args, "--ablate", ABLATE, "-f", fmt)
    assert shown.splitlines()[0] == HEADER[command]
    assert "ablated" not in run(mha, *args, "-f", fmt)


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
@pytest.mark.parametrize("command", COMMANDS)
def test_csv_and_tsv_stay_pure_data(mha, command, fmt):
    args = COMMANDS[command]
    ablated = run(mha, *args, "--ablate", ABLATE, "-f", fmt).splitlines()
    intact = run(mha, *args, "-f", fmt).splitlines()
    assert ablated[0] == intact[0] and len(ablated) == len(intact)  # the same columns and rows
    assert "ablated" not in "\n".join(ablated)


class PageData(html.parser.HTMLParser):
    """The page's data block (`<script type="application/json" id="mha-data">`)."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = False
        self.data = ""

    def handle_starttag(self, tag, attrs):
        self.inside = tag == "script" and ("id", "mha-data") in attrs

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.data += data


def page_caption(path) -> str:
    parser = PageData()
    parser.feed(path.read_text(encoding="utf-8"))
    return json.loads(parser.data)["caption"]


@pytest.mark.parametrize("command", COMMANDS)
def test_figures_and_pages_name_the_removed_heads(mha, tmp_path, command):
    pytest.importorskip("matplotlib")
    args = COMMANDS[command]
    svg, page = tmp_path / "a.svg", tmp_path / "a.html"
    run(mha, *args, "--ablate", ABLATE, "-f", "csv", "--save", str(svg), "--save", str(page))
    assert f">{HEADER[command]}<" in svg.read_text(encoding="utf-8")  # the title, as SVG text
    assert page_caption(page).startswith(HEADER[command] + " · ")
    run(mha, *args, "-f", "csv", "--save", str(svg), "--save", str(page))
    assert "ablated" not in svg.read_text(encoding="utf-8")
    assert "ablated" not in page_caption(page)


def test_the_png_is_the_same_titled_figure(mha, tmp_path):
    """PNG, SVG and PDF are one figure saved three ways: its title is the ablation's line."""
    pytest.importorskip("matplotlib")
    from mhacli.views import figures
    from mhacli.views.save import Picture

    ablated = Ablated(((0, 3),))
    fig = figures.figure_for(Picture(PruneResult.PICTURES, "caption", {"doc": prune_doc()}, ablated))
    try:
        assert fig.get_suptitle() == "ablated: L0H3 (zeroed)"
        assert figures.to_bytes(fig, "png", 50).startswith(b"\x89PNG")
    finally:
        figures.close(fig)
    fig = figures.figure_for(Picture(PruneResult.PICTURES, "caption", {"doc": prune_doc()}))
    assert fig.get_suptitle() == ""
    figures.close(fig)


def prune_doc() -> dict:
    curve = [{"n_removed": 0, "fraction": 0.0, "loss": 3.0, "removed": []}]
    rand = [{"n_removed": 0, "fraction": 0.0, "loss_mean": 3.0, "loss_std": 0.0}]
    return {
        "baseline_loss": 3.0, "max_increase": 0.05, "method": "zero", "n_texts": 1, "step": 0.5,
        "importance": {"curve": curve, "prunable_fraction": 0.0}, "random": {"seeds": 1, "curve": rand,
                                                                             "prunable_fraction": 0.0},
    }  # fmt: skip


# --- the description ------------------------------------------------------------------------------------------------


class MeanMask:
    """A removal as a mask file may give it: heads set to means measured on 3 texts, 41 positions."""

    heads = ((2, 0), (0, 1))
    method = "mean"
    n_texts = 3
    n_positions = 41


def test_a_mean_removal_says_where_its_means_came_from():
    a = Ablated.of(MeanMask())
    assert a is not None
    assert a.to_dict() == {
        "ablated": [{"layer": 2, "head": 0}, {"layer": 0, "head": 1}],
        "method": "mean",
        "means_from": {"n_texts": 3, "n_positions": 41},
    }
    assert a.describe() == "ablated: L2H0, L0H1 (set to their mean outputs over 3 texts (41 positions))"
    assert Ablated(((0, 0),), "mean").describe() == "ablated: L0H0 (set to their recorded mean outputs)"
    mapping = type("Mask", (), {"heads": [(0, 0)], "method": "mean", "means_from": {"n_texts": 1, "n_positions": 9}})
    assert Ablated.of(mapping()) == Ablated(((0, 0),), "mean", 1, 9)


def test_nothing_removed_is_an_intact_run():
    assert Ablated.of(None) is None and Ablated.of([]) is None
    assert Ablated.of([(1, 2)]) == Ablated(((1, 2),), "zero")


def test_ablate_keeps_its_own_method_and_names_the_removed_heads_apart():
    """`mha ablate --ablate`: `method` is how each listed head is removed; the pinned heads' is `ablated_method`."""
    doc = {"method": "zero", "heads": [{"layer": 0, "head": 0, "kind": "sink", "loss": 1.0, "delta": 0.1,
                                        "delta_pct": 10.0}]}  # fmt: skip
    result = AblateResult(doc, ablated=Ablated.of(MeanMask()))
    whole = result.to_dict()
    assert (whole["method"], whole["ablated_method"], whole["ablated_means_from"]["n_texts"]) == ("zero", "mean", 3)
    assert all(r["ablated"] == whole["ablated"] for r in result.records())
    assert list(result.rows()) == [[0, 0, "sink", 1.0, 0.1, 10.0]]  # csv: pure data
    assert "ablated" not in AblateResult(doc).to_dict()


def test_output_writes_the_line_once_before_any_view():
    class Shown:
        ablated = Ablated(((0, 3),), model="MODEL_B")

        def plain(self) -> str:
            return "body\n"

        def view(self, console):
            return "body"

    for fmt in ("text", "rich"):
        out = io.StringIO()
        Output(fmt, Environment(stdin=io.StringIO(), stdout=out, stderr=io.StringIO(), width=80)).emit(Shown())
        assert out.getvalue() == "MODEL_B ablated: L0H3 (zeroed)\nbody\n"


# --- mha ablate --ablate, and masks of mean outputs (issue 36 item 3) ---------------------------------------------


def test_ablate_names_the_heads_removed_before_every_measurement(mha, tmp_path):
    if "--ablate" not in run(mha, "ablate", "--help"):
        pytest.skip("mha ablate takes --ablate with issue 36 item 3 (mask replay)")
    args = ("ablate", TEXT, "-l", "1", "--ablate", ABLATE)
    doc = parse_json(run(mha, *args, "-f", "json").encode())
    assert (doc["ablated"], doc["ablated_method"], doc["method"]) == (HEADS, "zero", "zero")
    records = [json.loads(line) for line in run(mha, *args, "-f", "jsonl").splitlines()]
    assert records and all(r["ablated"] == HEADS for r in records)
    for fmt in ("text", "rich"):
        assert run(mha, *args, "-f", fmt).splitlines()[0] == LINE
    assert run(mha, *args, "-f", "csv").splitlines()[0] == run(mha, "ablate", TEXT, "-l", "1", "-f", "csv").split()[0]
    intact = parse_json(run(mha, "ablate", TEXT, "-l", "1", "-f", "json").encode())
    assert "ablated" not in intact
    if importlib.util.find_spec("matplotlib") is not None:
        svg, page = tmp_path / "a.svg", tmp_path / "a.html"
        run(mha, *args, "-f", "csv", "--save", str(svg), "--save", str(page))
        assert f">{LINE}<" in svg.read_text(encoding="utf-8")
        assert page_caption(page).startswith(LINE + " · ")


def mean_mask(path) -> None:
    """A mask of mean outputs for L0H3 of the bundled model (d_head 32), as prune --method mean writes one."""
    doc = {"model": {"n_layer": 2, "n_head": 4, "d_head": 32}, "method": "mean", "heads": [[0, 3]],
           "means": [[0.25] * 32]}  # fmt: skip
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_mean_mask_is_named_as_mean(mha, tmp_path, command):
    from mhacli.ops import ablation

    if not hasattr(ablation, "ablation"):
        pytest.skip("masks record their method with issue 36 item 3 (before, every mask replays as zero)")
    mask = tmp_path / "mask.json"
    mean_mask(mask)
    doc = parse_json(run(mha, *COMMANDS[command], "--ablate", f"@{mask}", "-f", "json").encode())
    assert (doc["ablated"], doc["method"]) == ([{"layer": 0, "head": 3}], "mean")
    assert set(doc["means_from"]) == {"n_texts", "n_positions"}
    first = run(mha, *COMMANDS[command], "--ablate", f"@{mask}", "-f", "text").splitlines()[0]
    assert "ablated: L0H3 (set to" in first and "mean outputs" in first
