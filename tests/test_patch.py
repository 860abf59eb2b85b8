"""mha patch: TransformerLens parity, properties, the bundled model's induction circuit, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import LLAMA, bos_tokenizer, build, run_mha, train_tokenizer, transformer_lens_bridge

import mhacli
from mhacli.analyses.patch import Pair, patch, record
from mhacli.analyses.readout import metric as read_metric
from mhacli.engine.forward import embed, forward_from
from mhacli.errors import UsageError

TL_ATOL = 1e-4
GPT2 = dict(n_layer=3, n_head=4, n_embd=32, n_positions=64, vocab_size=400, bos_token_id=0, eos_token_id=0)
LLAMA_GQA = LLAMA | {"num_hidden_layers": 3}  # 8 query heads sharing 2 K/V heads

DATA = Path(__file__).parent / "data"
TOP_IOI_HEADS = [(23, 3), (16, 0), (29, 1)]  # measured; README states them with their scores
REPEAT = "a b c d e f g h a b c d e f g"
CHANGED = "h g f e d c b a a b c d e f g"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tok = train_tokenizer(tmp_path_factory.mktemp("tok"))
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    return {
        "gpt2": build(tmp_path_factory.mktemp("gpt2"), "gpt2", GPT2, tok, seed=1),
        "llama_gqa": build(tmp_path_factory.mktemp("llama"), "llama", LLAMA_GQA, bos, seed=2),
    }


@pytest.fixture(scope="module")
def models(checkpoints):
    return {name: mhacli.load(d) for name, d in checkpoints.items()}


@pytest.fixture(scope="module")
def bundled():
    return mhacli.load()


@pytest.fixture(scope="module")
def bridges(checkpoints):
    """TransformerLens' bridges, run on one torch thread while this module's tests run.

    Its patching loops run one tiny forward per unit; on a shared CPU torch's thread pool costs more than the forward
    itself (6-16x measured on the 2-core development machine).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {name: transformer_lens_bridge(d, processed=False) for name, d in checkpoints.items()}
    torch.set_num_threads(threads)


def _logit_diff(p: Pair):
    def metric(logits):
        return logits[0, -1, p.answer] - logits[0, -1, p.wrong]

    return metric


def _pair(n_vocab: int, seed: int = 0) -> Pair:
    rng = np.random.default_rng(seed)
    clean = rng.integers(1, n_vocab, 8)
    corrupt = clean.copy()
    corrupt[[2, 5]] = rng.integers(1, n_vocab, 2)
    return Pair(clean, corrupt, int(rng.integers(1, n_vocab)), int(rng.integers(1, n_vocab)))


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("site", ["z", "q", "k", "v", "pattern"])
def test_all_positions_equal_transformer_lens(models, bridges, name, site):
    import torch
    from transformer_lens import patching

    model = models[name]
    bridge = bridges[name]
    p = _pair(model.config.vocab_size)
    ours = patch(model.checkpoint, [p], site=site)
    clean_t = torch.tensor(p.clean)[None]
    corrupt_t = torch.tensor(p.corrupt)[None]
    _, cache = bridge.run_with_cache(clean_t)

    metric = _logit_diff(p)
    fn = {
        "z": patching.get_act_patch_attn_head_out_all_pos,
        "q": patching.get_act_patch_attn_head_q_all_pos,
        "k": patching.get_act_patch_attn_head_k_all_pos,
        "v": patching.get_act_patch_attn_head_v_all_pos,
        "pattern": patching.get_act_patch_attn_head_pattern_all_pos,
    }[site]
    with torch.no_grad():
        theirs = fn(bridge, corrupt_t, cache, metric).numpy()
    got = np.zeros_like(theirs)
    for (layer, h, _), v in zip(ours.units, ours.values):
        got[layer, h] = v
    np.testing.assert_allclose(got, theirs, atol=TL_ATOL)


