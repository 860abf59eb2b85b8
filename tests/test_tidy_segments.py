"""The two pack helpers census, diff and ablate share (mhacli.engine.segments.end_to_end and per_text)."""

from __future__ import annotations

import numpy as np

from mhacli.engine.segments import PackSink, end_to_end, per_text


def test_texts_end_to_end_restart_their_positions():
    ids, segments = end_to_end([[5, 6, 7], np.array([8, 9], dtype=np.int32), (1,)])
    assert ids.dtype == np.int64 and ids.tolist() == [5, 6, 7, 8, 9, 1]
    assert segments is not None and segments.lengths == (3, 2, 1)
    assert segments.positions.tolist() == [0, 1, 2, 0, 1, 0]


def test_one_text_runs_unpacked():
    ids, segments = end_to_end([np.array([3, 4], dtype=np.int32)])
    assert segments is None and ids.dtype == np.int64 and ids.tolist() == [3, 4]


class Collect:
    def __init__(self) -> None:
        self.got: list[tuple] = []

    def add(self, h, a, b, lo, p) -> None:
        self.got.append((a, b, lo, p.copy()))


def test_one_sink_per_text_gets_its_own_part():
    alone = Collect()
    assert per_text(None, [alone]) is alone  # one text: its own sink, nothing in between
    _, segments = end_to_end([[1, 2], [3, 4, 5]])
    sinks = [Collect(), Collect()]
    split = per_text(segments, sinks)
    assert isinstance(split, PackSink)
    p = np.arange(25, dtype=np.float32).reshape(1, 5, 5)  # one head, rows 0..4 over keys 0..4
    split.add(0, 0, 5, 0, p)
    (a, b, lo, first), (a2, b2, lo2, second) = sinks[0].got[0], sinks[1].got[0]
    assert (a, b, lo) == (0, 2, 0) and np.array_equal(first, p[:, 0:2, 0:2])
    assert (a2, b2, lo2) == (0, 3, 0) and np.array_equal(second, p[:, 2:5, 2:5])  # in the text's own coordinates
