"""Loss, head ablation and pruning: mhacli.analyses.loss and .ablate, `mha ablate`, `mha prune`, `--ablate`.

References are independent: HF's own `labels=ids` loss of its *ForCausalLM class, and HF with a forward pre-hook on
the attention output projection (c_proj / o_proj) that zeroes a head's input columns or replaces them by the head's
mean input captured from HF's own intact run. Nothing expected comes from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import LLAMA, WINDOW, bos_tokenizer, build, build_model, parse_json, run_mha

LOSS_RTOL = 1e-5  # the bound: mean next-token loss vs HF, relative
IDS = np.random.default_rng(3).integers(1, 400, size=40)

# name -> (kind, config fields); tied and untied output heads, every family
FAMILIES = {
    "llama_gqa_untied": ("llama", LLAMA | {"num_hidden_layers": 3}),
    "llama_mqa_tied": (
        "llama",
        LLAMA | {"num_hidden_layers": 3, "num_key_value_heads": 1, "tie_word_embeddings": True},
    ),
    "mistral_window": ("mistral", LLAMA | {"num_hidden_layers": 3, "sliding_window": WINDOW}),
    "bigcode_mqa": ("gpt_bigcode", {"vocab_size": 400, "n_embd": 64, "n_layer": 3, "n_head": 8, "n_positions": 64}),
    "olmo2": ("olmo2", LLAMA | {"num_hidden_layers": 3}),
    "olmo3": ("olmo3", LLAMA | {"num_hidden_layers": 3, "sliding_window": WINDOW}),
}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    built = {}
    for n, (name, (kind, fields)) in enumerate(FAMILIES.items()):
        tok = tokenizer_dir if kind == "gpt_bigcode" else bos
        built[name] = build(tmp_path_factory.mktemp(name), kind, fields, tok, seed=40 + n)
    gpt2 = dict(n_layer=3, n_head=4, n_embd=32, vocab_size=400, n_positions=64)
    built["gpt2_tied"] = build_model(tmp_path_factory.mktemp("gpt2_tied"), tokenizer_dir, seed=5, **gpt2)
    built["gpt2_untied"] = build_model(
        tmp_path_factory.mktemp("gpt2_untied"), tokenizer_dir, seed=6, tie_word_embeddings=False, **gpt2
    )
    return built


def hf_lm(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()


def out_projections(model) -> list:
    """Each layer's attention output projection, whose input is the concatenated head outputs."""
    base = model.base_model
    blocks = base.h if hasattr(base, "h") else base.layers
    return [b.attn.c_proj if hasattr(b, "attn") else b.self_attn.o_proj for b in blocks]


def hf_loss(model, ids, heads=(), means=None, loss_from: int = 1) -> float:
    """HF's mean next-token loss over targets t >= max(1, loss_from), with `heads` [(layer, head)] removed.

    A pre-hook on the output projection zeroes them, or sets them to means[layer][head] ([d_head], from HF's intact
    run).
    """
    import torch

    projections = out_projections(model)
    d = (
        model.config.hidden_size // model.config.num_attention_heads
        if not getattr(model.config, "head_dim", None)
        else model.config.head_dim
    )
    hooks = []
    for layer, head in heads:

        def pre(module, args, head=head, layer=layer):
            x = args[0].clone()
            x[..., head * d : (head + 1) * d] = 0.0 if means is None else means[layer][head]
            return (x,)

        hooks.append(projections[layer].register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([list(ids)])).logits[0].float()
    finally:
        for h in hooks:
            h.remove()
    start = max(1, loss_from)
    logp = torch.log_softmax(logits[start - 1 : -1], dim=-1)
    targets = torch.tensor(list(ids[start:]))
    return float(-logp[torch.arange(len(targets)), targets].double().mean())


def hf_head_means(model, ids) -> list:
    """Each layer's output-projection input on the intact model, averaged over positions, split per head."""
    import torch

    seen = {}
    hooks = [
        p.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0][0].mean(dim=0).clone()))
        for i, p in enumerate(out_projections(model))
    ]
    with torch.no_grad():
        model(torch.tensor([list(ids)]))
    for h in hooks:
        h.remove()
    n_head = model.config.num_attention_heads
    return [seen[i].reshape(n_head, -1) for i in range(len(seen))]


