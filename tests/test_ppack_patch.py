"""mha patch --pack-tokens: several pairs in one rerun agree with each pair run alone, and with TransformerLens.

Packs are checked against the unpacked runs (each pair alone, tests/test_patch.py checks those against TransformerLens)
and once directly against TransformerLens: pairs of mixed lengths, one of a single token, one longer than the pack.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import LLAMA, bos_tokenizer, build, run_mha, train_tokenizer, transformer_lens_bridge

import mhacli
import mhacli.analyses.patch as patching
from mhacli.analyses.patch import SITES, Pair, patch
from mhacli.errors import UsageError

GPT2 = dict(n_layer=3, n_head=4, n_embd=32, n_positions=64, vocab_size=400, bos_token_id=0, eos_token_id=0)
LLAMA_GQA = LLAMA | {"num_hidden_layers": 3}  # 8 query heads sharing 2 K/V heads, rotary positions
# A pack's numbers against each pair alone: the same products in other block shapes, float32 rounding of logits
# of order 1. Measured over this file: at most 1.5e-7 absolute; relative to the run's largest value at most 2.5e-8
# where values are ~6, 3e-6 where they are ~0.004 (prob).
PACK_RTOL = 1e-6
PACK_ATOL = 2e-7
TL_ATOL = 1e-4
PACK = 20  # tokens per pack below: lengths 7, 1, 5 | 12, 3 | 25 (longer: alone) | 6
MIXED = (7, 1, 5, 12, 3, 25, 6)
SAME = (6, 6, 6, 6, 6)  # by_pos and resid need one length: packs of 3 + 2 pairs at PACK


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tok = train_tokenizer(tmp_path_factory.mktemp("tok"))
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    dirs = {
        "gpt2": build(tmp_path_factory.mktemp("gpt2"), "gpt2", GPT2, tok, seed=1),
        "llama_gqa": build(tmp_path_factory.mktemp("llama"), "llama", LLAMA_GQA, bos, seed=2),
    }
    return {name: (d, mhacli.load(d)) for name, d in dirs.items()}


def _pairs(n_vocab: int, lengths, seed: int = 0) -> list[Pair]:
    """Random clean prompts of these lengths, each corrupted at one or two positions; distinct answer and wrong."""
    rng = np.random.default_rng(seed)
    pairs = []
    for n in lengths:
        clean = rng.integers(1, n_vocab, n)
        corrupt = clean.copy()
        where = rng.choice(n, size=min(n, 2), replace=False)
        corrupt[where] = (clean[where] + rng.integers(1, n_vocab - 1, len(where))) % (n_vocab - 1) + 1
        answer, wrong = rng.choice(np.arange(1, n_vocab), size=2, replace=False)
        pairs.append(Pair(clean, corrupt, int(answer), int(wrong)))
    return pairs


@pytest.fixture
def packs_run(monkeypatch):
    """The number of tokens of every packed rerun (none: the pairs all ran alone)."""
    seen: list[int] = []
    real = patching.forward_from

    def spy(params, x, first, stop, **kw):
        if kw.get("segments") is not None:
            seen.append(kw["segments"].n_seq)
        return real(params, x, first, stop, **kw)

    monkeypatch.setattr(patching, "forward_from", spy)
    return seen


def _agree(packed, alone) -> None:
    assert packed.units == alone.units
    want = np.asarray([alone.clean_value, alone.corrupt_value, *alone.values])
    got = np.asarray([packed.clean_value, packed.corrupt_value, *packed.values])
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err <= PACK_ATOL + PACK_RTOL * scale, f"packed vs alone: {err:.2e}, the largest value {scale:.3g}"


def _both(ckpt, pairs, **kw):
    return patch(ckpt, pairs, pack_tokens=PACK, **kw), patch(ckpt, pairs, pack_tokens=1, **kw)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_packed_pairs_equal_each_pair_alone_at_every_site(models, packs_run, name, site, direction):
    _, model = models[name]
    lengths = SAME if site == "resid" else MIXED  # resid is always per position: one length
    pairs = _pairs(model.config.vocab_size, lengths, seed=len(site))
    packed, alone = _both(model.checkpoint, pairs, site=site, by_pos=site == "resid", direction=direction)
    assert sorted(set(packs_run)) == ([12, 18] if site == "resid" else [13, 15])  # 25 and the last 6 alone
    _agree(packed, alone)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("site", ["z", "q", "k", "v", "pattern"])
def test_packed_pairs_by_position(models, packs_run, name, site):
    _, model = models[name]
    pairs = _pairs(model.config.vocab_size, SAME, seed=11)
    packed, alone = _both(model.checkpoint, pairs, site=site, by_pos=True, batch=7)
    assert packs_run
    assert {u[2] for u in packed.units} == set(range(SAME[0]))
    _agree(packed, alone)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("receiver", ["q", "k", "v"])
def test_packed_direct_path_patching(models, packs_run, name, receiver):
    _, model = models[name]
    pairs = _pairs(model.config.vocab_size, MIXED, seed=12)
    packed, alone = _both(model.checkpoint, pairs, sender=(0, 1), receiver_site=receiver)
    assert packs_run
    _agree(packed, alone)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("kind", ["logit_diff", "logprob", "prob", "loss"])
def test_packed_pairs_every_metric(models, packs_run, name, kind):
    """loss reads every position of a pair's own rows: a pair's neighbours in the pack must not leak into it."""
    _, model = models[name]
    lengths = MIXED if kind != "loss" else tuple(max(2, n) for n in MIXED)  # a 1-token prompt has no loss
    pairs = _pairs(model.config.vocab_size, lengths, seed=13)
    packed, alone = _both(model.checkpoint, pairs, metric_kind=kind)
    assert packs_run
    _agree(packed, alone)


def test_packs_hold_at_most_pack_rows_over_the_variants_tokens(models, packs_run, monkeypatch):
    """PACK_ROWS bounds a rerun's rows: with 4 heads a layer, packs of at most 40 // 4 = 10 tokens; same numbers."""
    _, model = models["gpt2"]
    monkeypatch.setattr(patching, "PACK_ROWS", 40)
    pairs = _pairs(model.config.vocab_size, MIXED, seed=14)
    packed, alone = _both(model.checkpoint, pairs, site="z")
    assert set(packs_run) == {8}  # 7 + 1; then 5, 12, 3, 25 and 6 alone
    _agree(packed, alone)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_packed_pairs_equal_transformer_lens(models, packs_run, name):
    """The mean over mixed-length pairs of get_act_patch_attn_head_out_all_pos, TransformerLens on one thread."""
    import torch
    from transformer_lens import patching as tl_patching

    directory, model = models[name]
    pairs = _pairs(model.config.vocab_size, MIXED[:5], seed=15)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bridge = transformer_lens_bridge(directory, processed=False)
        theirs = []
        for p in pairs:
            _, cache = bridge.run_with_cache(torch.tensor(p.clean)[None])

            def metric(logits, p=p):
                return logits[0, -1, p.answer] - logits[0, -1, p.wrong]

            with torch.no_grad():
                theirs.append(
                    tl_patching.get_act_patch_attn_head_out_all_pos(
                        bridge, torch.tensor(p.corrupt)[None], cache, metric
                    ).numpy()
                )
    finally:
        torch.set_num_threads(threads)
    ours = patch(model.checkpoint, pairs, pack_tokens=PACK)
    assert packs_run
    got = np.full_like(theirs[0], np.nan)
    for (layer, h, _), v in zip(ours.units, ours.values):
        got[layer, h] = v
    np.testing.assert_allclose(got, np.mean(theirs, axis=0), atol=TL_ATOL)


