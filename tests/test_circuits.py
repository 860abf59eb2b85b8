"""Circuits from the weights alone (mhacli.analyses.circuits).

Against TransformerLens (its bridge over the same HF checkpoint, raw and with its default weight processing):
composition scores in every mode, the OV and QK circuits' eigenvalues, the full OV circuit's eigenvalues and
copying scores, on a tiny random GPT-2 and a tiny grouped-query Llama. Against brute force in float64 with every
[n_embd, n_embd] and [vocab, vocab] matrix formed: the scores and the token pairs. On the bundled model: the
induction head's keys are fed by the previous-token head, and it copies.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import LLAMA, SAMPLE, bos_tokenizer, build, smollm2_gguf, train_tokenizer, transformer_lens_bridge

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
        ({"modes": []}, "^mode: none given; ask for one or more of Q, K, V$"),
        ({"modes": ["K", "q"]}, "^mode 'q' is not one of Q, K, V$"),
        ({"layers": [2]}, "^layer 2 is out of range"),
        ({"heads": [4]}, "^head 4 is out of range"),
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
    with pytest.raises(ModelError) as e:
        C.circuits(model.checkpoint)
    assert str(e.value) == (
        "this checkpoint has no lm_head.weight and does not tie it to the embeddings (a base model without its "
        "output head): the copying scores and OV token pairs need it; no_unembed reports the rest (composition "
        "scores, QK token pairs)"
    )
    r = C.circuits(model.checkpoint, unembed=False, top=2)
    assert all(h.copying is None and h.ov_top == [] and len(h.qk_top) == 2 for h in r.heads)
    assert np.isfinite(r.scores["V"][0, :, 1, :]).all()


# --- the door: the command in every format, the API, the pictures, a real model --------------------------------


@pytest.fixture(scope="module")
def sample_doc() -> dict:
    return mhacli.load("sample").circuits(top=2).to_dict()


def test_the_document(sample_doc):
    doc = sample_doc
    assert doc["modes"] == ["Q", "K", "V"] and set(doc["baseline"]) == {"Q", "K", "V"} and doc["fold_ln"] is False
    rows = doc["composition"]
    assert len(rows) == 3 * 4 * 4  # every layer-0 head into every layer-1 head, three modes
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert all(r["from"]["layer"] < r["to"]["layer"] for r in rows)
    first_k = next(r for r in rows if r["mode"] == "K" and r["to"] == {"layer": 1, "head": 2})
    assert first_k["from"] == {"layer": 0, "head": 3}
    assert [(h["layer"], h["head"]) for h in doc["heads"]] == [(layer, h) for layer in range(2) for h in range(4)]
    tokens = mhacli.load(SAMPLE).tokenizer
    for h in doc["heads"]:
        assert -1 <= h["copying"] <= 1 and h["kv_head"] == h["head"]
        assert len(h["ov_top"]) == 2 and len(h["qk_top"]) == 2
        for p in h["ov_top"]:
            assert tokens.display([p["attend_id"], p["write_id"]]) == [p["attend"], p["write"]]
        values = [p["singular_value"] for p in h["qk_top"]]
        assert values == sorted(values, reverse=True)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "tsv", "text", "rich"])
def test_every_format(mha, sample_doc, fmt):
    r = mha("circuits", "--top", "2", "-f", fmt)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    out = r.stdout.decode()
    rows = sample_doc["composition"]
    if fmt == "json":
        assert json.loads(out) == json.loads(json.dumps(sample_doc))
    elif fmt == "jsonl":
        assert [json.loads(line) for line in out.splitlines()] == json.loads(json.dumps(rows))
    elif fmt in ("csv", "tsv"):
        table = list(csv.reader(io.StringIO(out), delimiter="," if fmt == "csv" else "\t"))
        assert table[0] == ["mode", "from_layer", "from_head", "to_layer", "to_head", "score"]
        assert len(table) == 1 + len(rows)
        assert table[1][:5] == [
            rows[0]["mode"],
            *(str(rows[0][e][k]) for e in ("from", "to") for k in ("layer", "head")),
        ]
        assert abs(float(table[1][5]) - rows[0]["score"]) < 1e-6  # csv keeps 6 significant digits
    else:
        assert "strongest compositions" in out and "copying score" in out
        assert "L0H3" in out and "L1H2" in out


def test_mode_and_selection_options(mha):
    r = mha("circuits", "--mode", "k", "-l", "1", "-H", "2", "--top", "0", "-f", "json")
    doc = json.loads(r.stdout)
    assert doc["modes"] == ["K"] and [(h["layer"], h["head"]) for h in doc["heads"]] == [(1, 2)]
    assert len(doc["composition"]) == 4 and doc["composition"][0]["from"] == {"layer": 0, "head": 3}
    assert doc["heads"][0]["ov_top"] == [] and doc["heads"][0]["qk_top"] == []


def test_fold_ln_option_matches_the_analysis(mha):
    doc = json.loads(mha("circuits", "--fold-ln", "--mode", "V", "--top", "0", "-f", "json").stdout)
    f = C.head_factors(mhacli.load(SAMPLE).checkpoint, fold_ln=True)
    want = C.composition_scores(f, "V")
    assert doc["fold_ln"] is True
    for r in doc["composition"]:
        a, b = r["from"], r["to"]
        assert abs(r["score"] - want[a["layer"], a["head"], b["layer"], b["head"]]) < 1e-12


def test_save_writes_every_picture(mha, tmp_path):
    pytest.importorskip("matplotlib")
    paths = [tmp_path / f"c.{k}" for k in ("png", "svg", "pdf", "html")]
    r = mha("circuits", "-f", "json", "--top", "1", *(a for p in paths for a in ("--save", str(p))))
    assert r.returncode == 0, r.stderr
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[2].read_bytes()[:5] == b"%PDF-"
    svg = paths[1].read_text()
    assert "K-composition" in svg and "L0H3" in svg and "L1H2" in svg
    html_page = paths[3].read_text()
    assert "mha circuits" in html_page and "K-composition into it from" in html_page


def test_real_smollm2_gguf():
    """The real SmolLM2-135M (30 layers x 9 query heads over 3 K/V heads, Q4_1): finite scores everywhere."""
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 GGUF not available (set MHA_SMOLLM2_GGUF)")
    model = mhacli.load(path)
    c = model.config
    report = model.circuits(top=1, layers=[0, 29], heads=[0, 8])
    r = report.circuits
    mask = earlier(c.n_layer, c.n_head)
    for mode in C.MODES:
        assert np.isfinite(r.scores[mode][mask]).all()
        assert 0 < r.scores[mode][mask].min() and r.scores[mode][mask].max() < 1
        assert 0.5 / np.sqrt(c.n_embd) < r.baseline[mode] < 2 / np.sqrt(c.n_embd)
    assert [(h.layer, h.head, h.kv_head) for h in r.heads] == [(0, 0, 0), (0, 8, 2), (29, 0, 0), (29, 8, 2)]
    assert all(h.copying is not None and -1 <= h.copying <= 1 and len(h.ov_top) == 1 for h in r.heads)
    doc = report.to_dict()
    assert all(isinstance(p["attend"], str) for h in doc["heads"] for p in h["ov_top"])


# --- units: what the parity tests above do not reach ---------------------------------------------------------------


def test_r_factor_of_rank_deficient_factors():
    """Rᵀ R = aᵀ a also when a has fewer independent columns than d (eigenvalues of 0 may come out negative)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 40, 1)) @ rng.standard_normal((3, 1, 8))  # rank 1, d = 8
    r = C._r_factor(a)
    assert np.isfinite(r).all()
    assert np.abs(r.transpose(0, 2, 1) @ r - a.transpose(0, 2, 1) @ a).max() < 1e-9
    m = rng.standard_normal((3, 8, 40))
    assert np.allclose(np.linalg.norm(r @ m, axis=(1, 2)), np.linalg.norm(a @ m, axis=(1, 2)))