def ours(directory: Path):
    from mhacli.io.weights import load_model

    return load_model(str(directory), cache=True)


# --- the loss ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*FAMILIES, "gpt2_tied", "gpt2_untied"])
def test_baseline_loss_equals_hf(family_models, name):
    """Our NumPy output head and log-softmax against HF's labels=ids loss, tied and untied heads, every family."""
    import torch

    from mhacli.analyses.ablate import Ablator

    model = hf_lm(family_models[name])
    with torch.no_grad():
        ref = float(model(torch.tensor([IDS.tolist()]), labels=torch.tensor([IDS.tolist()])).loss)
    got = Ablator(ours(family_models[name]), [IDS]).baseline
    assert abs(got - ref) <= LOSS_RTOL * ref, f"{name}: loss {got:.7f} vs HF {ref:.7f}"


def test_untied_head_is_really_read(family_models):
    """The untied model's lm_head differs from its embeddings, so a loss computed with the wrong one would fail."""
    ckpt = ours(family_models["gpt2_untied"])
    from mhacli.analyses.loss import output_head

    assert not ckpt.config.tie_word_embeddings
    assert not np.allclose(output_head(ckpt), ckpt.get("wte.weight"))


def test_streamed_log_softmax_is_blocked_exactly():
    """The vocabulary streamed in blocks gives the same log-sum-exp as one block, for any block size."""
    from mhacli.analyses.loss import logsumexp_rows

    rng = np.random.default_rng(0)
    h = rng.standard_normal((7, 16), dtype=np.float32) * 4
    w = rng.standard_normal((1000, 16), dtype=np.float32)
    ref = np.log(np.exp((h @ w.T).astype(np.float64)).sum(axis=1))
    for block in (1, 33, 999, 1000, 5000):
        np.testing.assert_allclose(logsumexp_rows(h, w, block), ref, rtol=2e-6)


def test_base_model_without_output_head_is_refused_for_the_loss(tmp_path, tokenizer_dir, mha):
    """A GPT-2 saved as its base model still ties (its embeddings are the head).

    A Llama base model without lm_head.weight cannot be scored: one error line.
    """
    directory = build(tmp_path / "base", "llama", LLAMA, bos_tokenizer(tmp_path / "tok"), base_model=True)
    r = mha("ablate", "The cat sat on the mat", "-m", str(directory))
    assert r.returncode == 2 and r.stderr.decode().startswith("error: ") and "lm_head.weight" in r.stderr.decode()
    assert mha("stats", "The cat sat on the mat", "-m", str(directory), "-f", "json").returncode == 0  # the rest works


# --- ablation against HF's pre-hook -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["zero", "mean"])
@pytest.mark.parametrize("name", [*FAMILIES, "gpt2_untied"])
def test_ablated_losses_equal_hf(family_models, name, method):
    """Heads in the first, a middle and the last layer, one at a time and together, with targets from position 5."""
    from mhacli.analyses.ablate import Ablator

    directory = family_models[name]
    model = hf_lm(directory)
    means = hf_head_means(model, IDS) if method == "mean" else None
    ablator = Ablator(ours(directory), [IDS], method=method, loss_from=5)
    n_head = model.config.num_attention_heads
    sets = [[(0, 1)], [(1, n_head - 1)], [(2, 0)], [(0, 0), (1, 2), (2, n_head - 1)]]
    for heads in sets:
        ref = hf_loss(model, IDS, heads, means, loss_from=5)
        got = ablator.loss(heads)
        assert abs(got - ref) <= LOSS_RTOL * ref, f"{name} {method} {heads}: {got:.7f} vs HF {ref:.7f}"
    assert ablator.baseline == pytest.approx(hf_loss(model, IDS, loss_from=5), rel=LOSS_RTOL)


def test_ablation_reuses_cached_layers_correctly(family_models):
    """Evaluations from a cached base (set_base) equal evaluations from scratch, in any order."""
    from mhacli.analyses.ablate import Ablator

    ckpt = ours(family_models["llama_gqa_untied"])
    a = Ablator(ckpt, [IDS, IDS[:20]], method="mean")
    ref = {h: Ablator(ckpt, [IDS, IDS[:20]], method="mean").loss([(1, 3), h]) for h in [(0, 0), (2, 5), (1, 3)]}
    a.set_base([(1, 3)])
    for h, want in ref.items():
        assert a.loss([h]) == pytest.approx(want, rel=1e-6)


