"""`mha diff`: per-head divergence between two models (mhacli/diff.py, mhacli/cli/diff.py).

References are independent of the code under test: scipy's jensenshannon / cosine, plain loops, brute-force
assignments, HF eager attentions (helpers.hf_outputs), and checkpoints edited here with known effects.
"""

from __future__ import annotations

import csv
import io
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import build_model, hf_outputs, parse_json, run_mha, train_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

TEXT = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps"
TEXT_2 = "ROMEO: But, soft! what light through yonder window breaks? It is the east"
STATS = [
    "entropy",
    "max_weight",
    "mean_distance",
    "first_token",
    "self",
    "previous_token",
    "duplicate_token",
    "induction",
]
TABLE_HEADER = ["layer_a", "head_a", "layer_b", "head_b", "divergence", "kind_a", "kind_b"] + [
    f"delta_{s}" for s in STATS
]
SAME = 1e-9  # a model against itself: divergence is zero up to float rounding
EDIT_LAYER, EDIT_HEAD = 1, 2
PERMS = {0: [2, 0, 3, 1], 1: [1, 3, 0, 2], 2: [3, 2, 1, 0]}  # new head h of the permuted model = old head PERMS[l][h]


# --- checkpoint surgery ---------------------------------------------------------------------------------------


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_weights(directory: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def key(tensors: dict, suffix: str) -> str:
    (name,) = [k for k in tensors if k.endswith(suffix)]
    return name


def replace_query(directory: Path, layer: int, head: int, n_head: int) -> None:
    """New random W_Q columns for one head of one layer; everything else untouched."""

    def edit(t):
        w = t[key(t, f"h.{layer}.attn.c_attn.weight")]
        d = w.shape[0] // n_head
        cols = slice(head * d, (head + 1) * d)  # W_Q is the first n_embd columns
        rng = np.random.default_rng(123)
        w[:, cols] = (rng.standard_normal((w.shape[0], d)) * 3 * w[:, cols].std()).astype(w.dtype)

    edit_weights(directory, edit)


def permute_heads(directory: Path, perms: dict[int, list[int]], n_head: int) -> None:
    """Reorder the heads of each layer: W_Q, W_K, W_V column blocks and the matching c_proj rows move together."""

    def edit(t):
        for layer, perm in perms.items():
            w_name, b_name = key(t, f"h.{layer}.attn.c_attn.weight"), key(t, f"h.{layer}.attn.c_attn.bias")
            p_name = key(t, f"h.{layer}.attn.c_proj.weight")
            e = t[p_name].shape[0]
            d = e // n_head
            head_cols = np.concatenate([np.arange(old * d, (old + 1) * d) for old in perm])  # [n_embd]
            qkv_cols = np.concatenate([part * e + head_cols for part in range(3)])  # [3 * n_embd]
            t[w_name] = np.ascontiguousarray(t[w_name][:, qkv_cols])
            t[b_name] = np.ascontiguousarray(t[b_name][qkv_cols])
            t[p_name] = np.ascontiguousarray(t[p_name][head_cols, :])

    edit_weights(directory, edit)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diff_models")
    m = {
        "base": build_model(root / "base", tokenizer_dir, seed=0),
        "half": build_model(root / "half", tokenizer_dir, seed=0, dtype="float16"),
        "deep": build_model(root / "deep", tokenizer_dir, seed=5, n_layer=3),
        "narrow": build_model(root / "narrow", tokenizer_dir, seed=7, n_head=2),
        "short": build_model(root / "short", tokenizer_dir, seed=0, n_positions=16),
    }
    m["edited"] = copy_model(m["deep"], root / "edited")
    replace_query(m["edited"], EDIT_LAYER, EDIT_HEAD, n_head=4)
    m["deep_perm"] = copy_model(m["deep"], root / "deep_perm")
    permute_heads(m["deep_perm"], PERMS, n_head=4)
    other_tok = train_tokenizer(root / "tok350", vocab_size=350)
    m["other_tok"] = build_model(root / "other_tok", other_tok, seed=0)
    return m


def diff_json(*args: str, input: str | None = None) -> dict:
    r = run_mha("diff", *args, "--format", "json", input=input)
    assert r.returncode == 0, r.stderr.decode()
    return parse_json(r.stdout)


def by_a(doc: dict) -> dict[tuple[int, int], dict]:
    return {(h["layer_a"], h["head_a"]): h for h in doc["heads"]}


def assert_bad_input(r) -> None:
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert r.stdout == b""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err


# --- the metrics against independent references ---------------------------------------------------------------


def random_maps(rng: np.random.Generator, n_map: int, n_seq: int, sparsity: float) -> np.ndarray:
    """[n_map, n_seq, n_seq] causal, row-stochastic, with some exact zeros inside the triangle."""
    x = rng.random((n_map, n_seq, n_seq)) ** 3
    x[rng.random(x.shape) < sparsity] = 0.0
    x[:, np.arange(n_seq), np.arange(n_seq)] += 1e-3  # every row keeps some mass
    x = np.tril(x)
    return x / x.sum(axis=-1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_seq=st.integers(1, 12), sparsity=st.sampled_from([0.0, 0.3, 0.8]))
def test_metrics_match_scipy_and_plain_loops(seed, n_seq, sparsity):
    from scipy.spatial.distance import cosine, jensenshannon

    from mhacli.analyses.diff import divergence

    rng = np.random.default_rng(seed)
    p, q = random_maps(rng, 3, n_seq, sparsity), random_maps(rng, 3, n_seq, sparsity)
    for h in range(3):
        js_ref = np.mean(jensenshannon(p[h], q[h], base=2, axis=1) ** 2)
        tv_ref = np.mean([0.5 * sum(abs(a - b) for a, b in zip(p[h, i], q[h, i])) for i in range(n_seq)])
        cos_ref = cosine(p[h].ravel(), q[h].ravel())
        assert abs(divergence(p, q, "js")[h] - js_ref) < 1e-12
        assert abs(divergence(p, q, "tv")[h] - tv_ref) < 1e-12
        assert abs(divergence(p, q, "cosine")[h] - cos_ref) < 1e-12
    for metric in ("js", "tv", "cosine"):
        d = divergence(p, q, metric)
        assert np.all((d >= 0) & (d <= 1))
        np.testing.assert_allclose(d, divergence(q, p, metric), rtol=0, atol=1e-15)  # symmetric
        assert np.all(divergence(p, p, metric) < 1e-15)


def test_js_of_disjoint_rows_is_one_bit():
    from mhacli.analyses.diff import divergence

    p = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    q = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    # row 0 identical (0 bits), row 1 disjoint (1 bit): mean 0.5; with float32 maps as the forward yields them
    assert divergence(p.astype(np.float32), q.astype(np.float32), "js")[0] == pytest.approx(0.5, abs=1e-15)
    assert divergence(p, q, "tv")[0] == pytest.approx(0.5, abs=1e-15)


@pytest.mark.parametrize("metric", ["js", "tv", "cosine"])
def test_divergence_matrix_equals_pairwise_loop_at_any_block_size(metric):
    from mhacli.analyses.diff import divergence, divergence_matrix

    rng = np.random.default_rng(1)
    a, b = random_maps(rng, 5, 7, 0.3).astype(np.float32), random_maps(rng, 6, 7, 0.3).astype(np.float32)
    ref = np.array([[divergence(a[i], b[j], metric) for j in range(6)] for i in range(5)])
    for max_elements in (1, 49, 3 * 49, 1 << 22):  # one pair per block ... everything at once
        np.testing.assert_allclose(divergence_matrix(a, b, metric, max_elements=max_elements), ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (5, 5)])
