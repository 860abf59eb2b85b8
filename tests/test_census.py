"""`mha census`: the bundled model's known heads named with their evidence.

Also the numbers against HF's attention and the loop definitions, the same result on every executor, the per-text
file, and bad input.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import SAMPLE, default_sigint, hf_outputs, parse_json, reference_stats, run_mha

HELDOUT = json.loads((Path(__file__).parent / "data" / "heldout_shakespeare.json").read_text(encoding="utf-8"))
NO_PROGRESS = {"MHA_NO_PROGRESS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The 8 held-out Shakespeare passages, one per line (newlines inside a passage become spaces)."""
    path = tmp_path_factory.mktemp("corpus") / "heldout.txt"
    path.write_text("".join(" ".join(p.split("\n")) + "\n" for p in HELDOUT["passages"]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def serial(corpus, tmp_path_factory):
    """The census of the bundled model, default probes plus the corpus, in this process, with --per-text."""
    per_text = tmp_path_factory.mktemp("per") / "texts.jsonl"
    result = run_mha(
        "census", "--texts", str(corpus), "-j", "1", "-f", "json", "--per-text", str(per_text), env=NO_PROGRESS
    )
    assert result.returncode == 0, result.stderr
    return parse_json(result.stdout), [json.loads(line) for line in per_text.read_text().splitlines()]


def heads_of(doc) -> dict:
    return {(h["layer"], h["head"]): h for h in doc["heads"]}


def test_the_bundled_models_induction_and_previous_token_heads(serial):
    """Measured: L1H2 induction 0.939 on repeat (400 rows), confidence 1.00.

    L0H3 previous_token 0.995 on random, confidence 1.00.
    """
    doc, _ = serial
    heads = heads_of(doc)
    ind, prev = heads[(1, 2)], heads[(0, 3)]
    assert ind["kind"] == "induction" and ind["confidence"] >= 0.9, ind
    assert ind["evidence"]["source"] == "repeat" and ind["evidence"]["statistic"] == "induction"
    assert ind["evidence"]["mean"] >= 0.9
    assert ind["by_source"]["repeat"]["support"]["induction"] >= 20 * 4
    assert prev["kind"] == "previous-token" and prev["confidence"] >= 0.9, prev
    assert prev["evidence"]["source"] == "random" and prev["evidence"]["mean"] >= 0.9
    assert sum(h["kind"] == "induction" for h in doc["heads"]) == 1
    assert doc["sources"]["repeat"] == {"n_texts": 20, "n_tokens": 41, "first_row": 21, "seed": 0, "failed": 0}
    assert doc["sources"]["random"]["n_texts"] == 20 and doc["sources"]["random"]["n_tokens"] == 64
    assert doc["sources"]["corpus"]["n_texts"] == 8 and doc["sources"]["corpus"]["failed"] == 0


def test_confidence_is_the_share_of_texts_where_the_rule_holds(serial):
    """Recounted from the per-text file.

    For each head, the texts of its evidence source on which its kind's statistic reaches the threshold (with
    MIN_SUPPORT rows for the supported kinds).
    """
    from mhacli.analyses.stats import KIND_RULES, MIN_SUPPORT

    doc, texts = serial
    rules = {kind: (stat, threshold) for kind, stat, threshold in KIND_RULES}
    for h in doc["heads"]:
        source = h["evidence"]["source"]
        rows = [t for t in texts if t["source"] == source]
        per_head = [next(x for x in t["heads"] if (x["layer"], x["head"]) == (h["layer"], h["head"])) for t in rows]
        if h["kind"] == "mixed":
            holds = [x["kind"] == "mixed" for x in per_head]
        else:
            stat, threshold = rules[h["kind"]]
            holds = [
                x["stats"][stat] is not None and x["stats"][stat] >= threshold
                and (stat not in t["support"] or t["support"][stat] >= MIN_SUPPORT)
                for x, t in zip(per_head, rows)
            ]  # fmt: skip
        assert h["confidence"] == pytest.approx(sum(holds) / len(rows), abs=1e-12), h


def test_per_text_rows_average_to_the_summary(serial):
    doc, texts = serial
    for h in doc["heads"]:
        for source, summary in h["by_source"].items():
            rows = [t for t in texts if t["source"] == source and "error" not in t]
            assert len(rows) == summary["n_texts"]
            for name, mean in summary["mean"].items():
                values = [
                    x["stats"][name]
                    for t in rows
                    for x in t["heads"]
                    if (x["layer"], x["head"]) == (h["layer"], h["head"])
                ]
                values = [v for v in values if v is not None]
                if mean is None:
                    assert not values
                    continue
                assert mean == pytest.approx(float(np.mean(values)), abs=1e-12, rel=0)
                assert summary["std"][name] == pytest.approx(float(np.std(values)), abs=1e-12, rel=0)
            for name, total in summary["support"].items():
                assert total == sum(t["support"][name] for t in rows)


def test_probes_are_what_the_docs_say(serial):
    """repeat: prefix + s + s with s distinct ordinary tokens.

    random: prefix + ordinary tokens; the prefix is the tokenizer's <|endoftext|>; the statistics of a repeat probe are
    read on the second copy (20 rows).
    """
    from mhacli.io.tokenizer import load_tokenizer

    tok = load_tokenizer(SAMPLE)
    eot = tok.backend.token_to_id("<|endoftext|>")
    _, texts = serial
    repeats = [t for t in texts if t["source"] == "repeat"]
    randoms = [t for t in texts if t["source"] == "random"]
    assert len(repeats) == len(randoms) == 20
    for t in repeats:
        ids = t["token_ids"]
        assert len(ids) == 41 and ids[0] == eot and ids[1:21] == ids[21:] and len(set(ids[1:21])) == 20
        assert eot not in ids[1:] and t["rows"] == 20 and t["support"] == {"duplicate_token": 20, "induction": 20}
    for t in randoms:
        assert len(t["token_ids"]) == 64 and t["token_ids"][0] == eot and eot not in t["token_ids"][1:]
    assert len({tuple(t["token_ids"]) for t in repeats + randoms}) == 40


def test_per_text_statistics_match_hf_attention_and_the_loop_definitions(serial):
    """Two probes and a corpus text.

    Every head's statistics recomputed from HF eager attention with the loop definitions of test_stats (float64), rows
    of the second copy for a repeat probe.
    """
    _, texts = serial
    chosen = [next(t for t in texts if t["source"] == s) for s in ("repeat", "random", "corpus")]
    for t in chosen:
        ids = t["token_ids"]
        first_row = len(ids) - t["rows"]
        attentions, _ = hf_outputs(SAMPLE, ids)
        for x in t["heads"]:
            A = attentions[x["layer"]][x["head"]].astype(np.float64)
            ref, support = reference_stats(A, ids, first_row)
            assert support == t["support"]
            for name, want in ref.items():
                got = x["stats"][name]
                if want is None:
                    assert got is None
                else:
                    bound = 1e-5 * (1 + abs(want)) if name in ("entropy", "mean_distance") else 2e-6
                    assert abs(got - want) <= bound, (t["source"], x["layer"], x["head"], name, got, want)


def summary_numbers(doc) -> list[float]:
    out = []
    for h in doc["heads"]:
        out.append(h["confidence"])
        for s in h["by_source"].values():
            out += [v if v is not None else math.nan for part in ("mean", "std") for v in s[part].values()]
    return out


def test_serial_local_processes_and_dask_give_the_same_bytes(serial, corpus):
    """One process, two local workers and a Dask LocalCluster print the same JSON, byte for byte (issue 37 item 6).

    Per-text results are folded in text order and every text runs its BLAS on one thread wherever it runs.
    """
    pytest.importorskip("dask.distributed", reason="the test extra installs dask[distributed]")
    from dask.distributed import LocalCluster

    args = ("census", "--texts", str(corpus), "-f", "json")
    one = run_mha(*args, "-j", "1", env=NO_PROGRESS | {"OPENBLAS_NUM_THREADS": "2"})
    two = run_mha(*args, "-j", "2", env=NO_PROGRESS)
    saved = dict(os.environ)  # a Nanny writes Dask's pre-spawn settings into this process' environment for good
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            on_dask = run_mha(*args, "--dask", cluster.scheduler_address, env=NO_PROGRESS)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for result in (one, two, on_dask):
        assert result.returncode == 0, result.stderr
    assert parse_json(one.stdout)["heads"] == serial[0]["heads"]  # --per-text changes nothing either
    assert two.stdout == one.stdout
    assert on_dask.stdout == one.stdout


def test_seed_makes_probes_reproducible(tmp_path):
    a = run_mha("census", "-j", "1", "--seed", "5", "--probe-count", "4", "-f", "json")
    b = run_mha("census", "-j", "1", "--seed", "5", "--probe-count", "4", "-f", "json")
    c = run_mha("census", "-j", "1", "--seed", "6", "--probe-count", "4", "-f", "json")
    assert a.returncode == b.returncode == c.returncode == 0
    assert a.stdout == b.stdout and summary_numbers(parse_json(a.stdout)) != summary_numbers(parse_json(c.stdout))


def test_formats(tmp_path, corpus):
    args = ("census", "-j", "1", "--probe-count", "3", "--texts", str(corpus))
    doc = parse_json(run_mha(*args, "-f", "json").stdout)
    lines = run_mha(*args, "-f", "jsonl").stdout.decode().splitlines()
    assert [json.loads(line) for line in lines] == doc["heads"]
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(run_mha(*args, "-f", "csv").stdout.decode())))
    assert len(rows) == len(doc["heads"]) * 3  # one per head and source
    first = rows[0]
    head = heads_of(doc)[(int(first["layer"]), int(first["head"]))]
    assert first["kind"] == head["kind"] and float(first["confidence"]) == pytest.approx(head["confidence"], abs=1e-6)
    assert float(first["mean_induction"]) == pytest.approx(
        head["by_source"][first["source"]]["mean"]["induction"], abs=1e-6
    )
    assert list(first)[:6] == ["layer", "head", "kind", "confidence", "source", "n_texts"]
    tsv = run_mha(*args, "-f", "tsv").stdout.decode().splitlines()
    assert tsv[0].split("\t") == list(first)
    text = run_mha(*args, "-f", "text")
    assert text.returncode == 0 and b"\x1b" not in text.stdout and text.stderr == b""
    assert "induction" in text.stdout.decode() and "corpus: 8 texts" in text.stdout.decode()


