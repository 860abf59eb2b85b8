"""Circuits from the weights alone (mhacli.analyses.circuits).

Against TransformerLens (its bridge over the same HF checkpoint, raw and with its default weight processing):
composition scores in every mode, the OV and QK circuits' eigenvalues, the full OV circuit's eigenvalues and
copying scores, on a tiny random GPT-2 and a tiny grouped-query Llama. Against brute force in float64 with every
[n_embd, n_embd] and [vocab, vocab] matrix formed: the scores and the token pairs. On the bundled model: the
induction head's keys are fed by the previous-token head, and it copies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import LLAMA, SAMPLE, bos_tokenizer, build, train_tokenizer, transformer_lens_bridge

import mhacli
from mhacli.analyses import circuits as C

TL_ATOL = 1e-4  # TransformerLens computes in float32
EXACT_ATOL = 1e-6  # the factored algebra vs the brute-force products, both float64

GPT2 = dict(n_layer=3, n_head=4, n_embd=32, n_positions=64, vocab_size=400, bos_token_id=0, eos_token_id=0)
LLAMA_GQA = LLAMA | {"num_hidden_layers": 3}  # 8 query heads sharing 2 K/V heads


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    tok = train_tokenizer(tmp_path_factory.mktemp("tok"))
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    return {
        "gpt2": build(tmp_path_factory.mktemp("gpt2"), "gpt2", GPT2, tok, seed=1),
        "llama_gqa": build(tmp_path_factory.mktemp("llama"), "llama", LLAMA_GQA, bos, seed=2),
    }


@pytest.fixture(scope="module")
def bridges(checkpoints):
    pytest.importorskip("transformer_lens")
    return {
        (name, fold): transformer_lens_bridge(d, processed=fold) for name, d in checkpoints.items() for fold in (0, 1)
    }


def earlier(n_layer: int, n_head: int) -> np.ndarray:
    """[n_layer, n_head, n_layer, n_head] bool: layer of the first head < layer of the second."""
    layer = np.arange(n_layer)[:, None, None, None]
    return np.broadcast_to(layer < np.arange(n_layer)[None, None, :, None], (n_layer, n_head, n_layer, n_head))


def sorted_spectrum(eig: np.ndarray) -> np.ndarray:
    """Eigenvalues compared as their sorted magnitudes and the sorted real parts (order-free)."""
    return np.concatenate([np.sort(np.abs(eig), axis=-1), np.sort(eig.real, axis=-1)], axis=-1)


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "fold_ln"])
@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_composition_scores_equal_transformer_lens(checkpoints, bridges, name, fold):
    model = mhacli.load(checkpoints[name])
    c = model.config
    f = C.head_factors(model.checkpoint, fold_ln=fold)
    mask = earlier(c.n_layer, c.n_head)
    for mode in C.MODES:
        want = bridges[name, fold].all_composition_scores(mode).scores.detach().double().numpy()
        got = C.composition_scores(f, mode)
        assert np.isnan(got[~mask]).all()
        err = float(np.abs(got[mask] - want[mask]).max())
        assert err < TL_ATOL, f"{name} {mode} fold_ln={fold}: max |ours - TransformerLens| = {err:.2e}"
        assert np.ptp(want[mask]) > 0.05, "the scores differ between pairs (the test can see a swapped head)"


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "fold_ln"])
@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_circuit_eigenvalues_and_copying_equal_transformer_lens(checkpoints, bridges, name, fold):
    model = mhacli.load(checkpoints[name])
    c = model.config
    b = bridges[name, fold]
    f = C.head_factors(model.checkpoint, fold_ln=fold)
    g = C.grams(C.vocab_side(model.checkpoint, fold_ln=fold))
    n = c.n_layer * c.n_head
    full_ov = b.W_E @ b.OV @ b.W_U  # a FactoredMatrix [n_layer, n_head, vocab, vocab]
    pairs = {
        "OV": (C.ov_eigenvalues(f), b.OV.eigenvalues),
        "QK": (C.qk_eigenvalues(f), b.QK.eigenvalues),
        "full OV": (C.full_ov_eigenvalues(f, g), full_ov.eigenvalues),
    }
    for what, (ours, theirs) in pairs.items():
        theirs = theirs.detach().numpy().reshape(n, -1)
        scale = max(1.0, float(np.abs(theirs).max()))
        err = float(np.abs(sorted_spectrum(ours) - sorted_spectrum(theirs)).max()) / scale
        assert err < TL_ATOL, f"{name} {what} fold_ln={fold}: eigenvalues differ by {err:.2e} (relative)"
    eig = full_ov.eigenvalues.detach().numpy().reshape(c.n_layer, c.n_head, -1)
    want = eig.real.sum(-1) / np.abs(eig).sum(-1)
    err = float(np.abs(C.copying_scores(f, g) - want).max())
    assert err < TL_ATOL, f"{name} fold_ln={fold}: copying scores differ by {err:.2e}"


def brute_force_factors(f: C.Factors, i: int) -> dict[str, np.ndarray]:
    """Head i's circuits as whole [n_embd, n_embd] matrices, float64."""
    w_qk = f.w_q[i] @ f.w_k[i].T
    return {"Q": w_qk, "K": w_qk.T, "V": f.w_v[i] @ f.w_o[i]}


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "fold_ln"])
@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_scores_equal_brute_force(checkpoints, name, fold):
    model = mhacli.load(checkpoints[name])
    c = model.config
    f = C.head_factors(model.checkpoint, fold_ln=fold)
    nh = c.n_head
    for mode in C.MODES:
        got = C.composition_scores(f, mode).reshape(c.n_layer * nh, c.n_layer * nh)
        for i in range(c.n_layer * nh):
            for j in range(c.n_layer * nh):
                if i // nh >= j // nh:
                    continue
                left, right = brute_force_factors(f, i)["V"], brute_force_factors(f, j)[mode]
                want = np.linalg.norm(left @ right) / np.linalg.norm(left) / np.linalg.norm(right)
                assert abs(got[i, j] - want) < EXACT_ATOL, (name, mode, i, j, got[i, j], want)


