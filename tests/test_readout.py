"""The shared read-out (mhacli.analyses.readout, mhacli.ops.tokens) against HF transformers' own logits.

The frozen final norm at the real residual must equal the model's final norm (for LayerNorm and RMSNorm families),
its linear part must be additive over a split of the residual, and each metric must equal the one computed from HF's
logits with torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import LLAMA, MODELS, bos_tokenizer, build, train_tokenizer

from mhacli.analyses.readout import METRICS, check_answer_pair, check_position, freeze_final_norm, metric
from mhacli.engine.forward import final_norm, forward
from mhacli.errors import UsageError
from mhacli.io.tokenizer import load_tokenizer
from mhacli.io.weights import load_model
from mhacli.ops.tokens import one_token

GPT2 = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=400, bos_token_id=0, eos_token_id=0)
# (1 + w) norm gains and a final soft-cap that bites (logits of ~1 squashed to at most 2)
GEMMA2_CAPPED = LLAMA | {"head_dim": 8, "query_pre_attn_scalar": 32, "attn_logit_softcapping": 5.0,
                         "final_logit_softcapping": 2.0}  # fmt: skip
IDS = [5, 17, 93, 40, 5, 17, 250, 3, 71]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tok = train_tokenizer(tmp_path_factory.mktemp("tok"))
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    return {
        "gpt2": build(tmp_path_factory.mktemp("gpt2"), "gpt2", GPT2, tok, seed=3),
        "llama_gqa": build(tmp_path_factory.mktemp("llama"), "llama", LLAMA, bos, seed=4),
        "olmo2": build(tmp_path_factory.mktemp("olmo2"), "olmo2", MODELS["olmo2"]["fields"], bos, seed=5),
        "gemma2_capped": build(tmp_path_factory.mktemp("gemma2"), "gemma2", GEMMA2_CAPPED, bos, seed=6),
    }


def last_residual(directory: Path) -> tuple[object, np.ndarray]:
    ckpt = load_model(str(directory))
    *_, last = forward(ckpt, IDS)
    return ckpt, last.residual


def hf_logits(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(torch.tensor([IDS]), labels=torch.tensor([IDS]))
    return out.logits[0].double(), float(out.loss)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "olmo2", "gemma2_capped"])
def test_frozen_norm_is_the_final_norm_and_splits_additively(models, name):
    ckpt, x = last_residual(models[name])
    frozen = freeze_final_norm(ckpt, x)
    want = final_norm(ckpt, x).astype(np.float64)
    np.testing.assert_allclose(frozen(x), want, atol=2e-5, rtol=1e-5)
    # what the residual is made of, split at random: the linear parts of the pieces add up to the whole
    rng = np.random.default_rng(0)
    pieces = rng.normal(size=(5, *x.shape))
    pieces[-1] = x - pieces[:-1].sum(axis=0)
    total = sum(frozen.linear(p) for p in pieces) + (0 if frozen.bias is None else frozen.bias)
    np.testing.assert_allclose(total, frozen(x), atol=1e-9)
    # frozen: a component's share uses x's scale, not its own (scaling the component scales its share)
    np.testing.assert_allclose(frozen.linear(3 * pieces[0]), 3 * frozen.linear(pieces[0]), atol=1e-9)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "gemma2_capped"])
@pytest.mark.parametrize("pos", [-1, 4])
def test_metrics_equal_hf(models, name, pos):
    import torch

    ckpt, x = last_residual(models[name])
    logits, loss = hf_logits(models[name])
    answer, wrong = 17, 93
    logprobs = torch.log_softmax(logits[pos], dim=-1)
    want = {
        "logit_diff": float(logits[pos, answer] - logits[pos, wrong]),
        "logprob": float(logprobs[answer]),
        "prob": float(logprobs[answer].exp()),
        "loss": loss,
    }
    for kind in METRICS:
        got = metric(ckpt, x, np.asarray(IDS), kind, answer, wrong, pos=pos)
        assert got == pytest.approx(want[kind], rel=1e-4, abs=1e-5), kind
    assert metric(ckpt, x, np.asarray(IDS), "logit_diff", answer, None, pos=pos) == pytest.approx(
        float(logits[pos, answer]), rel=1e-4, abs=1e-5
    )


def test_bad_metric_position_and_pair():
    with pytest.raises(UsageError, match="unknown metric 'nope'"):
        metric(None, np.zeros((2, 4)), np.zeros(2), "nope", 0)  # type: ignore[arg-type]
    assert check_position(-1, 5) == 4
    assert check_position(-5, 5) == 0
    assert check_position(4, 5) == 4
    for bad in (5, -6):
        with pytest.raises(UsageError, match=f"pos {bad} is outside the text: it has 5 tokens"):
            check_position(bad, 5)
    with pytest.raises(UsageError, match="wrong is the same token as answer"):
        check_answer_pair(7, 7, 10)
    with pytest.raises(UsageError, match="answer token id 10 is outside"):
        check_answer_pair(10, None, 10)
    with pytest.raises(UsageError, match="wrong token id -1 is outside"):
        check_answer_pair(3, -1, 10)
    check_answer_pair(3, 4, 10)
    check_answer_pair(0, None, 1)


def test_one_token_leaves_the_bos_off_and_names_several(tmp_path):
    tok = load_tokenizer(bos_tokenizer(tmp_path / "bos"))
    vocab = 400
    ids = tok.encode(" the")
    assert ids[0] == 0 and len(ids) == 2  # the BOS the tokenizer adds to every text
    got = one_token(tok, vocab, text=" the", token_id=None, param="answer")
    assert got is not None and got.id == ids[1] and got.token == " the"
    assert one_token(tok, vocab, text=None, token_id=None, param="answer") is None
    by_id = one_token(tok, vocab, text=None, token_id=ids[1], param="answer")
    assert by_id == got and by_id.to_dict() == {"token": " the", "id": ids[1]}
    long = " the cat sat quietly"
    n = len(tok.encode(long)) - 1
    with pytest.raises(UsageError, match=rf"answer ' the cat sat quietly' is {n} tokens \(' the', "):
        one_token(tok, vocab, text=long, token_id=None, param="answer")
    with pytest.raises(UsageError, match="wrong is empty"):
        one_token(tok, vocab, text="", token_id=None, param="wrong")
    with pytest.raises(UsageError, match="wrong_id 400 is outside the vocabulary"):
        one_token(tok, vocab, text=None, token_id=400, param="wrong")
    with pytest.raises(UsageError, match="give answer or answer_id, not both"):
        one_token(tok, vocab, text=" the", token_id=3, param="answer")