def test_assignment_is_one_to_one_and_optimal_against_brute_force(shape):
    from mhacli.analyses.diff import assign, nearest

    rng = np.random.default_rng(sum(shape))
    m = rng.random(shape)
    rows, cols = assign(m)
    k = min(shape)
    assert len(rows) == len(cols) == k and len(set(rows)) == k and len(set(cols)) == k
    if shape[0] <= shape[1]:
        best = min(sum(m[i, c] for i, c in enumerate(p)) for p in itertools.permutations(range(shape[1]), shape[0]))
    else:
        best = min(sum(m[r, j] for j, r in enumerate(p)) for p in itertools.permutations(range(shape[0]), shape[1]))
    assert m[rows, cols].sum() == pytest.approx(best, abs=1e-12)
    assert [int(x) for x in nearest(m)] == [min(range(shape[0]), key=lambda i: m[i, j]) for j in range(shape[1])]


# --- paired mode through the CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["js", "tv", "cosine"])
def test_model_against_itself_is_zero_everywhere(models, metric):
    doc = diff_json(str(models["base"]), str(models["base"]), TEXT, "--metric", metric)
    assert doc["mode"] == "paired" and doc["metric"] == metric and doc["n_texts"] == 1
    assert len(doc["heads"]) == 8
    assert {(h["layer_a"], h["head_a"]) for h in doc["heads"]} == {(lay, h) for lay in range(2) for h in range(4)}
    for h in doc["heads"]:
        assert (h["layer_a"], h["head_a"]) == (h["layer_b"], h["head_b"])
        assert 0 <= h["divergence"] < SAME, h
        assert h["kind_a"] == h["kind_b"]
        assert set(h["stat_deltas"]) == set(STATS)
        assert all(v is None or abs(v) < SAME for v in h["stat_deltas"].values()), h