def folded_vocab(model, fold: bool) -> tuple[np.ndarray, np.ndarray]:
    """W_E [vocab, n_embd] and W_U [n_embd, vocab], float64, folded as TransformerLens does, by hand."""
    v = C.vocab_side(model.checkpoint, fold_ln=fold)
    assert v.head is not None
    w_e, w_u = v.embed.astype(np.float64), v.head.astype(np.float64).T
    if fold:
        layer_norm = model.config.model_type == "gpt2"
        w_u = w_u * v.gain.astype(np.float64)[:, None]
        if layer_norm:
            w_e = w_e - w_e.mean(1, keepdims=True)
            w_u = w_u - w_u.mean(0, keepdims=True)
        w_u = w_u - w_u.mean(1, keepdims=True)
    return w_e, w_u


def largest_entry(sigma: float, u: np.ndarray, v: np.ndarray) -> tuple[int, int, float]:
    term = sigma * np.outer(u, v)
    a, b = np.unravel_index(np.argmax(term), term.shape)
    return int(a), int(b), float(term[a, b])


@pytest.mark.parametrize("fold", [False, True], ids=["raw", "fold_ln"])
@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_copying_and_token_pairs_equal_brute_force(checkpoints, name, fold):
    model = mhacli.load(checkpoints[name])
    c = model.config
    top = 3
    f = C.head_factors(model.checkpoint, fold_ln=fold)
    vocab = C.vocab_side(model.checkpoint, fold_ln=fold)
    g = C.grams(vocab)
    copying = C.copying_scores(f, g).reshape(-1)
    heads = list(range(c.n_layer * c.n_head))
    ov, qk = C.token_pairs(f, vocab, g, heads, top)
    w_e, w_u = folded_vocab(model, fold)
    for i in heads:
        full_ov = w_e @ f.w_v[i] @ f.w_o[i] @ w_u  # [vocab, vocab]
        full_qk = w_e @ f.w_q[i] @ f.w_k[i].T @ w_e.T
        eig = np.linalg.eigvals(full_ov)
        assert abs(copying[i] - eig.real.sum() / np.abs(eig).sum()) < EXACT_ATOL, (name, i)
        for what, full, pairs in (("OV", full_ov, ov[i]), ("QK", full_qk, qk[i])):
            u, s, vt = np.linalg.svd(full)
            assert len(pairs) == top
            for k, pair in enumerate(pairs):
                assert abs(pair.singular_value - s[k]) < EXACT_ATOL * s[0], (name, what, i, k)
                a, b, value = largest_entry(s[k], u[:, k], vt[k])
                assert (pair.first, pair.second) == (a, b), (name, what, i, k)
                assert abs(pair.value - value) < EXACT_ATOL * s[0], (name, what, i, k)


