"""The parts of maps a view shows (mhacli.analyses.partial), computed without the whole map, against its cells.

Also `mha inspect` on a terminal computing only its window, so a text whose whole maps would not fit still draws.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import build_model
from hypothesis import given, settings
from hypothesis import strategies as st

from mhacli.analyses.partial import MapRequest, TopSink, WindowSink, ranked, strongest
from mhacli.engine.attention import causal_attention


def random_qkv(seed: int, n_head: int, n_kv: int, n_seq: int):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((n_head, n_seq, 8)) * 2).astype(np.float32)
    k, v = ((rng.standard_normal((n_kv, n_seq, 8)) * 2).astype(np.float32) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("n_seq,n_head,n_kv,window,block", [
    (1, 2, 2, None, 16), (97, 4, 4, None, 16), (300, 4, 2, None, None), (300, 4, 4, 37, 16), (200, 2, 2, 1, 16),
])  # fmt: skip
def test_a_window_holds_exactly_the_cells_of_the_whole_map(n_seq, n_head, n_kv, window, block):
    """Any rows over any keys (key 0 with a later range, as the terminal pins it), for some heads.

    The same float32 values as those cells of the whole map, hidden cells 0; reading a cell that was not computed is an
    error.
    """
    q, k, v = random_qkv(n_seq, n_head, n_kv, n_seq)
    _, whole = causal_attention(q, k, v, 0.4, window=window, block=block)
    rng = np.random.default_rng(n_seq + 5)
    rows = np.unique(rng.integers(0, n_seq, size=min(n_seq, 40)))
    keys = np.unique(np.concatenate([[0], rng.integers(0, n_seq, size=min(n_seq, 30))]))
    heads = sorted({0, n_head - 1})
    sink = WindowSink(heads, n_seq, rows, keys)
    causal_attention(q, k, v, 0.4, window=window, block=block, sink=sink)
    for h, part in zip(heads, sink.maps()):
        assert part.shape == (n_seq, n_seq)
        for i in rows:
            assert np.array_equal(part[i, keys], whole[h, i, keys])
            assert part[i, int(keys[-1])] == whole[h, i, keys[-1]]
        missing = [j for j in range(n_seq) if j not in set(keys)]
        if missing:
            with pytest.raises(IndexError):
                part[int(rows[0]), missing[0]]
        if len(rows) < n_seq:
            with pytest.raises(IndexError):
                part[[r for r in range(n_seq) if r not in set(rows)][0], 0]


@pytest.mark.parametrize("window", [None, 5])
def test_the_top_keys_of_every_row_are_the_whole_maps(window):
    """Every row's strongest keys from the stream equal those of the whole map's row.

    Ordered as a stable argsort reversed (by weight, ties by the later key), with rows shorter than k, sharp rows full
    of zeros, and a sliding window.
    """
    q, k, v = random_qkv(3, 3, 3, 150)
    q[1] *= 40  # sharp: most weights underflow to exactly 0, so ties at the boundary are everywhere
    _, whole = causal_attention(q, k, v, 0.4, window=window, block=16)
    sink = TopSink([0, 1, 2], 150, 4)
    causal_attention(q, k, v, 0.4, window=window, block=16, sink=sink)
    for h, part in enumerate(sink.maps()):
        for i in range(150):
            keys, weights = strongest(part, i, 4)
            want = np.argsort(whole[h, i, : i + 1], kind="stable")[::-1][:4]
            assert keys.tolist() == want.tolist(), (h, i)
            assert np.array_equal(weights, whole[h, i, want])


@settings(max_examples=300, deadline=None)
@given(row=st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]), min_size=1, max_size=30), k=st.integers(1, 8))
def test_ranked_is_the_reversed_argsort(row, k):
    """The O(n) selection with exact tie handling lists what a stable argsort, reversed, lists first, in its order."""
    row = np.asarray(row, dtype=np.float32)
    assert ranked(row, k).tolist() == np.argsort(row, kind="stable")[::-1][:k].tolist()


def test_a_request_counts_its_cells():
    assert MapRequest(rows=(1, 2), keys=(0, 5, 6)).cells(100) == 6
    top = TopSink([0], 100, 3)  # what a head's top keys really hold, in float32 cells
    assert MapRequest(top=3).cells(100) * 4 == top.keys.nbytes + top.weights.nbytes


@pytest.fixture(scope="module")
def long_model(tmp_path_factory, tokenizer_dir):
    return build_model(tmp_path_factory.mktemp("long"), tokenizer_dir, n_positions=1500, n_layer=1, n_head=2)


def test_a_terminal_map_of_a_long_text_needs_only_its_window(long_model, mha):
    """A text whose whole maps need over 30 MiB (1,400 tokens, 2 heads) under --max-memory 20M.

    The terminal view computes only its window and draws it (rows from --from); the JSON of whole maps is refused with
    the guard's message; --query and --top work the same way.
    """
    ids = ",".join(str(3 + (i * 7) % 50) for i in range(1400))
    base = ["inspect", "--ids", ids, "-m", str(long_model), "--max-memory", "20M"]
    refused = mha(*base, "-f", "json")
    assert refused.returncode != 0 and b"more than 20.0 MiB" in refused.stderr
    shown = mha(*base, "-f", "rich", "--from", "1000", "-H", "1", env={"COLUMNS": "100", "NO_COLOR": "1"})
    assert shown.returncode == 0, shown.stderr
    rows = [int(m) for m in re.findall(rb"^\s*(\d+) (?!tokens:)", shown.stdout, flags=re.M)]  # the row labels
    assert rows and rows[0] == 1000 and max(rows) < 1100
    query = mha(*base, "-f", "text", "--query", "1300", "-H", "0")
    assert query.returncode == 0, query.stderr
    weights = [float(w) for w in re.findall(rb"^\s*\d+ .* (\d\.\d{4})$", query.stdout, flags=re.M)]
    assert len(weights) == 1301 and abs(sum(weights) - 1) < 1e-2  # the query's whole row, 4 decimals each
    top = mha(*base, "-f", "text", "--top", "2", "-H", "0")
    assert top.returncode == 0, top.stderr
    assert top.stdout.count(b" -> ") == 1400  # every row's two strongest keys
