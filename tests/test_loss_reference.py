"""The NumPy loss (mhacli.analyses.loss) in this process against scipy, plain float64 and HF references.

Issue 37 item 3 (mutation testing): the streamed log-softmax at any block size against scipy's logsumexp, the
output head tied or untied against HF's logits, and the scored positions t >= max(1, loss_from) (CLI.md "Ablation").
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from cached_models import model as cached_model

IDS = np.random.default_rng(5).integers(1, 400, size=12)


@pytest.fixture(scope="module")
def models() -> dict:
    tied = cached_model("loss_tied", seed=1)
    untied = cached_model("loss_untied", seed=2, tie_word_embeddings=False)
    base = cached_model("loss_base", seed=3, lm_head=False, tie_word_embeddings=False)
    return {"tied": tied, "untied": untied, "base": base}


def hf_logits(directory) -> np.ndarray:
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([list(IDS)])).logits[0].double().numpy()


def reference_losses(logits: np.ndarray, ids: np.ndarray, loss_from: int) -> np.ndarray:
    """-ln softmax(logits[t - 1])[ids[t]] for t >= max(1, loss_from), float64."""
    from scipy.special import logsumexp

    start = max(1, loss_from)
    rows = logits[start - 1 : -1]
    return logsumexp(rows, axis=1) - rows[np.arange(len(rows)), ids[start:]]


@pytest.mark.parametrize("block", [1, 3, 7, 64, 8192])
def test_streamed_logsumexp_equals_scipy_at_any_block(block):
    from scipy.special import logsumexp

    from mhacli.analyses.loss import logsumexp_rows, token_losses

    rng = np.random.default_rng(block)
    h = rng.normal(size=(6, 16)).astype(np.float32)
    w = rng.normal(size=(50, 16)).astype(np.float32)
    w[0] *= 4.0  # the largest logit of some rows in the first block, of others in a later one
    w[-1] *= 4.0
    logits = h.astype(np.float64) @ w.astype(np.float64).T
    assert len(set(np.argmax(logits, axis=1).tolist())) > 1
    got = logsumexp_rows(h, w, block)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, logsumexp(logits, axis=1), rtol=1e-6)
    targets = rng.integers(0, 50, size=6)
    want = logsumexp(logits, axis=1) - logits[np.arange(6), targets]
    np.testing.assert_allclose(token_losses(h, w, targets, block), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["tied", "untied"])
@pytest.mark.parametrize("loss_from", [0, 1, 2, 11])
def test_text_losses_and_logits_equal_hf(models, kind, loss_from):
    from mhacli.analyses.loss import logits, output_head, text_losses
    from mhacli.engine.forward import forward
    from mhacli.io.weights import load_model

    ckpt = load_model(str(models[kind]))
    ref = hf_logits(models[kind])
    residual = list(forward(ckpt, IDS))[-1].residual
    got = text_losses(ckpt, residual, IDS, loss_from)
    assert got.shape == (len(IDS) - max(1, loss_from),)
    np.testing.assert_allclose(got, reference_losses(ref, IDS, loss_from), rtol=1e-5, atol=1e-5)
    w = output_head(ckpt)
    np.testing.assert_allclose(text_losses(ckpt, residual, IDS, loss_from, w), got)
    np.testing.assert_allclose(logits(ckpt, residual), ref, atol=1e-4)


def test_untied_head_is_not_the_embedding(models):
    from mhacli.analyses.loss import output_head
    from mhacli.io.weights import load_model

    tied, untied = load_model(str(models["tied"])), load_model(str(models["untied"]))
    assert np.array_equal(output_head(tied), tied.get("wte.weight"))
    assert not np.array_equal(output_head(untied), untied.get("wte.weight"))


def test_a_base_model_without_output_head_is_refused(models):
    from mhacli.analyses.loss import output_head
    from mhacli.errors import ModelError
    from mhacli.io.weights import load_model

    message = (
        "this checkpoint has no lm_head.weight and does not tie it to the embeddings (a base model without its "
        "output head): the loss needs the output head"
    )
    base = load_model(str(models["base"]))
    with pytest.raises(ModelError) as err:
        output_head(base)
    assert str(err.value) == message
    with pytest.raises(ModelError) as err:  # parameters that hold no tensor table at all
        output_head(types.SimpleNamespace(config=base.config))
    assert str(err.value) == message


def test_first_target_is_max_1_loss_from_and_refuses_nothing_to_score():
    from mhacli.analyses.loss import first_target
    from mhacli.errors import UsageError

    assert [first_target(5, k) for k in (-3, 0, 1, 2, 4)] == [1, 1, 1, 2, 4]
    assert first_target(2) == 1
    with pytest.raises(UsageError) as err:
        first_target(1)
    assert str(err.value) == "the text is one token long: there is no next token to score (the loss needs at least two)"
    with pytest.raises(UsageError, match=r"^loss_from 5 is past the text: it has tokens 0\.\.4"):
        first_target(5, 5)


def test_logsumexp_is_stable_for_each_row_on_its_own_scale():
    """A row of logits near 1000 beside a row near 0: each row's own maximum keeps the other from underflowing."""
    from mhacli.analyses.loss import logsumexp_rows

    h = np.array([[100.0, 0.0], [0.01, 0.0]], dtype=np.float32)
    w = np.array([[10.0, 0.0], [9.0, 1.0], [-3.0, 2.0]], dtype=np.float32)
    logits = h.astype(np.float64) @ w.astype(np.float64).T
    want = logits.max(axis=1) + np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1))
    for block in (1, 2, 3):
        np.testing.assert_allclose(logsumexp_rows(h, w, block), want, rtol=1e-6)