# --- the bundled model: the heads that matter are the ones whose pattern says so -------------------------------------


def repeated_random(seed: int, n: int = 40) -> np.ndarray:
    seq = np.random.default_rng(seed).integers(1, 2048, n)
    return np.concatenate([seq, seq])


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_sample_model_induction_and_previous_token_heads_matter_most(method):
    """20 texts of 40 random tokens repeated twice, scored on the second copy (--loss-from 41).

    Removing L1H2 (the induction head) or L0H3 (the previous-token head) raises the loss far more than any other head.
    Measured: zero: L1H2 +18.9, L0H3 +10.3, next L0H1 +5.1 nats/token; mean: L1H2 +19.4, L0H3 +10.2, next +0.08.
    """
    from mhacli.analyses.ablate import Ablator, ablate_each
    from mhacli.io.weights import load_model

    ablator = Ablator(
        load_model(None, cache=True), [repeated_random(100 + i) for i in range(20)], method=method, loss_from=41
    )
    effects = {(e.layer, e.head): e.delta for e in ablate_each(ablator, ablator.heads)}
    others = max(v for k, v in effects.items() if k not in ((1, 2), (0, 3)))
    assert effects[(1, 2)] > 15.0 and effects[(0, 3)] > 8.0, effects
    assert min(effects[(1, 2)], effects[(0, 3)]) > (1.5 if method == "zero" else 20.0) * max(others, 0.01), effects
    assert ablator.baseline < 0.2  # the intact model copies the second half almost perfectly


# --- the CLI ----------------------------------------------------------------------------------------------------------

TEXT = "ROMEO: I love thee, Juliet. JULIET: I love thee, Romeo. ROMEO: I love thee, Juliet."


@pytest.mark.parametrize("via_stdin", [False, True])
def test_ablate_json_matches_the_contract(tiny_model, via_stdin):
    args = ["ablate", "-m", str(tiny_model), "-f", "json", "--loss-from", "3"]
    r = run_mha(*args, "-", input=TEXT) if via_stdin else run_mha(*args, TEXT)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    doc = parse_json(r.stdout)
    assert {
        "model",
        "tokens",
        "token_ids",
        "n_texts",
        "method",
        "loss_from",
        "n_targets",
        "baseline_loss",
        "heads",
    } <= doc.keys()
    assert doc["n_targets"] == len(doc["token_ids"]) - 3 and doc["method"] == "zero" and doc["n_texts"] == 1
    assert len(doc["heads"]) == 2 * 4
    deltas = [h["delta"] for h in doc["heads"]]
    assert deltas == sorted(deltas, reverse=True)
    for h in doc["heads"]:
        assert h["delta"] == pytest.approx(h["loss"] - doc["baseline_loss"], abs=1e-9)
        assert h["delta_pct"] == pytest.approx(100 * h["delta"] / doc["baseline_loss"], rel=1e-9)
        assert h["kv_head"] == h["head"]


def test_ablate_formats_agree(tiny_model):
    """jsonl, csv and tsv carry the same rows as json, in the same order."""
    doc = parse_json(run_mha("ablate", TEXT, "-m", str(tiny_model), "-f", "json", "-l", "1").stdout)
    want = [(h["layer"], h["head"], h["kind"], round(h["loss"], 6)) for h in doc["heads"]]
    lines = run_mha("ablate", TEXT, "-m", str(tiny_model), "-f", "jsonl", "-l", "1").stdout.decode().splitlines()
    assert [(d["layer"], d["head"], d["kind"], round(d["loss"], 6)) for d in map(json.loads, lines)] == want
    for fmt, sep in (("csv", ","), ("tsv", "\t")):
        rows = run_mha("ablate", TEXT, "-m", str(tiny_model), "-f", fmt, "-l", "1").stdout.decode().splitlines()
        assert rows[0].split(sep) == ["layer", "head", "kind", "loss", "delta", "delta_pct"]
        got = [(int(r[0]), int(r[1]), r[2], round(float(r[3]), 6)) for r in (row.split(sep) for row in rows[1:])]
        assert got == want