def test_jsonl_and_stdin_corpora_equal_the_text_file(tmp_path, corpus):
    lines = corpus.read_text().splitlines()
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "id": k}) + "\n" for k, t in enumerate(lines)))
    args = ("census", "-j", "1", "--probes", "none", "-f", "json")
    plain = parse_json(run_mha(*args, "--texts", str(corpus)).stdout)
    from_jsonl = parse_json(run_mha(*args, "--texts", str(jsonl)).stdout)
    from_stdin = parse_json(run_mha(*args, "--texts", "-", input=corpus.read_bytes()).stdout)
    assert plain["heads"] == from_jsonl["heads"] == from_stdin["heads"]
    assert plain["sources"]["corpus"]["n_texts"] == 8 and set(plain["sources"]) == {"corpus"}


def test_failed_texts_are_counted_unless_strict(tmp_path):
    path = tmp_path / "c.jsonl"
    long = "word " * 400  # > 256 tokens
    path.write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in ("To be, or not to be.", "", long, "Thou art a villain."))
    )
    result = run_mha(
        "census",
        "-j",
        "1",
        "--probes",
        "none",
        "--texts",
        str(path),
        "-f",
        "json",
        "--per-text",
        str(tmp_path / "p.jsonl"),
    )
    assert result.returncode == 0, result.stderr
    doc = parse_json(result.stdout)
    assert doc["sources"]["corpus"]["n_texts"] == 2 and doc["sources"]["corpus"]["failed"] == 2
    err = result.stderr.decode()
    assert "line 2: text is empty" in err and "line 3:" in err and "longer than the model's n_positions" in err
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r.get("line") for r in records] == [1, 2, 3, 4] and ["error" in r for r in records] == [
        False,
        True,
        True,
        False,
    ]
    truncated = run_mha("census", "-j", "1", "--probes", "none", "--texts", str(path), "-f", "json", "--truncate")
    assert parse_json(truncated.stdout)["sources"]["corpus"]["n_texts"] == 3
    strict = run_mha("census", "-j", "1", "--probes", "none", "--texts", str(path), "--strict")
    assert strict.returncode == 2 and strict.stderr.decode().startswith("error: --texts line 2: text is empty")


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda p: p.write_text("\n  \n\n"), [], "holds no text"),
        (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00" * 50), [], "holds NUL bytes"),
        (lambda p: p.write_bytes(b"caf\xe9\n"), [], "not valid UTF-8"),
        (
            lambda p: p.with_suffix(".jsonl").write_text('{"text": "a"}\n{"body": "b"}\n'),
            ["jsonl"],
            'line 2 has no "text" string',
        ),
        (
            lambda p: p.with_suffix(".jsonl").write_text('{"text": "a"}\nnot json\n'),
            ["jsonl"],
            "line 2 is not a JSON object",
        ),
        (None, ["--workers", "0"], "--workers 0 must be at least 1"),
        (None, ["--probes", "repeat,nonsense"], "'nonsense' is not one of"),
        (None, ["--probes", "none"], "needs --texts"),
        (None, ["--random-length", "1000"], "longer than the model's n_positions"),
        (None, ["--texts", "/nonexistent/corpus.txt"], "no such file"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, make, args, message):
    path = tmp_path / "corpus.txt"
    extra = list(args)
    if make is not None:
        make(path)
        target = path.with_suffix(".jsonl") if extra == ["jsonl"] else path
        extra = ["--texts", str(target)]
    result = run_mha("census", "-j", "1", *extra)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_an_unreachable_dask_scheduler_is_a_clear_error():
    """Refused with one error line.

    mhacli.analyses.parallel.DASK_TIMEOUT_S bounds the wait; run_mha's timeout fails the test on a hang, with no
    wall-time threshold of its own.
    """
    pytest.importorskip("dask.distributed", reason="the test extra installs dask[distributed]")
    result = run_mha("census", "--dask", "tcp://127.0.0.1:9", "--probe-count", "2")
    err = result.stderr.decode()
    assert (
        result.returncode == 2
        and err.startswith("error: --dask tcp://127.0.0.1:9: cannot reach")
        and err.count("\n") == 1
    )


def test_ctrl_c_stops_the_workers_and_exits_130(tmp_path):
    """SIGINT to the whole process group (what a terminal's Ctrl-C sends) while two workers run.

    Exit 130, one `error: interrupted` line, no worker left behind, no partial --per-text file.
    """
    rng = np.random.default_rng(0)
    words = ["thou", "art", "the", "king", "of", "my", "heart", "and", "I", "am", "thy", "love", "good", "night"]
    corpus = tmp_path / "big.txt"
    corpus.write_text("".join(" ".join(rng.choice(words, 40)) + "\n" for _ in range(200_000)))
    per_text = tmp_path / "p.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mhacli",
            "census",
            "-j",
            "2",
            "--texts",
            str(corpus),
            "--per-text",
            str(per_text),
            "-f",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
        preexec_fn=default_sigint,  # as a terminal starts it, whatever this process ignores
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until results come back from the workers
            partial = [f for f in tmp_path.iterdir() if f.name.startswith(".mha-") and f.stat().st_size > 100_000]
            if partial or proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, children
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert err.decode() == "error: interrupted\n" and out == b""
    assert not per_text.exists() and not [f for f in tmp_path.iterdir() if f.name.startswith(".mha-")]
    deadline = time.monotonic() + 10  # the workers are terminated at once; multiprocessing's tracker follows
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in children):
        time.sleep(0.1)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    assert not alive, f"still running: {alive}"


@pytest.mark.parametrize("where", ["local pool", "dask local"])
def test_workers_run_one_blas_and_one_attention_thread(where):
    """N worker processes with two threads each would oversubscribe N cores.

    The local pool's and a Dask LocalCluster's workers see one BLAS thread and one attention thread (MHA_THREADS,
    mhacli.engine.attention).
    """
    from mhacli.analyses.parallel import dask_executor, local_pool

    if where == "dask local":
        pytest.importorskip("dask.distributed", reason="the test extra installs dask[distributed]")
        executor = dask_executor("local", 1)
    else:
        executor = local_pool(1)
    before = {name: os.environ.get(name) for name in ("MHA_THREADS", "OPENBLAS_NUM_THREADS")}
    with executor as ex:
        seen = {name: ex.submit(os.getenv, name).result() for name in before}
    assert seen == {"MHA_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    assert {
        name: os.environ.get(name) for name in before
    } == before  # this process's own settings are left as they were
