"""mhacli.analyses.census at its edges, in this process (mutation testing, tests/mutants.md).

A one-layer model (every test model had two layers or more, where any layer's row counts are the last one's) and a
head whose statistic is exactly its kind's threshold: the rule is "reaches its threshold" (docs/census.md), >=.
"""

from __future__ import annotations

import numpy as np
from cached_models import model as cached_model


def test_a_one_layer_model_has_its_statistics_and_rows():
    from mhacli.analyses.census import TALLIED, text_stats
    from mhacli.analyses.stats import SUPPORTED_STATS
    from mhacli.io.weights import load_model

    params = load_model(str(cached_model("census_one_layer", seed=4, n_layer=1, n_head=2)))
    ids = np.array([5, 6, 7, 8, 5, 6, 7, 8, 9])  # repeated: the second copy's rows have induction targets
    result = text_stats(params, ids, first_row=2)
    assert result.values.shape == (len(TALLIED), 1, 2)
    assert result.n_rows == len(ids) - 2
    assert len(result.support) == len(SUPPORTED_STATS) and max(result.support) > 0


def test_a_statistic_exactly_at_its_threshold_decides_the_kind():
    from mhacli.analyses.census import TALLIED, Tally, TextStats, verdicts
    from mhacli.analyses.stats import KIND_RULES, MIN_SUPPORT, SUPPORTED_STATS

    for kind, stat, threshold in KIND_RULES:
        values = np.full((len(TALLIED), 1, 1), np.nan)
        values[TALLIED.index(stat)] = threshold  # exactly: every other statistic undefined
        tally = Tally((1, 1))
        tally.add(TextStats(values, (MIN_SUPPORT,) * len(SUPPORTED_STATS), 10), 10)
        (verdict,) = verdicts({"corpus": tally})
        assert verdict.kind == kind, (kind, stat, threshold)
        assert verdict.mean == threshold