def test_one_edited_query_head_ranks_first_by_a_wide_margin(models):
    doc = diff_json(str(models["deep"]), str(models["edited"]), TEXT)
    heads = doc["heads"]
    divs = [h["divergence"] for h in heads]
    assert divs == sorted(divs, reverse=True)
    first, second = heads[0], heads[1]
    assert (first["layer_a"], first["head_a"], first["layer_b"], first["head_b"]) == (EDIT_LAYER, EDIT_HEAD) * 2
    assert first["divergence"] >= 10 * second["divergence"], (first, second)
    for h in heads:
        if h["layer_a"] < EDIT_LAYER:
            assert h["divergence"] == 0.0, h  # layers before the edit see identical inputs and weights
        if h["layer_a"] == EDIT_LAYER and h["head_a"] != EDIT_HEAD:
            assert h["divergence"] == 0.0, h  # the same layer's other heads: same x, same W_Q/W_K
    assert any(h["divergence"] > 0 for h in heads if h["layer_a"] > EDIT_LAYER)  # the change flows downstream


def test_stat_deltas_are_b_minus_a_of_mha_stats(models):
    doc = diff_json(str(models["deep"]), str(models["edited"]), TEXT)

    def stats(model):
        r = run_mha("stats", "-m", str(model), TEXT, "--format", "json")
        assert r.returncode == 0, r.stderr.decode()
        return {(h["layer"], h["head"]): h for h in parse_json(r.stdout)["heads"]}

    sa, sb = stats(models["deep"]), stats(models["edited"])
    for h in doc["heads"]:
        a, b = sa[h["layer_a"], h["head_a"]], sb[h["layer_b"], h["head_b"]]
        assert (h["kind_a"], h["kind_b"]) == (a["kind"], b["kind"])
        for s in STATS:
            if a["stats"][s] is None:
                assert h["stat_deltas"][s] is None
            else:
                assert h["stat_deltas"][s] == pytest.approx(b["stats"][s] - a["stats"][s], abs=1e-6)


def test_paired_divergence_matches_a_reference_from_hf_attentions(models, tokenizer_dir):
    from scipy.spatial.distance import jensenshannon

    from mhacli.io.tokenizer import load_tokenizer

    ids = load_tokenizer(tokenizer_dir).encode(TEXT)
    att_a, _ = hf_outputs(models["deep"], ids)
    att_b, _ = hf_outputs(models["edited"], ids)
    doc = diff_json(str(models["deep"]), str(models["edited"]), TEXT)
    for (layer, head), h in by_a(doc).items():
        p, q = att_a[layer][head].astype(np.float64), att_b[layer][head].astype(np.float64)
        ref = np.mean(jensenshannon(p, q, base=2, axis=1) ** 2)
        assert h["divergence"] == pytest.approx(ref, abs=1e-5), (layer, head)