BY_POS = {"z": "out", "q": "q", "k": "k", "v": "v", "pattern": "pattern"}


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("site", ["z", "q", "k", "v", "pattern"])
def test_by_position_equals_transformer_lens(models, bridges, name, site):
    import torch
    from transformer_lens import patching

    model = models[name]
    bridge = bridges[name]
    p = _pair(model.config.vocab_size, seed=3)
    ours = patch(model.checkpoint, [p], site=site, by_pos=True)
    _, cache = bridge.run_with_cache(torch.tensor(p.clean)[None])

    metric = _logit_diff(p)
    fn = getattr(patching, f"get_act_patch_attn_head_{BY_POS[site]}_by_pos")
    with torch.no_grad():
        theirs = fn(bridge, torch.tensor(p.corrupt)[None], cache, metric).numpy()
    got = np.zeros_like(theirs)
    for (layer, h, pos), v in zip(ours.units, ours.values):
        if site == "pattern":  # TransformerLens: [layer, head, dest_pos]
            got[layer, h, pos] = v
        else:  # [layer, pos, head]
            got[layer, pos, h] = v
    np.testing.assert_allclose(got, theirs, atol=TL_ATOL)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_direct_path_patching_equals_transformer_lens(models, bridges, name, component):
    import torch
    from transformer_lens import patching

    if name == "llama_gqa" and component != "q":
        pytest.skip("TransformerLens refuses k/v direct paths on GQA models; mha patches per K/V head")
    model = models[name]
    bridge = bridges[name]
    p = _pair(model.config.vocab_size, seed=4)
    sender = (0, 1)
    ours = patch(model.checkpoint, [p], sender=sender, receiver_site=component)
    clean_t, corrupt_t = torch.tensor(p.clean)[None], torch.tensor(p.corrupt)[None]
    _, clean_cache = bridge.run_with_cache(clean_t)
    _, corrupt_cache = bridge.run_with_cache(corrupt_t)

    metric = _logit_diff(p)
    with torch.no_grad():
        theirs = patching.get_act_patch_direct_path(
            bridge, corrupt_t, clean_cache, corrupt_cache, metric, *sender, component=component, verbose=False
        ).numpy()
    got = np.zeros_like(theirs)
    for (layer, h, _), v in zip(ours.units, ours.values):
        got[layer, h] = v
    assert {u[0] for u in ours.units} == set(range(1, model.config.n_layer))
    np.testing.assert_allclose(got, theirs, atol=TL_ATOL)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_residual_stream_equals_transformer_lens_and_averages_over_pairs(models, bridges, name, direction):
    """get_act_patch_resid_pre ([layer, pos]); noising is the same call with the prompts' roles swapped."""
    import torch
    from transformer_lens import patching

    model = models[name]
    bridge = bridges[name]
    pairs = [_pair(model.config.vocab_size, seed=5), _pair(model.config.vocab_size, seed=6)]
    theirs = []
    for p in pairs:
        src, tgt = (p.clean, p.corrupt) if direction == "denoise" else (p.corrupt, p.clean)
        _, cache = bridge.run_with_cache(torch.tensor(src)[None])
        with torch.no_grad():
            theirs.append(
                patching.get_act_patch_resid_pre(bridge, torch.tensor(tgt)[None], cache, _logit_diff(p)).numpy()
            )
    for chosen, expected, batch in [(pairs[:1], theirs[0], 64), (pairs, (theirs[0] + theirs[1]) / 2, 5)]:
        ours = patch(model.checkpoint, chosen, site="resid", by_pos=True, direction=direction, batch=batch)
        assert len(ours.units) == model.config.n_layer * len(pairs[0].clean)
        got = np.full_like(expected, np.nan)
        for (layer, h, pos), v in zip(ours.units, ours.values):
            assert h is None
            got[layer, pos] = v
        np.testing.assert_allclose(got, expected, atol=TL_ATOL)
    with torch.no_grad():
        runs = [(bridge(torch.tensor(p.clean)[None]), bridge(torch.tensor(p.corrupt)[None]), p) for p in pairs]
    clean = np.mean([float(_logit_diff(p)(c)) for c, _, p in runs])
    corrupt = np.mean([float(_logit_diff(p)(k)) for _, k, p in runs])
    np.testing.assert_allclose([ours.clean_value, ours.corrupt_value], [clean, corrupt], atol=TL_ATOL)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