def test_ablate_text_and_terminal_views(tiny_model):
    plain = run_mha("ablate", TEXT, "-m", str(tiny_model)).stdout.decode()
    assert "baseline" in plain and "\x1b[" not in plain and len(plain.splitlines()) == 4 + 1 + 8
    rich = run_mha("ablate", TEXT, "-m", str(tiny_model), "-f", "rich", env={"COLUMNS": "100"}).stdout.decode()
    assert "Δloss per head removed" in rich and "heads that matter most" in rich


def test_texts_file_is_token_weighted(tiny_model, tmp_path):
    """Two texts: the baseline is the token-weighted mean of the two single-text baselines."""
    a, b = "The cat sat on the mat.", "ROMEO: But, soft! what light through yonder window breaks?"
    (tmp_path / "t.txt").write_text(f"{a}\n\n{b}\n")
    one = [
        parse_json(run_mha("ablate", t, "-m", str(tiny_model), "-f", "json", "-l", "0", "-H", "0").stdout)
        for t in (a, b)
    ]
    f = str(tmp_path / "t.txt")  # each text alone: the weighted mean exactly (packed: test_pack_texts.py)
    both = parse_json(
        run_mha(
            "ablate", "--texts", f, "-m", str(tiny_model), "-f", "json", "-l", "0", "-H", "0", "--pack-tokens", "1"
        ).stdout
    )
    assert both["n_texts"] == 2 and both["n_targets"] == one[0]["n_targets"] + one[1]["n_targets"]
    weighted = sum(d["baseline_loss"] * d["n_targets"] for d in one) / both["n_targets"]
    assert both["baseline_loss"] == pytest.approx(weighted, rel=1e-9)


def prune_doc(model: Path, *extra: str) -> dict:
    r = run_mha("prune", TEXT, "-m", str(model), "-f", "json", *extra)
    assert r.returncode == 0, r.stderr
    return parse_json(r.stdout)


def test_prune_curves(tiny_model, tmp_path):
    doc = prune_doc(
        tiny_model, "--step", "0.25", "--seeds", "3", "--max-increase", "0.02", "--save-mask", str(tmp_path / "m.json")
    )
    imp, rnd = doc["importance"]["curve"], doc["random"]["curve"]
    base = doc["baseline_loss"]
    assert imp[0] == {"n_removed": 0, "fraction": 0.0, "loss": base, "removed": []}
    assert [s["n_removed"] for s in imp] == [s["n_removed"] for s in rnd] == [0, 2, 4, 6, 8]
    assert (
        rnd[0]["loss_mean"] == pytest.approx(base, rel=1e-12)
        and rnd[0]["loss_std"] < 1e-12
        and doc["random"]["seeds"] == 3
    )
    # every head removed: the same model whatever the order
    assert imp[-1]["loss"] == pytest.approx(rnd[-1]["loss_mean"], rel=1e-6) and rnd[-1]["loss_std"] < 1e-6 * base
    # each round removes new heads; together, all of them
    removed = [tuple(h) for s in imp for h in s["removed"]]
    assert sorted(removed) == [(layer, h) for layer in range(2) for h in range(4)]
    # --max-increase: the prunable fraction is the largest whose loss is within the bound, and the pruned set is the
    # heads removed up to there
    bound = base * 1.02
    for order, key in (("importance", "loss"), ("random", "loss_mean")):
        ok = [s["fraction"] for s in doc[order]["curve"] if s[key] <= bound]
        assert doc[order]["prunable_fraction"] == max(ok)
    upto = [tuple(h) for s in imp if s["fraction"] <= doc["importance"]["prunable_fraction"] for h in s["removed"]]
    assert sorted(map(tuple, doc["pruned"])) == sorted(upto)
    # round 1 removes the heads `mha ablate` finds least important on the intact model
    effects = parse_json(run_mha("ablate", TEXT, "-m", str(tiny_model), "-f", "json").stdout)["heads"]
    least = sorted(effects, key=lambda h: (h["delta"], h["layer"], h["head"]))[:2]
    assert sorted(map(tuple, imp[1]["removed"])) == sorted((h["layer"], h["head"]) for h in least)
    # the mask file round-trips into --ablate @file, and equals the same heads listed
    mask = json.loads((tmp_path / "m.json").read_text())
    shape = {"n_layer": 2, "n_head": 4, "d_head": doc["model"]["d_head"]}
    assert mask == {"model": shape, "method": "zero", "heads": doc["pruned"]}
    if doc["pruned"]:
        listed = ",".join(f"{a}.{b}" for a, b in doc["pruned"])
        via_file = run_mha("stats", TEXT, "-m", str(tiny_model), "-f", "json", "--ablate", f"@{tmp_path / 'm.json'}")
        via_list = run_mha("stats", TEXT, "-m", str(tiny_model), "-f", "json", "--ablate", listed)
        assert via_file.returncode == 0 and parse_json(via_file.stdout) == parse_json(via_list.stdout)


