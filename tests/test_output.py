"""The door's environment and its one output sink (mhacli.views.output).

Every format from one result protocol; commands run against an injected environment instead of a patched
sys.stdout; a terminal view kept as a renderable prints what it printed directly.
"""

from __future__ import annotations

import csv
import io
import json

import pytest

from mhacli.views.output import FORMATS, Environment, Output, default_format


class Fake:
    """A result answering the whole protocol."""

    COLUMNS = ("name", "value")

    def __init__(self) -> None:
        self.items = [{"name": "ä", "value": 1.5}, {"name": "b", "value": None}]

    def to_dict(self) -> dict:
        return {"items": self.items}

    def records(self) -> list[dict]:
        return self.items

    def rows(self) -> list[list]:
        return [[i["name"], i["value"]] for i in self.items]

    def plain(self) -> str:
        return "".join(f"{i['name']} {i['value']}\n" for i in self.items)

    def view(self, console):  # noqa: ANN001, ANN201
        from rich.text import Text

        return Text("a view", style="bold")

    def notes(self, fmt: str) -> list[str]:
        return ["plain only"] if fmt == "text" else []


def env(**kw) -> Environment:  # noqa: ANN003
    return Environment(stdin=io.StringIO(), stdout=io.StringIO(), stderr=io.StringIO(), **kw)


def emitted(fmt: str, **kw) -> tuple[str, str]:  # noqa: ANN003
    e = env(**kw)
    Output(fmt, e).emit(Fake())
    return e.stdout.getvalue(), e.stderr.getvalue()


def test_streams_that_are_not_terminals_default_to_text():
    e = env()
    assert (e.stdin_isatty, e.stdout_isatty, e.stderr_isatty) == (False, False, False)
    assert default_format(e) == "text"
    assert default_format(env(stdout_isatty=True)) == "rich"
    assert e.show_progress is False


def test_json_is_one_strict_document():
    out, err = emitted("json")
    assert json.loads(out) == Fake().to_dict() and out.endswith("}\n") and out.count("\n") == 1 and err == ""
    assert "ä" in out


def test_json_escapes_what_stdout_cannot_encode():
    out, _ = emitted("json", encoding="ascii")
    assert "\\u00e4" in out and json.loads(out) == Fake().to_dict()


def test_json_chunks_stream_the_same_document():
    class Streamed(Fake):
        def json_chunks(self, dumps):  # noqa: ANN001, ANN202
            yield dumps({"items": []})[:-2]
            yield ", ".join(dumps(i) for i in self.items) + "]}\n"

    e = env()
    Output("json", e).emit(Streamed())
    assert json.loads(e.stdout.getvalue()) == Fake().to_dict()


def test_jsonl_is_one_record_per_line():
    out, _ = emitted("jsonl")
    assert [json.loads(line) for line in out.splitlines()] == Fake().items


@pytest.mark.parametrize("fmt, delimiter", [("csv", ","), ("tsv", "\t")])
def test_tables_have_the_columns_and_empty_cells_for_null(fmt, delimiter):
    out, _ = emitted(fmt)
    rows = list(csv.reader(io.StringIO(out), delimiter=delimiter))
    assert rows == [["name", "value"], ["ä", "1.500000"], ["b", ""]]


def test_text_is_plain_and_notes_go_to_stderr():
    out, err = emitted("text")
    assert out == "ä 1.5\nb None\n" and "\x1b" not in out
    assert err == "note: plain only\n"


def test_rich_prints_the_view_in_the_environment_width_and_colour():
    out, err = emitted("rich", width=40, color=False)
    assert out == "a view\n" and err == ""
    coloured, _ = emitted("rich", width=40, color=True)
    assert "\x1b[1m" in coloured and "a view" in coloured


def test_no_ansi_in_machine_formats_even_on_a_terminal():
    for fmt in ("json", "jsonl", "csv", "tsv"):
        out, _ = emitted(fmt, stdout_isatty=True, color=True)
        assert "\x1b" not in out


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError):
        Output("yaml", env())
    assert FORMATS == ("rich", "text", "json", "jsonl", "csv", "tsv")


def test_progress_passes_items_through_when_stderr_is_not_a_terminal():
    e = env()
    assert list(e.progress(iter(range(3)), 3, "x")) == [0, 1, 2] and e.stderr.getvalue() == ""


def test_a_command_writes_to_the_environment_it_is_given():
    from mhacli.cli import run

    e = env()
    assert run(["info", "-f", "json"], env=e) == 0
    doc = json.loads(e.stdout.getvalue())
    assert doc["config"]["n_layer"] >= 1 and e.stderr.getvalue() == ""


def test_a_terminal_environment_gets_the_rich_view_by_default():
    from mhacli.cli import run

    e = env(stdout_isatty=True, width=60, color=False)
    assert run(["info"], env=e) == 0
    out = e.stdout.getvalue()
    assert "parameters" in out and "\x1b[3" not in out  # bold, but no colour
    assert max(len(line) for line in out.splitlines()) <= 60 + out.count("\x1b") * 5


def test_errors_go_to_the_environment_stderr():
    from mhacli.cli import run

    e = env()
    assert run(["stats", "x", "-f", "yaml"], env=e) == 2
    assert e.stdout.getvalue() == "" and e.stderr.getvalue().startswith("error: ")


# --- a view returns its renderable and prints nothing itself ---------------------------------------------------------


@pytest.fixture(scope="module")
def sample_results():
    import mhacli
    from mhacli.ops.diff import DiffResult
    from mhacli.ops.heads import InspectResult, StatsResult

    model = mhacli.load("sample")
    run = model.run("The cat sat on the mat. The cat sat on the mat.")
    views, tokens, ids = run.views(), run.tokens, run.ids.tolist()
    report = mhacli.diff(model, mhacli.load("sample-early"), "The cat sat on the mat. The cat sat on the mat.")
    doc = {"model": {}, "tokens": tokens, "token_ids": ids}
    return [
        InspectResult(doc, tokens, ids, views[:3]),
        InspectResult(doc, tokens, ids, views[:3], query=5),
        StatsResult(doc, tokens, ids, views, 2, 4),
        DiffResult(report, "sample", "sample-early", tokens, [len(tokens)], maps=lambda: (views[0], views[1])),
    ]


def test_views_return_what_they_show_and_print_nothing(sample_results):
    from mhacli.views.terminal import make_console

    for result in sample_results:
        console = make_console(file=io.StringIO(), width=100, force_terminal=True, color_system="truecolor")
        shown = result.view(console)
        assert console.file.getvalue() == "", type(result).__name__
        console.print(shown)
        assert "\x1b[" in console.file.getvalue() and "L0H" in console.file.getvalue(), type(result).__name__
