"""The API's integer arguments follow one rule (mhacli.api_args.is_int): an int or a NumPy integer, never a bool."""

from __future__ import annotations

import numpy as np
import pytest

import mhacli
from mhacli.errors import UsageError


@pytest.fixture(scope="module")
def sample():
    return mhacli.load("sample")


def test_census_workers_may_be_a_numpy_integer(sample):
    """workers was the one integer argument that refused np.int64 (its own isinstance check)."""
    got = mhacli.census(sample, probe_count=1, repeat_length=4, random_length=4, workers=np.int64(1))
    assert got.to_dict() == mhacli.census(sample, probe_count=1, repeat_length=4, random_length=4, workers=1).to_dict()


@pytest.mark.parametrize("workers", [True, 1.0, "1", 0])
def test_census_workers_that_are_not_a_positive_int_are_refused(sample, workers):
    with pytest.raises(UsageError, match="workers"):
        mhacli.census(sample, probe_count=1, repeat_length=4, random_length=4, workers=workers)


def test_remove_pairs_take_numpy_integers_and_refuse_bools(sample):
    text = "The cat sat on the mat."
    a = sample.run(text, remove=[(np.int64(0), np.int32(1))]).stats(0)
    b = sample.run(text, remove=[(0, 1)]).stats(0)
    assert [s.to_dict() for s in a] == [s.to_dict() for s in b]
    with pytest.raises(UsageError, match="pairs of integers"):
        sample.run(text, remove=[(True, 1)])


@pytest.mark.parametrize("head", [True, 1.0, 99, -99])
def test_a_stats_head_that_is_not_a_head_is_refused(sample, head):
    with pytest.raises(UsageError, match="head"):
        sample.run("The cat sat.").stats(0, head=head)