def test_leading_directions_stop_at_the_rank():
    """A rank-2 product has two directions, however many are asked for; each is a unit vector."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 12))  # the vocabulary map, [vocab, n_embd]
    a = rng.standard_normal((12, 2)) @ rng.standard_normal((2, 4))  # [n_embd, d], rank 2
    b = rng.standard_normal((12, 4))
    s, p, q = C.leading_directions(a, x.T @ x, b, x.T @ x, top=5)
    want = np.linalg.svd(x @ a @ b.T @ x.T, compute_uv=False)
    assert len(s) == 2 and np.allclose(s, want[:2])
    assert np.allclose(np.linalg.norm(x @ p, axis=0), 1) and np.allclose(np.linalg.norm(x @ q, axis=0), 1)


def test_vocabulary_blocks_change_nothing(monkeypatch):
    """Sums, copying scores and token pairs over blocks of 37 rows equal those over one block."""
    ckpt = mhacli.load(SAMPLE).checkpoint
    f = C.head_factors(ckpt, fold_ln=True)
    heads = [3, 6]

    def everything():
        v = C.vocab_side(ckpt, fold_ln=True)
        g = C.grams(v)
        return v, g, C.copying_scores(f, g), C.token_pairs(f, v, g, heads, 3)

    v1, g1, copying1, pairs1 = everything()
    monkeypatch.setattr(C, "VOCAB_BLOCK", 37)
    v2, g2, copying2, pairs2 = everything()
    assert np.allclose(v1.head_mean, v2.head_mean, atol=1e-12)
    for a, b in ((g1.embed, g2.embed), (g1.head, g2.head), (g1.head_embed, g2.head_embed)):
        assert np.allclose(a, b, rtol=1e-10, atol=1e-9)
    assert np.allclose(copying1, copying2, atol=1e-12)
    for side1, side2 in zip(pairs1, pairs2, strict=True):
        for h1, h2 in zip(side1, side2, strict=True):
            assert [(p.first, p.second) for p in h1] == [(p.first, p.second) for p in h2]
            assert np.allclose([p.value for p in h1], [p.value for p in h2])


def test_defaults_and_fold_ln_reach_every_part():
    ckpt = mhacli.load(SAMPLE).checkpoint
    v = C.vocab_side(ckpt)
    assert v.gain is None and not v.center and not v.center_vocab  # raw by default
    r = C.circuits(ckpt, modes=["V"])
    assert r.fold_ln is False and r.heads[0].copying == pytest.approx(
        float(C.copying_scores(C.head_factors(ckpt), C.grams(C.vocab_side(ckpt)))[0, 0]), abs=1e-12
    )
    assert all(len(h.ov_top) == 3 and len(h.qk_top) == 3 for h in r.heads)  # top=3 by default
    folded = C.circuits(ckpt, modes=["V"], top=0, fold_ln=True)
    f = C.head_factors(ckpt, fold_ln=True)
    want = C.copying_scores(f, C.grams(C.vocab_side(ckpt, fold_ln=True)))
    got = np.array([[h.copying for h in folded.heads if h.layer == layer] for layer in range(2)])
    assert np.allclose(got, want, atol=1e-12)
    assert not np.allclose(want, C.copying_scores(f, C.grams(v)), atol=1e-6)  # folding changes them


def test_mode_cores_refuse_an_unknown_mode():
    from mhacli.errors import UsageError

    f = C.head_factors(mhacli.load(SAMPLE).checkpoint)
    with pytest.raises(UsageError) as e:
        C.composition_scores(f, "W")
    assert str(e.value) == "mode 'W' is not one of Q, K, V"


def test_olmo_qk_norm_gains_are_folded_into_w_q_and_w_k(tmp_path):
    """OLMo normalises q and k over the whole projection: each feature's gain is linear, folded per head.

    The reference reads the HF checkpoint itself: head h's W_Q = q_proj[h]ᵀ diag(q_norm[h]) and W_K = k_proj[g]ᵀ
    diag(k_norm[g]) for its K/V head g (8 query heads over 2 K/V heads), every [n_embd, n_embd] product formed."""
    from safetensors.numpy import load_file

    directory = build(tmp_path / "olmo", "olmo2", LLAMA_GQA, bos_tokenizer(tmp_path / "bos"), seed=3)
    w = {k: v.astype(np.float64) for k, v in load_file(directory / "model.safetensors").items()}
    model = mhacli.load(directory)
    c = model.config
    nh, d, group = c.n_head, c.d_head, c.n_head // c.n_kv_head
    assert group > 1
    f = C.head_factors(model.checkpoint)
    circuits = {}
    for layer in range(c.n_layer):
        a = f"model.layers.{layer}.self_attn."
        for h in range(nh):
            g, rows_q = h // group, slice(h * d, (h + 1) * d)
            rows_kv = slice(g * d, (g + 1) * d)
            w_q = w[a + "q_proj.weight"][rows_q].T * w[a + "q_norm.weight"][rows_q]
            w_k = w[a + "k_proj.weight"][rows_kv].T * w[a + "k_norm.weight"][rows_kv]
            w_ov = w[a + "v_proj.weight"][rows_kv].T @ w[a + "o_proj.weight"][:, rows_q].T
            circuits[layer * nh + h] = {"Q": w_q @ w_k.T, "K": w_k @ w_q.T, "V": w_ov}
    qk = C.qk_eigenvalues(f)
    for i, full in circuits.items():
        eig = np.linalg.eigvals(full["Q"])
        want = eig[np.argsort(-np.abs(eig))[:d]]
        assert np.abs(sorted_spectrum(qk[i]) - sorted_spectrum(want)).max() < EXACT_ATOL * np.abs(want).max(), i
    for mode in ("Q", "K"):
        got = C.composition_scores(f, mode).reshape(c.n_layer * nh, c.n_layer * nh)
        for i in range(c.n_layer * nh):
            for j in range((i // nh + 1) * nh, c.n_layer * nh):
                left, right = circuits[i]["V"], circuits[j][mode]
                want = np.linalg.norm(left @ right) / np.linalg.norm(left) / np.linalg.norm(right)
                assert abs(got[i, j] - want) < EXACT_ATOL, (mode, i, j, got[i, j], want)


def test_a_head_with_zero_weights_scores_nan_without_a_warning():
    """A head whose W_V is zero scores NaN, and no RuntimeWarning reaches the user.

    It has no OV circuit: its composition scores into every later head and its copying score are 0/0."""
    import warnings

    rng = np.random.default_rng(0)
    n_layer, n_head, e, d = 2, 2, 12, 3
    ws = [rng.standard_normal((n_layer * n_head, e, d)) for _ in range(3)]
    w_o = rng.standard_normal((n_layer * n_head, d, e))
    ws[2][1] = 0.0  # head L0H1 writes nothing
    f = C.Factors(n_layer, n_head, (0, 1), ws[0], ws[1], ws[2], w_o)
    g = C.Grams(np.eye(e), np.eye(e), rng.standard_normal((e, e)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = {m: C.composition_scores(f, m) for m in C.MODES}
        copying = C.copying_scores(f, g)
    for m in C.MODES:
        assert np.isnan(scores[m][0, 1]).all() and np.isfinite(scores[m][0, 0, 1]).all(), m
    assert np.isnan(copying[0, 1]) and np.isfinite(copying[[0, 1, 1], [0, 0, 1]]).all()