def test_float16_copy_is_close_and_fail_above_guards_it(models):
    a, b = str(models["base"]), str(models["half"])
    ok = run_mha("diff", a, b, TEXT, "--format", "json", "--fail-above", "1e-3")
    assert ok.returncode == 0, ok.stderr.decode()
    doc = parse_json(ok.stdout)
    assert all(0 <= h["divergence"] < 1e-4 for h in doc["heads"]), doc["heads"][0]
    assert ok.stderr == b""
    bad = run_mha("diff", a, b, TEXT, "--format", "json", "--fail-above", "0")
    assert bad.returncode == 1, bad.stderr.decode()
    assert parse_json(bad.stdout) == doc  # the report still goes to stdout
    err = bad.stderr.decode()
    n_over = sum(h["divergence"] > 0 for h in doc["heads"])
    assert n_over > 0 and f"{n_over} of 8 heads" in err
    top = doc["heads"][0]
    assert f"A layer {top['layer_a']} head {top['head_a']} -> B layer {top['layer_b']} head {top['head_b']}" in err


def test_fail_above_passes_for_identical_models_even_at_zero(models):
    r = run_mha("diff", str(models["base"]), str(models["base"]), TEXT, "--fail-above", "0", "--format", "csv")
    assert r.returncode == 0, r.stderr.decode()


# --- matched mode ----------------------------------------------------------------------------------------------


