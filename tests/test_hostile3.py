"""Hostile input, round three: option extremes and odd terminal sizes end in a result or one `error:` line.

Every case runs the CLI in this process (the `mha` fixture). A valid extreme gets the right result, clamped where
the docs say so (`inspect --top` beyond the keys there are shows every key; a console narrower or wider than the
views are drawn for is drawn at the nearest size, docs/commands/inspect.md); a bad value gets one `error:` line and
exit 2, never exit 3 (an internal error) or a traceback.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TEXT = "The cat sat on the mat. The cat sat on the mat."
HUGE = str(10**20)


def one_error_or_ok(result, allowed=(0, 2)) -> None:
    """Exit 0, or 2 with exactly one `error:` line on stderr; never 3, never a traceback."""
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode in allowed, err
    assert "Traceback" not in err, err
    if result.returncode == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err


@pytest.mark.parametrize("columns", ["0", "1", "5", "10", str(10**9), "garbage", "-3"])
@pytest.mark.parametrize("lines", ["0", "1", str(10**9)])
def test_inspect_rich_at_any_terminal_size(tiny_model, mha, columns, lines):
    """COLUMNS=5 made the map window wider than the rows computed for it: `query row 5 was not computed`, exit 3."""
    result = mha("inspect", TEXT, "-m", str(tiny_model), "-f", "rich", env={"COLUMNS": columns, "LINES": lines})
    one_error_or_ok(result, allowed=(0,))
    assert "L0H0" in result.stdout.decode()


@pytest.mark.parametrize("command", [["stats"], ["diff", "{m}", "{m}"], ["ablate"], ["inspect", "--top", "2"]])
@pytest.mark.parametrize("columns", ["0", "1", str(10**9)])
def test_other_views_at_extreme_widths(tiny_model, mha, command, columns):
    args = [a.replace("{m}", str(tiny_model)) for a in command]
    model = [] if command[0] == "diff" else ["-m", str(tiny_model)]
    result = mha(*args, TEXT, *model, "-f", "rich", env={"COLUMNS": columns, "TERM": "dumb"})
    one_error_or_ok(result, allowed=(0,))


def top_rows(out: str) -> dict[int, list[int]]:
    """`inspect --top K -f text`: query row -> the keys listed for it (the first head's)."""
    rows: dict[int, list[int]] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\d+) .*?-> (.*)$", line)
        if m is None:
            continue
        i = int(m.group(1))
        if i in rows:  # the next head
            break
        rows[i] = [int(k) for k in re.findall(r"(\d+):", m.group(2))]
    return rows


@pytest.mark.parametrize("top", [HUGE, str(2**63), str(2**63 - 1)])
def test_top_beyond_the_keys_shows_every_key(tiny_model, mha, top):
    """More keys than the text has is legitimate: every key of every row, not a memory estimate of 1e11 TiB."""
    result = mha("inspect", TEXT, "-m", str(tiny_model), "--top", top, "-l", "0", "-H", "0", "-f", "text")
    one_error_or_ok(result, allowed=(0,))
    rows = top_rows(result.stdout.decode())
    assert rows and all(sorted(keys) == list(range(i + 1)) for i, keys in rows.items())
    n = len(rows)
    exact = mha("inspect", TEXT, "-m", str(tiny_model), "--top", str(n), "-l", "0", "-H", "0", "-f", "text")
    assert top_rows(exact.stdout.decode()) == rows


def test_top_beyond_the_keys_through_the_api(tiny_model):
    from mhacli.analyses.partial import MapRequest, TopSink

    assert MapRequest(top=10**20).cells(7) == MapRequest(top=7).cells(7)
    sink = TopSink([0], 7, 10**20)
    assert sink.keys.shape == (1, 7, 7)


EXTREME_INTS = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", HUGE, "-" + HUGE, str(2**63), "nan", "inf", "-inf", "1e3", "0x10", "", " "]),
    st.integers(-(10**6), 10**6).map(str),
)
INSPECT_OPTIONS = ["--query", "--top", "--from", "--panel-size", "--layer", "--head"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    options=st.dictionaries(st.sampled_from(INSPECT_OPTIONS), EXTREME_INTS, max_size=3),
    keys=st.one_of(st.none(), st.tuples(EXTREME_INTS, EXTREME_INTS).map(":".join)),
    fmt=st.sampled_from(["rich", "text", "csv"]),
    columns=st.sampled_from(["0", "1", "5", "80", str(10**9), "x"]),
)
def test_inspect_options_at_their_extremes(tiny_model, mha, options, keys, fmt, columns):
    args = ["inspect", TEXT, "-m", str(tiny_model), "-f", fmt]
    for flag, value in options.items():
        args += [flag, value]
    if keys is not None:
        args += ["--keys", keys]
    one_error_or_ok(mha(*args, env={"COLUMNS": columns}))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    command=st.sampled_from(
        [["circuits", "--top"], ["ablate", TEXT, "--top"], ["ablate", TEXT, "--loss-from"], ["stats", TEXT, "-l"]]
    ),
    value=EXTREME_INTS,
)
def test_numeric_options_of_other_commands(tiny_model, mha, command, value):
    one_error_or_ok(mha(*command, value, "-m", str(tiny_model), "-f", "text"))