@pytest.mark.parametrize("kind", ["logprob", "prob", "loss"])
def test_every_metric_equals_transformer_lens(models, bridges, name, kind):
    """logprob and prob of the answer at the last position, and loss; the clean and corrupted values too.

    loss is a run's mean next-token loss on its own prompt's tokens (the patched run's: the target prompt's).
    """
    import torch
    from transformer_lens import patching

    model, bridge = models[name], bridges[name]
    p = _pair(model.config.vocab_size, seed=8)
    clean_t, corrupt_t = torch.tensor(p.clean), torch.tensor(p.corrupt)

    def reference(logits, target=corrupt_t):
        logp = torch.log_softmax(logits[0].double(), -1)
        if kind == "loss":
            return -logp[:-1].gather(-1, target[1:, None]).mean()
        return logp[-1, p.answer] if kind == "logprob" else logp[-1, p.answer].exp()

    _, cache = bridge.run_with_cache(clean_t[None])
    with torch.no_grad():
        theirs = patching.get_act_patch_resid_pre(bridge, corrupt_t[None], cache, reference).numpy()
        clean = float(reference(bridge(clean_t[None]), clean_t))
        corrupt = float(reference(bridge(corrupt_t[None])))
    ours = patch(model.checkpoint, [p], metric_kind=kind, site="resid", by_pos=True)
    got = np.full_like(theirs, np.nan)
    for (layer, _, pos), v in zip(ours.units, ours.values):
        got[layer, pos] = v
    np.testing.assert_allclose(got, theirs, atol=TL_ATOL)
    np.testing.assert_allclose([ours.clean_value, ours.corrupt_value], [clean, corrupt], atol=TL_ATOL)


def test_recomputed_attention_keeps_a_per_layer_scale(tmp_path):
    """q/k/v/pattern sites recompute a layer's z: with GPT-2's 1/(layer + 1) scaling, unpatched it is the forward's."""
    from mhacli.analyses.patch import attend

    tok = train_tokenizer(tmp_path / "tok")
    model = mhacli.load(build(tmp_path / "m", "gpt2", GPT2 | {"scale_attn_by_inverse_layer_idx": True}, tok, seed=4))
    run = record(model.checkpoint, _pair(model.config.vocab_size).clean)
    for layer, acts in enumerate(run.acts):
        np.testing.assert_allclose(attend(model.checkpoint, layer, acts.q, acts.k, acts.v), acts.z, atol=1e-5)


def _all_heads_restored(model, p: Pair) -> float:
    """The corrupted run's logit difference with every head's output z of every layer taken from the clean run."""
    clean = record(model.checkpoint, p.clean)
    edits = {layer: (lambda z, a=clean.acts[layer]: a.z) for layer in range(model.config.n_layer)}
    x = embed(model.checkpoint, p.corrupt)
    for trace in forward_from(model.checkpoint, x, 0, model.config.n_layer, edits=edits):
        x = trace.residual
    return read_metric(model.checkpoint, x, p.corrupt, "logit_diff", p.answer, p.wrong)


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "bundled"])
@pytest.mark.parametrize("last_changed", [False, True])
def test_the_whole_residual_stream_of_any_layer_restores_exactly_the_clean_metric(models, bundled, name, last_changed):
    """resid_pre at every position of any layer restores the clean metric; all heads only if the last token is same.

    The residual stream entering a layer is all the later layers read: restored whole, the rest is the clean run (the
    corrupted one when noising). Every head's output restored at every layer at once leaves the corrupted
    embeddings and the MLPs (position-wise) at the changed positions: the last position's stream is the clean one
    when its token is the same in both prompts, and not when it differs.
    """
    model = bundled if name == "bundled" else models[name]
    p = _pair(model.config.vocab_size, seed=7)
    if last_changed:
        corrupt = p.corrupt.copy()
        corrupt[-1] = (p.clean[-1] % (model.config.vocab_size - 1)) + 1  # another token, not 0
        p = Pair(p.clean, corrupt, p.answer, p.wrong)
    for direction, restored in [("denoise", "clean_value"), ("noise", "corrupt_value")]:
        r = patch(model.checkpoint, [p], site="resid", direction=direction)
        assert [u for u in r.units] == [(layer, None, None) for layer in range(model.config.n_layer)]
        assert abs(r.clean_value - r.corrupt_value) > 0.01  # the pair does differ
        tol = 1e-4 * max(1.0, abs(r.clean_value))
        np.testing.assert_allclose(r.values, getattr(r, restored), atol=tol)
        np.testing.assert_allclose([r.score(v) for v in r.values], 1.0 if direction == "denoise" else 0.0, atol=1e-3)
    all_heads = _all_heads_restored(model, p)
    if last_changed:
        assert abs(all_heads - r.clean_value) > 1e-3, (all_heads, r.clean_value)
    else:
        assert abs(all_heads - r.clean_value) < tol, (all_heads, r.clean_value)