def assert_valid_matching(doc: dict, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> None:
    heads_a = {(lay, h) for lay in range(shape_a[0]) for h in range(shape_a[1])}
    heads_b = {(lay, h) for lay in range(shape_b[0]) for h in range(shape_b[1])}
    assert doc["mode"] == "matched"
    pairs = [((h["layer_a"], h["head_a"]), (h["layer_b"], h["head_b"])) for h in doc["heads"]]
    assert len(pairs) == min(len(heads_a), len(heads_b))
    used_a, used_b = [a for a, _ in pairs], [b for _, b in pairs]
    assert len(set(used_a)) == len(used_a) and set(used_a) <= heads_a
    assert len(set(used_b)) == len(used_b) and set(used_b) <= heads_b
    assert {(u["layer"], u["head"]) for u in doc["unmatched_a"]} == heads_a - set(used_a)
    assert {(u["layer"], u["head"]) for u in doc["unmatched_b"]} == heads_b - set(used_b)
    assert sorted((n["layer_b"], n["head_b"]) for n in doc["nearest"]) == sorted(heads_b)
    for n in doc["nearest"]:
        assert (n["layer_a"], n["head_a"]) in heads_a
    divs = [h["divergence"] for h in doc["heads"]]
    assert divs == sorted(divs, reverse=True)


def test_different_depths_matching_is_optimal_against_an_hf_reference_matrix(models, tokenizer_dir):
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import jensenshannon

    from mhacli.io.tokenizer import load_tokenizer

    doc = diff_json(str(models["base"]), str(models["deep"]), TEXT)
    assert_valid_matching(doc, (2, 4), (3, 4))
    ids = load_tokenizer(tokenizer_dir).encode(TEXT)
    maps_a = np.concatenate(hf_outputs(models["base"], ids)[0]).astype(np.float64)  # [8, n_seq, n_seq]
    maps_b = np.concatenate(hf_outputs(models["deep"], ids)[0]).astype(np.float64)  # [12, n_seq, n_seq]
    ref = np.array([[np.mean(jensenshannon(pa, pb, base=2, axis=1) ** 2) for pb in maps_b] for pa in maps_a])
    for h in doc["heads"]:
        assert h["divergence"] == pytest.approx(
            ref[h["layer_a"] * 4 + h["head_a"], h["layer_b"] * 4 + h["head_b"]], abs=1e-5
        )
    rows, cols = linear_sum_assignment(ref)
    assert sum(h["divergence"] for h in doc["heads"]) == pytest.approx(ref[rows, cols].sum(), abs=1e-5)
    for n in doc["nearest"]:
        j = n["layer_b"] * 4 + n["head_b"]
        assert n["layer_a"] * 4 + n["head_a"] == int(np.argmin(ref[:, j]))
        assert n["divergence"] == pytest.approx(ref[:, j].min(), abs=1e-5)


def test_matching_permutes_with_the_heads_of_b(models):
    plain = diff_json(str(models["base"]), str(models["deep"]), TEXT)
    permuted = diff_json(str(models["base"]), str(models["deep_perm"]), TEXT)
    assert_valid_matching(permuted, (2, 4), (3, 4))
    # head h of deep_perm is head PERMS[l][h] of deep
    to_deep = lambda layer, head: (layer, PERMS[layer][head])  # noqa: E731
    got = {
        (h["layer_a"], h["head_a"]): (to_deep(h["layer_b"], h["head_b"]), h["divergence"]) for h in permuted["heads"]
    }
    want = {(h["layer_a"], h["head_a"]): ((h["layer_b"], h["head_b"]), h["divergence"]) for h in plain["heads"]}
    assert got.keys() == want.keys()
    for a in want:
        assert got[a][0] == want[a][0], a
        assert got[a][1] == pytest.approx(want[a][1], abs=1e-6)
    near_plain = {(n["layer_b"], n["head_b"]): (n["layer_a"], n["head_a"]) for n in plain["nearest"]}
    for n in permuted["nearest"]:
        assert near_plain[to_deep(n["layer_b"], n["head_b"])] == (n["layer_a"], n["head_a"])


def test_match_recovers_a_permutation_of_the_same_model(models):
    doc = diff_json(str(models["deep"]), str(models["deep_perm"]), TEXT, "--match")
    assert_valid_matching(doc, (3, 4), (3, 4))
    for h in doc["heads"]:
        assert h["layer_a"] == h["layer_b"] and h["head_a"] == PERMS[h["layer_b"]][h["head_b"]], h
        assert h["divergence"] < 1e-6
    paired = diff_json(str(models["deep"]), str(models["deep_perm"]), TEXT)
    assert paired["mode"] == "paired" and paired["heads"][0]["divergence"] > 1e-3  # without matching: different heads


def test_fewer_heads_in_b_leaves_heads_of_a_unmatched(models):
    doc = diff_json(str(models["base"]), str(models["narrow"]), TEXT, "--metric", "tv")
    assert_valid_matching(doc, (2, 4), (2, 2))
    assert doc["metric"] == "tv" and len(doc["heads"]) == 4 and len(doc["unmatched_a"]) == 4


# --- texts -----------------------------------------------------------------------------------------------------


def test_texts_file_averages_over_its_lines(models, tmp_path):
    a, b = str(models["deep"]), str(models["edited"])
    one, two = diff_json(a, b, TEXT), diff_json(a, b, TEXT_2)
    f = tmp_path / "texts.txt"
    f.write_text(f"\n{TEXT}\n   \n{TEXT_2}\r\n\n", encoding="utf-8")
    doc = diff_json(a, b, "--texts", str(f), "--pack-tokens", "1")  # each alone: the mean exactly (packed runs agree
    assert doc["n_texts"] == 2 and doc["tokens"] == one["tokens"]  # to float32 rounding: test_pack_texts.py)
    assert doc["n_tokens"] == [len(one["tokens"]), len(two["tokens"])]
    d1, d2 = by_a(one), by_a(two)
    for key_, h in by_a(doc).items():
        assert h["divergence"] == pytest.approx((d1[key_]["divergence"] + d2[key_]["divergence"]) / 2, abs=1e-12)
    from_stdin = diff_json(a, b, "--texts", "-", "--pack-tokens", "1", input=f.read_text(encoding="utf-8"))
    assert from_stdin == doc


def test_text_from_argument_or_stdin_gives_the_same_document(models):
    a, b = str(models["deep"]), str(models["edited"])
    assert diff_json(a, b, TEXT) == diff_json(a, b, input=TEXT) == diff_json(a, b, "-", input=TEXT)


def test_text_must_fit_both_models(models):
    a, b = str(models["base"]), str(models["short"])
    r = run_mha("diff", a, b, TEXT, "--format", "json")
    assert_bad_input(r)
    assert "MODEL_B's n_positions (16)" in r.stderr.decode()
    r = run_mha("diff", a, b, TEXT, "--format", "json", "--truncate")
    assert r.returncode == 0, r.stderr.decode()
    assert parse_json(r.stdout)["n_tokens"] == [16]
    assert "truncated" in r.stderr.decode()


# --- formats ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_one_row_per_head(models, fmt, delimiter):
    r = run_mha("diff", str(models["deep"]), str(models["edited"]), TEXT, "--format", fmt)
    assert r.returncode == 0, r.stderr.decode()
    rows = list(csv.reader(io.StringIO(r.stdout.decode()), delimiter=delimiter))
    assert rows[0] == TABLE_HEADER
    assert len(rows) == 1 + 12
    body = [dict(zip(rows[0], row)) for row in rows[1:]]
    assert (int(body[0]["layer_a"]), int(body[0]["head_a"])) == (EDIT_LAYER, EDIT_HEAD)
    divs = [float(row["divergence"]) for row in body]
    assert divs == sorted(divs, reverse=True) and divs[0] > 0


def test_csv_keeps_tiny_divergences_visible(models):
    r = run_mha("diff", str(models["base"]), str(models["half"]), TEXT, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout.decode())))
    top = float(rows[0]["divergence"])
    assert 0 < top < 1e-4  # a float16 copy's divergence must not print as 0.000000


