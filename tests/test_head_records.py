"""Every json/jsonl record that names a head names the K/V head it reads (issue 36 item 6).

A head record is any object with `head` (or `head_a`/`head_b`): it carries `kv_head` (or `kv_head_a`/`kv_head_b`).
On the bundled model (MHA) the K/V head is the head itself; the GQA arithmetic (h // group) is checked on reports
built here with a group of 2, where kv_head and head differ.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import parse_json

TEXT = "The cat sat on the mat. The cat sat on the mat."
RUNS = {
    "inspect": ["inspect", TEXT],
    "stats": ["stats", TEXT],
    "explain": ["explain", TEXT, "-l", "1", "-H", "2"],
    "verify": ["verify", TEXT],
    "diff": ["diff", "sample", "sample", TEXT],
    "diff-matched": ["diff", "sample", "sample", TEXT, "--match"],
    "ablate": ["ablate", TEXT],
    "census": ["census", "--probe-count", "1", "-j", "1"],
}


def head_records(doc, found: list) -> list:
    if isinstance(doc, dict):
        if any(k in doc for k in ("head", "head_a", "head_b")):
            found.append(doc)
        for v in doc.values():
            head_records(v, found)
    elif isinstance(doc, list):
        for v in doc:
            head_records(v, found)
    return found


def check(record: dict) -> None:
    for suffix in ("", "_a", "_b"):
        if f"head{suffix}" in record:
            assert record.get(f"kv_head{suffix}") == record[f"head{suffix}"], record  # MHA: its own head


@pytest.mark.parametrize("run", RUNS, ids=str)
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_every_head_record_names_its_kv_head(mha, run, fmt):
    args = RUNS[run]
    if fmt == "jsonl" and run in ("explain", "verify"):
        pytest.skip(f"{run} has no jsonl")
    result = mha(*args, "-f", fmt)
    assert result.returncode == 0, result.stderr.decode()
    if fmt == "json":
        docs = [parse_json(result.stdout)]
    else:
        docs = [json.loads(line) for line in result.stdout.decode().splitlines()]
    records = [r for d in docs for r in head_records(d, [])]
    assert records, f"{run}: no head record"
    for r in records:
        check(r)


def test_diff_rows_name_each_models_kv_head_under_gqa():
    """A with 4 query heads reading 2 K/V heads (group 2), B plain: kv_head_a = head_a // 2, kv_head_b = head_b."""
    from mhacli.analyses.diff import TextDiff, summarise
    from mhacli.analyses.stats import STAT_NAMES

    n = 8  # 2 layers x 4 heads
    rng = np.random.default_rng(0)
    text = TextDiff(
        rng.random(n), rng.random((len(STAT_NAMES), n)), rng.random((len(STAT_NAMES), n)), ["mixed"] * n, ["mixed"] * n
    )
    doc = summarise([text], "js", "paired", (2, 4), (2, 4), (2, 1)).to_dict()
    for r in doc["heads"]:
        assert r["kv_head_a"] == r["head_a"] // 2 and r["kv_head_b"] == r["head_b"]
    assert {r["kv_head_a"] for r in doc["heads"]} == {0, 1}


def test_verify_worst_head_names_its_kv_head_under_gqa():
    from mhacli.analyses.verify import LayerCheck, VerifyReport

    layers = [LayerCheck(0, 1e-7, 1e-6, 1.0, [1e-8, 1e-8, 1e-8, 2e-7])]
    doc = VerifyReport(1e-5, 1e-4, 4, layers, None, group_size=2).to_dict()
    assert doc["worst_head"]["head"] == 3 and doc["worst_head"]["kv_head"] == 1