def test_prune_random_baseline_uses_the_seeds(tiny_model):
    one = prune_doc(tiny_model, "--step", "0.25", "--seeds", "1")
    assert all(s["loss_std"] == 0.0 for s in one["random"]["curve"])
    five = prune_doc(tiny_model, "--step", "0.25", "--seeds", "5")
    assert any(s["loss_std"] > 0 for s in five["random"]["curve"])
    assert [s["loss_mean"] for s in one["random"]["curve"]] != [s["loss_mean"] for s in five["random"]["curve"]]


def test_prune_views(tiny_model):
    out = run_mha("prune", TEXT, "-m", str(tiny_model), "--step", "0.5", "--seeds", "2").stdout.decode()
    assert "fraction of heads removed" in out and "least important first" in out and "\x1b[" not in out
    rows = (
        run_mha("prune", TEXT, "-m", str(tiny_model), "--step", "0.5", "--seeds", "2", "-f", "csv")
        .stdout.decode()
        .splitlines()
    )
    assert rows[0] == "order,n_removed,fraction,loss,loss_std,removed" and len(rows) == 1 + 3 + 3


def test_ablate_option_changes_later_layers_only(tiny_model):
    """--ablate 0.1 on stats: layer 0's statistics stay, layer 1's change (K/Q/V composition through the residual)."""
    plain = parse_json(run_mha("stats", TEXT, "-m", str(tiny_model), "-f", "json").stdout)["heads"]
    cut = parse_json(run_mha("stats", TEXT, "-m", str(tiny_model), "-f", "json", "--ablate", "0.1").stdout)["heads"]
    assert [h["stats"] for h in plain[:4]] == [h["stats"] for h in cut[:4]]
    assert [h["stats"] for h in plain[4:]] != [h["stats"] for h in cut[4:]]


def test_sample_model_induction_head_needs_the_previous_token_head():
    """K-composition, seen in the terminal: with L0H3 removed, L1H2 loses its induction pattern."""
    text = "The cat sat on the mat. The cat sat on the mat."
    before = {(h["layer"], h["head"]): h for h in parse_json(run_mha("stats", text, "-f", "json").stdout)["heads"]}
    after = {
        (h["layer"], h["head"]): h
        for h in parse_json(run_mha("stats", text, "-f", "json", "--ablate", "0.3").stdout)["heads"]
    }
    assert before[(1, 2)]["kind"] == "induction" and after[(1, 2)]["kind"] != "induction"
    assert after[(1, 2)]["stats"]["induction"] < 0.5 * before[(1, 2)]["stats"]["induction"]


def test_diff_with_ablate_compares_against_the_ablated_model(tiny_model):
    doc = parse_json(run_mha("diff", str(tiny_model), str(tiny_model), TEXT, "-f", "json", "--ablate", "0.2").stdout)
    div = {(h["layer_a"], h["head_a"]): h["divergence"] for h in doc["heads"]}
    assert all(div[(0, h)] == 0.0 for h in range(4)) and max(div[(1, h)] for h in range(4)) > 0.0


def test_verify_reports_the_loss(tiny_model):
    r = run_mha("verify", TEXT, "-m", str(tiny_model), "-f", "json")
    assert r.returncode == 0, r.stderr
    loss = parse_json(r.stdout)["loss"]
    assert loss["passed"] and loss["rel_err"] <= LOSS_RTOL and loss["ours"] == pytest.approx(loss["hf"], rel=LOSS_RTOL)