@pytest.mark.parametrize("sig,code,workers", [(signal.SIGTERM, 143, "1"), (signal.SIGHUP, 129, "2")])
def test_a_signal_mid_run_leaves_nothing_partial(tmp_path, sig, code, workers):
    """SIGTERM/SIGHUP during a census: one `error:` line, exit 128 + signal, no --save file, no temporary."""
    per_text, saved = tmp_path / "texts.jsonl", tmp_path / "census.html"
    args = ["census", "--probe-count", "100000", "-j", workers, "--per-text", str(per_text), "--save", str(saved)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MHA_NO_PROGRESS": "1"}
    env.pop("MHA_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "mhacli", *args, "-f", "json"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(tmp_path.iterdir()) and time.monotonic() < deadline:  # --per-text's temporary: it has started
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    time.sleep(2)  # into the run (100,000 probes take minutes)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == code, err
    assert lines == [f"error: terminated ({sig.name})"], err
    assert not saved.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mha-")] == []


def test_prune_and_census_refuse_counts_without_end(tiny_model, mha):
    """10**20 random orders or probes would run forever: refused by name, exit 2."""
    prune = mha("prune", TEXT, "-m", str(tiny_model), "--seeds", HUGE, "-f", "text")
    one_error_or_ok(prune, allowed=(2,))
    assert "--seeds" in prune.stderr.decode()
    census = mha("census", "-m", str(tiny_model), "--probe-count", HUGE, "-f", "text")
    one_error_or_ok(census, allowed=(2,))
    assert "--probe-count" in census.stderr.decode()
    seed = mha("census", "-m", str(tiny_model), "--probe-count", "2", "--seed", "-1", "-f", "text")
    one_error_or_ok(seed, allowed=(2,))
    assert "--seed -1" in seed.stderr.decode()


def spawned_workers(pid: int) -> list[int]:
    """The local pool's worker processes of `pid` (multiprocessing's spawn_main children; not its resource tracker)."""
    found = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
            except OSError:
                pass
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc")
@pytest.mark.parametrize("attempt", range(2))
def test_a_killed_worker_is_one_clean_error(tmp_path, attempt):
    """A census worker killed mid-run: one `error:` line, exit 2, no hang (it was exit 3 with BrokenProcessPool)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "MHA_NO_PROGRESS": "1"}
    env.pop("MHA_DEBUG", None)
    args = ["census", "--probe-count", "100000", "-j", "2", "-f", "json"]
    proc = subprocess.Popen([sys.executable, "-m", "mhacli", *args],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while len(spawned_workers(proc.pid)) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.1)
    time.sleep(1)
    os.kill(spawned_workers(proc.pid)[attempt % 2], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: a worker process died mid-run"), err


def test_a_lost_dask_worker_is_one_clean_error():
    """Dask's KilledWorker (matched by name: dask is optional) becomes the same WorkerLost, not an internal error."""
    from concurrent.futures import Future

    from mhacli.analyses.parallel import InOrder, Item, WorkerLost, drive

    class KilledWorker(Exception):
        pass

    class Lost:
        def submit(self, fn, *args):
            future: Future = Future()
            future.set_exception(KilledWorker("Attempted to run task on 3 different workers"))
            return future

    work = [Item(0, __import__("numpy").array([1, 2]), 0)]
    with pytest.raises(WorkerLost, match="worker process died"):
        drive(work, None, Lost(), InOrder(lambda s, o: None), in_flight=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("remove", ["x", b"0.1", 5, [(0, "a")], [(0,)], [(0, 1, 2)], [(0.5, 1)], [(True, 1)]])
def test_api_remove_that_is_not_head_pairs(tiny_model, remove):
    """A typed UsageError naming the argument, never a ValueError/TypeError from unpacking inside."""
    import mhacli
    from mhacli.errors import UsageError

    model = mhacli.load(str(tiny_model))
    with pytest.raises(UsageError, match="remove must be"):
        model.run("The cat", remove=remove)
    with pytest.raises(UsageError, match="remove_b must be"):
        mhacli.diff(model, model, "The cat", remove_b=remove)


def test_api_diff_of_something_that_is_not_a_model(tiny_model):
    import mhacli
    from mhacli.errors import UsageError

    model = mhacli.load(str(tiny_model))
    with pytest.raises(UsageError, match="model_a must be a Model"):
        mhacli.diff(str(tiny_model), model, "The cat")  # type: ignore[arg-type]
    assert mhacli.diff(model, model, "The cat", remove_b=[(0, 1)]).heads
