"""mhacli.analyses.ablate's argument checks at their edges, in this process (mutation testing, tests/mutants.md).

The long-index and seed-count limits were reached only through the CLI in a subprocess (tests/test_hostile.py), so
mutants of their bounds, messages and parameter names survived the in-process selection. Expected values are the
documented limits (MAX_INDEX_DIGITS digits, MAX_SEEDS orders) and properties: an error names its parameter for the
door to spell, every random order that removes all heads reaches the same model.
"""

from __future__ import annotations

import numpy as np
import pytest
from cached_models import model as cached_model

N_LAYER, N_HEAD = 3, 4
TEXTS = [np.random.default_rng(s).integers(1, 400, size=n) for s, n in ((21, 6), (22, 9))]


@pytest.fixture(scope="module")
def ckpt():
    from mhacli.io.weights import load_model

    return load_model(str(cached_model("ablate_ref", seed=3, n_layer=N_LAYER, n_head=N_HEAD)))


def usage_error(fn, *args):
    from mhacli.errors import UsageError

    with pytest.raises(UsageError) as err:
        fn(*args)
    return err.value


def test_an_index_of_more_digits_than_any_model_is_out_of_range_said_short():
    from mhacli.analyses.ablate import MAX_INDEX_DIGITS, parse_heads

    longest = "1" + "0" * (MAX_INDEX_DIGITS - 1)  # the longest index still read as a number
    err = usage_error(parse_heads, f"{longest}.0", N_LAYER, N_HEAD)
    assert f"layer {longest} is out of range" in str(err)
    err = usage_error(parse_heads, f"0.{longest}", N_LAYER, N_HEAD)
    assert f"head {longest} is out of range" in str(err)
    # leading zeros up to the limit are still the index they spell
    assert parse_heads("0" * (MAX_INDEX_DIGITS - 1) + "2.3", N_LAYER, N_HEAD) == [(2, 3)]

    for spec in (f"1{longest}.0", f"0.1{longest}"):  # one digit more: refused before int(), naming the limits
        err = usage_error(parse_heads, spec, N_LAYER, N_HEAD)
        assert err.params == ("ablate",)
        assert str(err).endswith(f": {spec!r} is out of range (this model has layers 0..2, heads 0..3)")
        assert "{" not in str(err), f"a parameter the door did not spell: {err}"


@pytest.mark.parametrize("build", [lambda n: "1" * n + ".0", lambda n: "x" * n])
def test_a_long_spec_is_quoted_by_its_first_forty_characters(build):
    from mhacli.analyses.ablate import parse_heads

    spec = build(60)
    err = usage_error(parse_heads, spec, N_LAYER, N_HEAD)
    assert repr(spec[:40]) in str(err)
    assert repr(spec[:41]) not in str(err)
    assert err.params == ("ablate",)


def test_the_seed_count_is_bounded_by_max_seeds_inclusive(ckpt, monkeypatch):
    from mhacli.analyses import ablate

    monkeypatch.setattr(ablate, "MAX_SEEDS", 3)  # the bound itself, small enough to run
    ablator = ablate.Ablator(ckpt, TEXTS)
    for seeds, words in ((4, "must be at most 3"), (0, "must be at least 1")):
        err = usage_error(ablate.random_curve, ablator, 1.0, seeds)
        assert err.params == ("seeds",)
        assert str(err).endswith(f" {seeds} {words}") and "{" not in str(err)

    # MAX_SEEDS itself runs; with step 1 every order removes every head, so all orders reach one model
    steps = ablate.random_curve(ablator, 1.0, 3)
    assert [s.n_removed for s in steps] == [0, N_LAYER * N_HEAD]
    assert steps[0].loss_mean == pytest.approx(ablator.baseline, rel=1e-12)
    everything = ablator.loss([(layer, h) for layer in range(N_LAYER) for h in range(N_HEAD)])
    assert steps[1].loss_mean == pytest.approx(everything, rel=1e-6)
    assert steps[1].loss_std <= 1e-6 * everything