# --- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,message",
    [
        (["ablate", TEXT, "--ablate", "0.9"], "head 9 is out of range"),
        (["stats", TEXT, "--ablate", "2.0"], "layer 2 is out of range"),
        (["stats", TEXT, "--ablate", "0.9"], "head 9 is out of range"),
        (["inspect", TEXT, "--ablate", "1-2"], "is not a head"),
        (["diff", "MODEL", "MODEL", TEXT, "--ablate", "0.1,"], "is not a head"),
        (["prune", TEXT, "--step", "0"], "--step 0.0 must be in (0, 1]"),
        (["prune", TEXT, "--step", "1.5"], "--step 1.5 must be in (0, 1]"),
        (["prune", TEXT, "--seeds", "0"], "--seeds 0"),
        (["prune", TEXT, "--max-increase", "-1"], "--max-increase"),
        (["ablate", TEXT, "--loss-from", "500"], "--loss-from 500 is past the text"),
        (["ablate", "x"], "no next token"),
        (["ablate", TEXT, "--method", "gauss"], "'--method': 'gauss' is not one of 'zero', 'mean'"),
        (["ablate", TEXT, "--texts", "FILE"], "not both"),
        (["prune", TEXT, "--save-mask", "/nonexistent/dir/m.json"], "does not exist"),
        (["ablate", "--texts", "FILE", "--max-memory", "100K"], "more than 100.0 KiB"),
        (["prune", TEXT, "--max-memory", "1K"], "score fewer or shorter texts"),
    ],
)
def test_bad_input_is_one_error_line(tiny_model, tmp_path, args, message):
    args = [str(tiny_model) if a == "MODEL" else str(tmp_path / "t.txt") if a == "FILE" else a for a in args]
    (tmp_path / "t.txt").write_text(TEXT + "\n")
    r = run_mha(*args, *([] if args[0] == "diff" else ["-m", str(tiny_model)]))
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert r.stdout == b""


EIGHT = "[" + ", ".join(["0.5"] * 8) + "]"  # one head's mean output on the tiny model (d_head 8)
SHAPE = '"model": {"n_layer": 2, "n_head": 4}'
MEAN = '{"model": {"n_layer": 2, "n_head": 4}, "method": "mean", "heads": [[0, 1]], "means": '  # + the means + "}"


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"model": {"n_layer": 3, "n_head": 4}, "heads": [[0, 1]]}', "3 layers x 4 heads"),
        ('{"model": {"n_layer": 2, "n_head": 4, "d_head": 16}, "heads": [[0, 1]]}', "d_head 16"),
        ("{" + SHAPE + ', "method": "gauss", "heads": [[0, 1]]}', "'gauss' is not one of"),
        ("{" + SHAPE + ', "heads": [[0, 1], [0, 1]]}', "listed twice"),
        ("{" + SHAPE + ', "method": "mean", "heads": [[0, 1]]}', '"means"'),
        ("{" + SHAPE + f', "method": "zero", "heads": [[0, 1]], "means": [{EIGHT}]}}', "method is zero"),
        (MEAN + "[[0.5, 0.5]]}", "one list of 8 numbers per head"),
        ("{" + SHAPE + f', "method": "mean", "heads": [[0, 1], [1, 2]], "means": [{EIGHT}]}}', "(2 heads)"),
        (MEAN + "[[NaN, 1, 1, 1, 1, 1, 1, 1]]}", "NaN is not a number"),
        (MEAN + "[[-Infinity, 1, 1, 1, 1, 1, 1, 1]]}", "Infinity is not a number"),
        (MEAN + "[[1e39, 1, 1, 1, 1, 1, 1, 1]]}", "beyond float32's range"),
        (MEAN + "[[1" + "0" * 400 + ", 1, 1, 1, 1, 1, 1, 1]]}", "beyond float32's range"),
        (MEAN + '[[true, 1, 1, 1, 1, 1, 1, "1"]]}', "not a number"),
        ('{"model": {"n_layer": 2, "n_head": 4}, "heads": [[0, 7]]}', "head 7 is out of range"),
        ('{"model": {"n_layer": 2, "n_head": 4}, "heads": [[0, "1"]]}', "is not a [layer, head] pair"),
        ('{"model": {"n_layer": 2, "n_head": 4}}', "expected"),
        ("[1, 2", "not a JSON mask file"),
        (b"\xff\xfe", "not a JSON mask file"),
    ],
)
def test_bad_mask_file_is_one_error_line(tiny_model, tmp_path, content, message):
    path = tmp_path / "mask.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    r = run_mha("stats", TEXT, "-m", str(tiny_model), "--ablate", f"@{path}")
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    r = run_mha("stats", TEXT, "-m", str(tiny_model), "--ablate", f"@{tmp_path / 'missing.json'}")
    assert r.returncode == 2 and "cannot read" in r.stderr.decode()


