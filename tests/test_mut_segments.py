"""mhacli.engine.segments against brute-force references: which text each row of a tile belongs to, and per text.

Written for the mutants of segments.py that the packed forwards' tests (tests/test_packing.py, test_pack_texts.py)
leave alive: their packs fit one block of rows, so every tile starts at row 0 and key 0, where a slice `ra + a` and
`ra - a` agree. The references here loop over single rows and keys, with no slice arithmetic of their own.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

LENGTHS = (3, 1, 5, 2, 6)  # 17 tokens, a one-token text among them
N_HEAD = 2


def text_of_rows(lengths) -> np.ndarray:
    """[n_seq]: the index of the text each token of the pack belongs to."""
    return np.concatenate([np.full(n, t) for t, n in enumerate(lengths)])


def start_of(lengths, t: int) -> int:
    return sum(lengths[:t])


def tiles(n_seq: int, rows: int, window: int | None):
    """(a, b, lo) of a kernel's tiles: rows in blocks of `rows`, keys from 0 or from a window's first key."""
    for a in range(0, n_seq, rows):
        b = min(n_seq, a + rows)
        yield a, b, 0 if window is None else max(0, a - window)


def reference_pieces(lengths, a: int, b: int, lo: int) -> list[tuple[int, int, int, int]]:
    """Brute force: for each text with a row in a..b-1, its first and last such row and its first key >= lo."""
    owner = text_of_rows(lengths)
    out = []
    for t in range(len(lengths)):
        rows = [r for r in range(a, b) if owner[r] == t]
        if rows:
            out.append((t, rows[0], rows[-1] + 1, max(lo, start_of(lengths, t))))
    return out


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 17, 40])
@pytest.mark.parametrize("window", [None, 0, 3])
def test_pieces_are_the_texts_each_tile_covers(rows, window):
    from mhacli.engine.segments import Segments

    seg = Segments(LENGTHS)
    for a, b, lo in tiles(seg.n_seq, rows, window):
        expected = reference_pieces(LENGTHS, a, b, lo)
        # at most one piece more than expected is read: a generator that never ends fails here instead of hanging
        got = list(itertools.islice(seg.pieces(a, b, lo), len(expected) + 1))
        assert got == expected, (a, b, lo)


class Recorder:
    """A sink that writes what it is given into its own map, as a KeepMap does, and checks the rows are its own."""

    def __init__(self, n_seq: int, concurrent: bool | None = None):
        self.map = np.zeros((N_HEAD, n_seq, n_seq))
        self.n_seq = n_seq
        if concurrent is not None:
            self.concurrent = concurrent

    def add(self, h: int, a: int, b: int, lo: int, p: np.ndarray) -> None:
        assert 0 <= lo <= a < b <= self.n_seq, (a, b, lo)
        assert p.shape[1:] == (b - a, b - lo), (p.shape, a, b, lo)
        self.map[h : h + len(p), a:b, lo:b] = p


@pytest.mark.parametrize("rows", [1, 3, 4, 17])
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("heads_per_call", [1, 2])
def test_a_pack_sink_hands_each_text_its_own_part_of_every_tile(rows, window, heads_per_call):
    from mhacli.engine.segments import PackSink, Segments

    seg = Segments(LENGTHS)
    n = seg.n_seq
    rng = np.random.default_rng(0)
    pack_map = rng.random((N_HEAD, n, n)) + 1.0  # every entry nonzero, so a misplaced one shows
    sinks = [Recorder(m) for m in LENGTHS]
    sink = PackSink(seg, sinks)
    expected = [np.zeros((N_HEAD, m, m)) for m in LENGTHS]
    owner = text_of_rows(LENGTHS)
    for a, b, lo in tiles(n, rows, window):
        for h in range(0, N_HEAD, heads_per_call):
            sink.add(h, a, b, lo, pack_map[h : h + heads_per_call, a:b, lo:b])
        for r in range(a, b):  # the reference: every row of the tile, every key of its own text from lo to b - 1
            t = owner[r]
            s = start_of(LENGTHS, t)
            for k in range(max(lo, s), b):
                if owner[k] == t:
                    expected[t][:, r - s, k - s] = pack_map[:, r, k]
    for t, (got, want) in enumerate(zip(sinks, expected)):
        np.testing.assert_array_equal(got.map, want, err_msg=f"text {t}")


def test_a_pack_sink_is_concurrent_only_when_every_text_sink_is():
    from mhacli.engine.segments import PackSink, Segments

    seg = Segments((2, 3))
    assert PackSink(seg, [Recorder(2, True), Recorder(3, True)]).concurrent is True
    assert PackSink(seg, [Recorder(2, True), Recorder(3, False)]).concurrent is False
    # a sink that does not say is not concurrent (mhacli.engine.attention's default): never called from two threads
    assert PackSink(seg, [Recorder(2, True), Recorder(3)]).concurrent is False
    assert PackSink(seg, [Recorder(2), Recorder(3)]).concurrent is False


def test_the_current_pack_is_seen_only_by_a_sequence_of_its_length():
    from mhacli.engine.segments import Segments, current, packed, positions

    seg = Segments((2, 3))
    assert current(5) is None
    with packed(seg):
        assert current(5) is seg
        assert current(4) is None  # another sequence (e.g. a text run alone inside): its one-text path
        np.testing.assert_array_equal(positions(5), [0, 1, 0, 1, 2])
        assert np.arange(10)[positions(4)].tolist() == [0, 1, 2, 3]
        with packed(None):
            assert current(5) is None
        assert current(5) is seg
    assert current(5) is None


def test_a_text_of_no_tokens_is_refused_naming_the_lengths():
    from mhacli.engine.segments import Segments

    with pytest.raises(ValueError, match=r"at least one token.*\(2, 0, 1\)"):
        Segments((2, 0, 1))
    seg = Segments((1, 1, 2))  # one-token texts are texts
    assert seg.firsts.tolist() == [0, 1, 2]
    assert seg.positions.tolist() == [0, 0, 0, 1]