@pytest.mark.parametrize("noise", [False, True])
def test_a_position_whose_residual_is_the_same_in_both_runs_scores_zero(bundled, noise):
    # the prompts differ at positions 2 and 5: before them every layer's residual stream is the same in both runs,
    # and entering layer 0 (the embeddings) it is the same wherever the tokens are
    model = bundled
    p = _pair(model.config.vocab_size)
    r = patch(model.checkpoint, [p], site="resid", by_pos=True, direction="noise" if noise else "denoise")
    unchanged = 1.0 if noise else 0.0
    same = [(layer, pos) for layer, _, pos in r.units if pos < 2 or (layer == 0 and p.clean[pos] == p.corrupt[pos])]
    assert len(same) == 2 * model.config.n_layer + 4
    scores = {(layer, pos): r.score(v) for (layer, _, pos), v in zip(r.units, r.values)}
    assert max(abs(scores[u] - unchanged) for u in same) < 1e-4  # float32 rounding of a batched rerun
    assert abs(scores[(0, 2)] - unchanged) > 0.01 and abs(scores[(0, 5)] - unchanged) > 0.01  # the changed ones move


def test_identical_prompts_score_nothing_and_divide_by_nothing(bundled):
    model = bundled
    p = _pair(model.config.vocab_size)
    same = Pair(p.clean, p.clean, p.answer, p.wrong)
    for site, by_pos in [("z", False), ("q", False), ("k", False), ("v", False), ("pattern", False), ("resid", True)]:
        r = patch(model.checkpoint, [same], site=site, by_pos=by_pos)
        assert r.clean_value == r.corrupt_value
        assert r.score(r.values[0]) is None
        np.testing.assert_allclose(r.values, r.clean_value, atol=1e-5)


@pytest.mark.parametrize("noise", [False, True])
def test_a_head_whose_activation_is_the_same_in_both_runs_scores_zero(bundled, noise):
    # the prompts differ at positions 2 and 5: at positions 0 and 1 every head's output is the same in both runs
    model = bundled
    p = _pair(model.config.vocab_size)
    r = patch(model.checkpoint, [p], site="z", by_pos=True, direction="noise" if noise else "denoise")
    scores = [r.score(v) for (_, _, pos), v in zip(r.units, r.values) if pos < 2]
    assert len(scores) == 2 * model.config.n_layer * model.config.n_head
    unchanged = 1.0 if noise else 0.0  # noising leaves the clean run as it was: the patched metric is the clean one
    assert max(abs(s - unchanged) for s in scores) < 1e-5
    assert (
        max(abs(r.score(v) - unchanged) for (_, _, pos), v in zip(r.units, r.values) if pos == 7) > 0.01
    )  # the last one moves


def test_bundled_model_induction_and_previous_token_heads_carry_the_repeat():
    out = run_mha("patch", REPEAT, CHANGED, "--answer", " h", "--wrong", " f", "-f", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.decode())
    top = [(h["layer"], h["head"], h["kind"]) for h in doc["heads"][:2]]
    assert top == [(1, 2, "induction"), (0, 3, "previous-token")]
    scores = [h["score"] for h in doc["heads"]]
    assert scores[0] > 1.0 and scores[1] > 0.5 and scores[2] < 0.2  # measured 1.09, 0.61, then 0.16