def test_jsonl_one_head_per_line(models):
    r = run_mha("diff", str(models["base"]), str(models["deep"]), TEXT, "--format", "jsonl")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 8
    objs = [parse_json(line.encode()) for line in lines]
    assert all(
        {"layer_a", "head_a", "layer_b", "head_b", "divergence", "kind_a", "kind_b", "stat_deltas"} <= o.keys()
        for o in objs
    )


def test_text_format_is_plain_and_ranked(models):
    r = run_mha("diff", str(models["deep"]), str(models["edited"]), TEXT)  # stdout is a pipe: text by default
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "\x1b" not in out
    lines = out.splitlines()
    assert any(line.startswith("mode") and "paired" in line for line in lines)
    ranked = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert len(ranked) == 12
    assert ranked[0][:5] == ["1", str(EDIT_LAYER), str(EDIT_HEAD), str(EDIT_LAYER), str(EDIT_HEAD)]
    matched = run_mha("diff", str(models["base"]), str(models["deep"]), TEXT, "--format", "text").stdout.decode()
    assert "matched" in matched and "nearest MODEL_A head" in matched and "unmatched heads of MODEL_B" in matched


@pytest.mark.parametrize("pair", [("deep", "edited"), ("base", "deep"), ("base", "base")])
def test_rich_view_renders(models, pair):
    r = run_mha("diff", str(models[pair[0]]), str(models[pair[1]]), TEXT, "--format", "rich", env={"COLUMNS": "140"})
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "most changed heads" in out
    if pair[0] == pair[1]:
        assert "identical" in out
    else:
        assert "MODEL_A" in out and "MODEL_B" in out and "most changed head, on the first text" in out


# --- bad input -------------------------------------------------------------------------------------------------


def test_mismatched_tokenizers_are_refused(models):
    r = run_mha("diff", str(models["base"]), str(models["other_tok"]), TEXT, "--format", "json")
    assert_bad_input(r)
    assert "tokenizers disagree" in r.stderr.decode() and "at token" in r.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [
        ("--metric", "kl"),
        ("--fail-above", "-0.1"),
        ("--fail-above", "nan"),
        ("--format", "yaml"),
        ("--texts", "EMPTY"),
        ("--texts", "MISSING"),
        ("--texts", "EMPTY", "also a text"),
    ],
)
def test_bad_options_are_one_error_line(models, tmp_path, args):
    (tmp_path / "empty.txt").write_text("\n  \n\n", encoding="utf-8")
    mapped = [
        str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "nope.txt") if a == "MISSING" else a
        for a in args
    ]
    text = [] if "--texts" in args else [TEXT]
    assert_bad_input(run_mha("diff", str(models["base"]), str(models["base"]), *text, *mapped))


@pytest.mark.parametrize("which", ["a", "b"])
def test_a_model_that_cannot_load_is_one_error_line(models, tmp_path, which):
    broken = copy_model(models["base"], tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    args = (str(broken), str(models["base"])) if which == "a" else (str(models["base"]), str(tmp_path / "missing"))
    assert_bad_input(run_mha("diff", *args, TEXT, "--format", "json"))


def test_empty_text_is_refused(models):
    assert_bad_input(run_mha("diff", str(models["base"]), str(models["base"]), "--format", "json", input="  \n"))