def test_baseline_is_seeded_and_near_theory():
    """Random rank-d products: the mean score is reproducible and near 1 / sqrt(n_embd).

    With standard normal factors, E‖A1 B1 A2 B2‖² = n_embd³ d², E‖A B‖² = n_embd² d: the ratio is 1 / n_embd."""
    a, b = C.baseline("K", 128, 32), C.baseline("K", 128, 32)
    assert a == b
    assert C.baseline("Q", 128, 32) != a  # each mode its own draw
    assert abs(a * np.sqrt(128) - 1) < 0.1, a
    assert abs(C.baseline("V", 512, 16) * np.sqrt(512) - 1) < 0.1


def test_bundled_induction_head_reads_the_previous_token_head():
    """Olsson et al.: the induction head L1H2's keys K-compose most with the previous-token head L0H3.

    Measured: L0H3 -> L1H2 K-composition 0.195, runner-up L0H0 0.147, random baseline 0.088; copying of L1H2 0.865.
    """
    model = mhacli.load(SAMPLE)
    r = C.circuits(model.checkpoint, modes=["K"], layers=[1], heads=[2], top=0)
    into = r.scores["K"][0, :, 1, 2]  # every layer-0 head into L1H2
    order = np.argsort(-into)
    assert order[0] == 3, f"strongest K-composition into L1H2 is from L0H{order[0]}: {into}"
    assert into[3] > 1.2 * into[order[1]], into
    assert into[3] > 2 * r.baseline["K"], (into[3], r.baseline)
    assert r.pairs("K")[0][:4] == (0, 3, 1, 2)
    (head,) = r.heads
    assert (head.layer, head.head) == (1, 2) and head.copying is not None and head.copying > 0.5


def test_selection_and_sorting_of_pairs():
    model = mhacli.load(SAMPLE)
    r = C.circuits(model.checkpoint, modes=["V", "Q"], layers=[0], heads=[3], top=2)
    assert r.modes == ("Q", "V")
    for mode in r.modes:
        rows = r.pairs(mode)
        assert all((l1, h1) == (0, 3) for l1, h1, *_ in rows) and len(rows) == 4
        assert [row[4] for row in rows] == sorted((row[4] for row in rows), reverse=True)
    assert [(h.layer, h.head) for h in r.heads] == [(0, 3)]
    assert len(r.heads[0].ov_top) == 2 and len(r.heads[0].qk_top) == 2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"modes": ["X"]}, "mode 'X' is not one of Q, K, V"),
        ({"modes": []}, "is not one of Q, K, V"),
        ({"layers": [2]}, "--layer 2 is out of range"),
        ({"heads": [4]}, "--head 4 is out of range"),
        ({"top": -1}, "top -1 is negative"),
    ],
)
def test_bad_requests_are_usage_errors(kwargs, words):
    from mhacli.errors import UsageError

    model = mhacli.load(SAMPLE)
    with pytest.raises(UsageError, match=words):
        C.circuits(model.checkpoint, **kwargs)


def test_no_output_head(tmp_path):
    from mhacli.errors import ModelError

    bos = bos_tokenizer(tmp_path / "bos")
    d = build(tmp_path / "base", "llama", LLAMA, bos, base_model=True)
    model = mhacli.load(d)
    with pytest.raises(ModelError, match="no lm_head.weight.*no_unembed reports the rest"):
        C.circuits(model.checkpoint)
    r = C.circuits(model.checkpoint, unembed=False, top=2)
    assert all(h.copying is None and h.ov_top == [] and len(h.qk_top) == 2 for h in r.heads)
    assert np.isfinite(r.scores["V"][0, :, 1, :]).all()