@pytest.mark.parametrize(
    "kwargs, param, words",
    [
        ({"sender": (2, 0)}, "sender", "sender 2.0 is not a head of this model (layers 0..1, heads 0..3)"),
        ({"sender": (-1, 0)}, "sender", "sender -1.0 is not a head of this model (layers 0..1, heads 0..3)"),
        ({"sender": (0, 4)}, "sender", "sender 0.4 is not a head of this model (layers 0..1, heads 0..3)"),
        ({"sender": (0, -1)}, "sender", "sender 0.-1 is not a head"),
        ({"sender": (1, 0)}, "sender", "sender 1.0 is in the last layer: no later head receives its write"),
        ({"site": "mlp"}, "site", "unknown site 'mlp': one of z, q, k, v, pattern, resid"),
        ({"sender": (0, 0), "receiver_site": "z"}, "receiver_site", "unknown receiver_site 'z': one of q, k, v"),
        ({"direction": "sideways"}, "direction", "direction 'sideways': one of denoise, noise"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_parameter(bundled, kwargs, param, words):
    """The analysis' own checks (the CLI's flags spell the same errors, test_bad_input_is_one_error_line)."""
    p = _pair(bundled.config.vocab_size)
    with pytest.raises(UsageError) as e:
        patch(bundled.checkpoint, [p], **kwargs)
    assert e.value.params == (param,) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("sender", [(0, 0), (0, 3)])
def test_a_sender_of_the_first_layer_is_accepted_at_its_edges(bundled, sender):
    r = patch(bundled.checkpoint, [_pair(bundled.config.vocab_size)], sender=sender)
    assert {u[0] for u in r.units} == {1} and len(r.units) == bundled.config.n_head


def test_by_position_needs_pairs_of_one_length(bundled):
    p, q = _pair(bundled.config.vocab_size), _pair(bundled.config.vocab_size, seed=1)
    short = Pair(q.clean[:6], q.corrupt[:6], q.answer, q.wrong)
    with pytest.raises(UsageError) as e:
        patch(bundled.checkpoint, [p, short], site="resid", by_pos=True)
    assert e.value.params == ("by_pos",) and str(e.value) == "by_pos needs every pair of the same length"
    assert len(patch(bundled.checkpoint, [p, short], site="resid").units) == bundled.config.n_layer  # all positions


RESID = ["patch", REPEAT, CHANGED, "--answer", " h", "--wrong", " f", "--site", "resid"]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "tsv", "text"])
def test_resid_site_in_every_format(fmt):
    """A row per (layer, position), head fields empty; --by-pos is implied; text labels the columns with tokens."""
    out = run_mha(*RESID, "-f", fmt)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    n_layer, n_seq = 2, len(REPEAT.split())
    if fmt == "json":
        doc = json.loads(text)
        assert doc["site"] == "resid" and doc["clean"]["tokens"][1] == " b"
        rows = doc["heads"]
        by_pos = json.loads(run_mha(*RESID, "--by-pos", "-f", "json").stdout)
        assert by_pos["heads"] == rows  # --by-pos changes nothing: resid is always per position
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = text.splitlines()
        assert lines[0].split(sep) == ["layer", "head", "kv_head", "kind", "pos", "value", "score"]
        cells = [line.split(sep) for line in lines[1:]]
        assert all(c[1] == c[2] == c[3] == "" for c in cells)
        rows = [
            {"layer": int(c[0]), "head": None, "kv_head": None, "pos": int(c[4]), "score": float(c[6])} for c in cells
        ]
    else:
        lines = text.splitlines()
        assert lines[2].split() == ["layer/pos", *map(str, range(n_seq))]
        assert lines[3].split() == ["clean", *("·" + t if i else t for i, t in enumerate(REPEAT.split()))]
        assert lines[4].split() == ["corrupt", *("·" + t if i else t for i, t in enumerate(CHANGED.split()[:8]))]
        grid = [line.split() for line in lines[5 : 5 + n_layer]]
        assert [g[0] for g in grid] == ["0", "1"] and all(len(g) == 1 + n_seq for g in grid)
        assert lines[5 + n_layer] == "top:" and lines[6 + n_layer].split()[:3] == ["L1", "pos", "7"]
        return
    assert sorted((r["layer"], r["pos"]) for r in rows) == [(L, p) for L in range(n_layer) for p in range(n_seq)]
    assert all(r["head"] is None and r["kv_head"] is None for r in rows)
    scores = {(r["layer"], r["pos"]): r["score"] for r in rows}
    assert abs(scores[(0, 8)]) < 1e-4  # the same token at the same place: the same embedding, nothing to restore
    assert max(scores, key=lambda k: scores[k]) == (1, 7)  # the stream at the first copy's ' h', entering layer 1


def test_resid_site_pictures_and_rich_view(tmp_path):
    pytest.importorskip("matplotlib")
    png, html = tmp_path / "r.png", tmp_path / "r.html"
    out = run_mha(*RESID, "--save", str(png), "--save", str(html), "-f", "rich", env={"COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    assert png.read_bytes().startswith(b"\x89PNG")
    page = html.read_text()
    assert "L1 pos 7" in page and "L0 pos 14" in page
    lines = out.stdout.decode().splitlines()
    assert lines[2].split()[0] == "layer/pos" and lines[3].split()[:2] == ["clean", "a"]


@pytest.mark.parametrize(
    "args, words",
    [
        (["a b c", "a b", "--answer", " a", "--wrong", " b"], "differ in length"),
        (["a b c", "a b d", "--answer", " abcdefgh xyz", "--wrong", " b"], "not one"),
        (["a b c", "a b d", "--answer", " b", "--wrong", " b"], "same token"),
        (["a b c", "a b d", "--answer", " a", "--wrong", " b", "--site", "mlp"], "unknown"),
        (["a b c", "a b d", "--answer", " a", "--wrong", " b", "--sender", "1.0"], "last layer"),
    ],
)
def test_bad_input_is_one_error_line(args, words):
    out = run_mha("patch", *args)
    assert out.returncode == 2
    lines = out.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], out.stderr


def test_malformed_pairs_line_is_named(tmp_path):
    f = tmp_path / "pairs.jsonl"
    good = {"clean": "a b c", "corrupt": "a b d", "answer": " a", "wrong": " b"}
    f.write_text(json.dumps(good) + "\n{not json\n")
    out = run_mha("patch", "--pairs", str(f))
    assert out.returncode == 2 and b"line 2" in out.stderr and out.stderr.count(b"\n") == 1, out.stderr
    out = run_mha("patch", "--pairs", "-", input=json.dumps(good) + "\n" + json.dumps(good) + "\n")
    assert out.returncode == 0, out.stderr
    assert json.loads(run_mha("patch", "--pairs", "-", "-f", "json", input=json.dumps(good)).stdout)["n_pairs"] == 1


def test_smollm2_ioi_heads_and_their_ablation_agree():
    """README's numbers: SmolLM2 on the 8 IOI pairs of tests/data/ioi_pairs.jsonl (names swapped)."""
    from helpers import smollm2_gguf

    from mhacli.analyses.ablate import removal_edits
    from mhacli.analyses.readout import metric
    from mhacli.engine.forward import forward

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("no SmolLM2 GGUF (MHA_SMOLLM2_GGUF)")
    model = mhacli.load(gguf, cache=True)
    pairs = [json.loads(line) for line in (DATA / "ioi_pairs.jsonl").read_text().splitlines() if line.strip()]
    report = mhacli.patch(model, pairs=pairs)
    assert report.clean_value > 3.0 > report.corrupt_value
    top = [(h.layer, h.head) for h in report.heads[:3]]
    assert top == TOP_IOI_HEADS, [(h.layer, h.head, h.score) for h in report.heads[:5]]

    def clean_mean(edits) -> float:
        total = 0.0
        for p in pairs:
            ids = model.tokenize(p["clean"]).ids
            x = None
            for trace in forward(model.checkpoint, ids, edits=edits):
                x = trace.residual
            answer, wrong = ids_of(model, p["answer"]), ids_of(model, p["wrong"])
            total += metric(model.checkpoint, x, ids, "logit_diff", answer, wrong)
        return total / len(pairs)

    intact = clean_mean(None)
    assert abs(intact - report.clean_value) < 1e-3
    assert clean_mean(removal_edits(top)) < 1.0  # measured 4.41 -> 0.32


def ids_of(model, text: str) -> int:
    from mhacli.ops.tokens import one_token

    token = one_token(model.tokenizer, model.config.vocab_size, text=text, token_id=None, param="answer")
    assert token is not None
    return token.id


def test_save_writes_the_grid_and_the_page(tmp_path):
    pytest.importorskip("matplotlib")
    png, html = tmp_path / "p.png", tmp_path / "p.html"
    out = run_mha("patch", REPEAT, CHANGED, "--answer", " h", "--wrong", " f", "--save", str(png), "--save", str(html))
    assert out.returncode == 0, out.stderr
    assert png.read_bytes().startswith(b"\x89PNG") and "L1H2" in html.read_text()
