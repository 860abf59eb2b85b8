"""mhacli.analyses.loss with a final soft-cap and on batches of variants, against a float64 reference written here.

Mutation testing (tests/mutants.md): the in-process loss tests run GPT-2 models, which cap nothing, so mutants that
drop the cap (Gemma 2's final_logit_softcapping: logits z -> cap * tanh(z / cap)) survived, and text_losses of a
batch of variants had no test (its twin variant_losses, dead since packing, was removed). The reference: the
final norm of the engine (itself checked against HF in test_parity.py), then logits, cap and log-sum-exp in float64
(scipy), each text's targets t >= max(1, loss_from) picked by a plain loop.
"""

from __future__ import annotations

import numpy as np
import pytest
from cached_models import model as cached_model

RTOL = 2e-5  # float32 logits and a streamed float32 log-sum-exp against float64
CAP = 0.2  # bites: the test model's logits reach 0.5 (a cap of 1 on the random ones below)


@pytest.fixture(scope="module")
def ckpt():
    from mhacli.io.weights import load_model

    return load_model(str(cached_model("ablate_ref", seed=3, n_layer=3, n_head=4)))


class CappedConfig:
    def __init__(self, config, cap: float):
        self._config, self.logit_softcap = config, cap

    def __getattr__(self, name):
        return getattr(self._config, name)


class Capped:
    """The checkpoint with its final logits capped at `cap`, as a Gemma 2 checkpoint's are; else the same."""

    def __init__(self, params, cap: float):
        self._params, self.config = params, CappedConfig(params.config, cap)

    def __getattr__(self, name):
        return getattr(self._params, name)


def reference_losses(h: np.ndarray, w: np.ndarray, targets, cap: float | None) -> np.ndarray:
    """-ln softmax(cap * tanh(h w^T / cap))[target] per row, float64."""
    from scipy.special import logsumexp

    z = h.astype(np.float64) @ w.astype(np.float64).T
    if cap is not None:
        z = cap * np.tanh(z / cap)
    return logsumexp(z, axis=1) - z[np.arange(len(targets)), targets]


def scored_reference(params, residual: np.ndarray, ids, loss_from: int, cap: float | None) -> np.ndarray:
    from mhacli.analyses.loss import output_head
    from mhacli.engine.forward import final_norm

    rows = [t - 1 for t in range(len(ids)) if t >= max(1, loss_from)]
    h = final_norm(params, residual)[rows]
    return reference_losses(h, output_head(params), [int(ids[t + 1]) for t in rows], cap)


@pytest.mark.parametrize("cap", [None, 1.0, CAP])
@pytest.mark.parametrize("block", [3, 7, 64])
def test_streamed_losses_with_a_soft_cap_equal_the_reference(cap, block):
    from mhacli.analyses.loss import logsumexp_rows, soft_cap, token_losses

    rng = np.random.default_rng(1)
    h = rng.normal(size=(6, 16)).astype(np.float32)
    w = rng.normal(size=(50, 16)).astype(np.float32)  # logits of a few units: a cap of 1 bites
    targets = rng.integers(0, 50, size=6)
    want = reference_losses(h, w, targets, cap)
    np.testing.assert_allclose(token_losses(h, w, targets, block, cap), want, rtol=RTOL)

    from scipy.special import logsumexp

    z = h.astype(np.float64) @ w.astype(np.float64).T
    capped = z if cap is None else cap * np.tanh(z / cap)
    np.testing.assert_allclose(logsumexp_rows(h, w, block, cap), logsumexp(capped, axis=1), rtol=RTOL)
    x = z.astype(np.float32)
    np.testing.assert_allclose(soft_cap(x.copy(), cap), capped, rtol=RTOL, atol=1e-6)


def test_a_model_that_caps_its_logits_is_scored_capped(ckpt):
    from mhacli.analyses.loss import logits, scored_losses, scored_positions
    from mhacli.engine.forward import final_norm, forward

    ids = np.random.default_rng(5).integers(1, 400, size=12)
    residual = list(forward(ckpt, ids))[-1].residual
    capped = Capped(ckpt, CAP)
    raw = final_norm(ckpt, residual).astype(np.float64) @ ckpt.get("wte.weight").astype(np.float64).T
    assert np.abs(raw).max() > 2 * CAP  # the cap changes the losses of this model

    got = scored_losses(capped, residual, ids, scored_positions([len(ids)], 1))
    np.testing.assert_allclose(got, scored_reference(ckpt, residual, ids, 1, CAP), rtol=RTOL)
    assert not np.allclose(got, scored_reference(ckpt, residual, ids, 1, None), rtol=1e-3)
    np.testing.assert_allclose(logits(capped, residual), CAP * np.tanh(raw / CAP), rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("loss_from", [1, 4])
@pytest.mark.parametrize("cap", [None, CAP])
def test_a_batch_of_variants_has_each_variants_own_losses(ckpt, loss_from, cap):
    from mhacli.analyses.loss import output_head, text_losses
    from mhacli.engine.forward import forward

    params = ckpt if cap is None else Capped(ckpt, cap)
    ids = np.random.default_rng(6).integers(1, 400, size=10)
    other = np.random.default_rng(7).integers(1, 400, size=10)
    # two variants of one text: different residual streams over the same ids
    batch = np.stack([list(forward(ckpt, t))[-1].residual for t in (ids, other)])
    for w in (None, output_head(ckpt)):
        got = text_losses(params, batch, ids, loss_from, w)
        assert got.shape == (2, len(ids) - max(1, loss_from))
        for b in range(2):
            want = scored_reference(ckpt, batch[b], ids, loss_from, cap)
            np.testing.assert_allclose(got[b], want, rtol=RTOL)
            np.testing.assert_allclose(text_losses(params, batch[b], ids, loss_from, w), want, rtol=RTOL)
    default = text_losses(params, batch, ids)  # loss_from 1: every target from position 1
    for b in range(2):
        np.testing.assert_allclose(default[b], scored_reference(ckpt, batch[b], ids, 1, cap), rtol=RTOL)


def test_the_scored_positions_of_a_pack_are_each_texts_own_by_default():
    from mhacli.analyses.loss import scored_positions

    lengths = [3, 4, 2]
    want, offset = [], 0
    for n in lengths:  # every target t >= 1 of each text, predicted at t - 1 in the pack
        want += [offset + t - 1 for t in range(1, n)]
        offset += n
    assert scored_positions(lengths).tolist() == want