def test_pack_tokens_below_one_is_a_usage_error_naming_it(models):
    _, model = models["gpt2"]
    pairs = _pairs(model.config.vocab_size, (4,))
    with pytest.raises(UsageError) as err:
        patch(model.checkpoint, pairs, pack_tokens=0)
    assert err.value.params == ("pack_tokens",)
    bundled = mhacli.load()
    with pytest.raises(UsageError, match="^pack_tokens 0 must be at least 1$"):
        mhacli.patch(bundled, "a b a", "c b a", answer=" b", wrong=" c", pack_tokens=0)
    with pytest.raises(UsageError, match="pack_tokens must be an int"):
        mhacli.patch(bundled, "a b a", "c b a", answer=" b", wrong=" c", pack_tokens=2.0)  # type: ignore[arg-type]
    r = run_mha("patch", "a b a", "c b a", "--answer", " b", "--wrong", " c", "--pack-tokens", "0")
    assert r.returncode == 2
    assert r.stderr.decode().strip().splitlines() == ["error: --pack-tokens 0 must be at least 1"]


def test_pairs_file_packed_and_alone_through_the_cli(tmp_path):
    """`mha patch --pairs FILE --pack-tokens N` (the bundled model): every pair alone gives the same document."""
    lines = [
        {"clean": "a b c d a b c", "corrupt": "d c b a a b c", "answer": " d", "wrong": " a"},
        {"clean": "a b a", "corrupt": "c b a", "answer": " b", "wrong": " c"},
        {"clean": "the cat sat", "corrupt": "the dog sat", "answer": " on", "wrong": " in"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    docs = []
    for n in ("64", "1"):
        r = run_mha("patch", "--pairs", str(path), "--pack-tokens", n, "-f", "json")
        assert r.returncode == 0, r.stderr
        docs.append(json.loads(r.stdout))
    packed, alone = ({(h["layer"], h["head"]): h["value"] for h in d["heads"]} for d in docs)
    assert packed.keys() == alone.keys() and len(packed) == 8  # the bundled model: 2 layers x 4 heads
    want = np.asarray([alone[k] for k in alone])
    got = np.asarray([packed[k] for k in alone])
    assert np.abs(got - want).max() <= PACK_ATOL + PACK_RTOL * np.abs(want).max()