# --- masks that round-trip: prune --save-mask, then ablate --ablate @mask ---------------------------------------------

ROUND_TRIP_RTOL = 1e-6


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_a_mask_replays_what_prune_measured(tiny_model, tmp_path, method):
    """Prune's printed loss after step k equals `ablate --ablate @mask`'s baseline for the heads pruned by step k.

    The mask of every step is the saved one cut to the heads removed by then (the rows of a mean mask keep their
    means); with --max-increase past any loss, prune saves every head. Each head row of that ablate is a further
    removal: a head of the mask costs nothing more.
    """
    saved = tmp_path / "all.json"
    doc = prune_doc(
        tiny_model, "--method", method, "--step", "0.25", "--seeds", "1", "--max-increase", "1e9",
        "--save-mask", str(saved),
    )  # fmt: skip
    mask = json.loads(saved.read_text())
    assert mask["method"] == method and sorted(map(tuple, mask["heads"])) == sorted(map(tuple, doc["pruned"]))
    assert ("means" in mask) == (method == "mean")
    rows = {tuple(h): i for i, h in enumerate(mask["heads"])}
    removed: list[list[int]] = []
    for step in doc["importance"]["curve"][1:]:
        removed += step["removed"]
        cut = dict(mask, heads=removed)
        if method == "mean":
            cut["means"] = [mask["means"][rows[tuple(h)]] for h in removed]
        path = tmp_path / f"step{step['n_removed']}.json"
        path.write_text(json.dumps(cut))
        r = run_mha("ablate", TEXT, "-m", str(tiny_model), "-f", "json", "--ablate", f"@{path}")
        assert r.returncode == 0, r.stderr
        replay = parse_json(r.stdout)
        assert replay["baseline_loss"] == pytest.approx(step["loss"], rel=ROUND_TRIP_RTOL), step
        for row in replay["heads"]:
            if [row["layer"], row["head"]] in removed:
                assert row["loss"] == replay["baseline_loss"] and row["delta"] == 0.0
    # the file prune wrote, as it is: every head removed
    r = run_mha("ablate", TEXT, "-m", str(tiny_model), "-f", "json", "--ablate", f"@{saved}")
    last = doc["importance"]["curve"][-1]["loss"]
    assert parse_json(r.stdout)["baseline_loss"] == pytest.approx(last, rel=ROUND_TRIP_RTOL)


def test_a_mean_mask_is_not_replayed_as_zero(tiny_model, tmp_path):
    """stats --ablate @mean-mask differs from the same heads zeroed, and equals an old mask (no method) of them."""
    saved = tmp_path / "m.json"
    prune_doc(tiny_model, "--method", "mean", "--step", "0.25", "--seeds", "1", "--max-increase", "1e9",
              "--save-mask", str(saved))  # fmt: skip
    mask = json.loads(saved.read_text())
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"model": {"n_layer": 2, "n_head": 4}, "heads": mask["heads"][:3]}))
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(dict(mask, heads=mask["heads"][:3], means=mask["means"][:3])))
    listed = ",".join(f"{a}.{b}" for a, b in mask["heads"][:3])

    def loss(spec: str) -> float:
        r = run_mha("ablate", TEXT, "-m", str(tiny_model), "-f", "json", "--ablate", spec, "-l", "0", "-H", "0")
        assert r.returncode == 0, r.stderr
        return parse_json(r.stdout)["baseline_loss"]

    assert loss(f"@{old}") == loss(listed)  # an old mask is zero
    assert abs(loss(f"@{cut}") - loss(listed)) > 1e-4 * loss(listed)
