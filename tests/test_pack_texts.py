"""Packed forwards for the commands that take many texts: `diff --texts`, `ablate --texts`, `prune --texts`.

The reference is each text run on its own through the unpacked path (`--pack-tokens 1`, itself checked against HF
and TransformerLens in test_diff_metrics.py, test_ablate_reference.py and test_loss_reference.py): per-text
divergences, statistics and kinds, per-text losses, ablation deltas and pruning curves must agree, for learned
positions (GPT-2), rotary with grouped K/V heads (Llama GQA) and a sliding window (Mistral), on texts of mixed
lengths including length 1 (diff) or 2 (the shortest text a loss scores) and one text longer than the pack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import MODELS, bos_tokenizer, build, build_model, parse_json, run_mha

# Packed vs alone: the packed forward's GEMMs have other shapes, so a float32 product may differ in its last place.
# Measured on these models: divergences within 2e-7 absolute, statistics within 1.9e-6 relative, losses within 1e-8
# relative and ablation deltas within 1e-8 of the baseline.
RTOL = 1e-5
ATOL = 1e-7  # where a divergence or statistic is ~0 (identical heads, a previous-token weight of a 1-token text)
LOSS_RTOL = 1e-5  # a loss, relative; an ablation delta is bounded by LOSS_RTOL x the baseline (a difference of two)
DIFF_LENGTHS = [1, 7, 30, 2, 19, 1, 12]  # mixed, including length 1; 30 is longer than the pack of PACK
SCORE_LENGTHS = [2, 7, 30, 3, 19, 2, 12]  # every text scores a next token
PACK = 24  # tokens per pack in these tests: [1, 7], [30], [2, 19, 1], [12] for DIFF_LENGTHS
NAMES = ["gpt2", "llama_gqa", "mistral_window"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, tuple[Path, Path]]:
    """Two models of each family (different seeds): MODEL_A and MODEL_B of a diff; the first is also scored."""
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    built = {
        "gpt2": tuple(
            build_model(tmp_path_factory.mktemp(f"gpt2_{k}"), tokenizer_dir, seed=k, n_positions=64) for k in (1, 2)
        )
    }
    for n, name in enumerate(NAMES[1:]):
        s = MODELS[name]
        built[name] = tuple(
            build(tmp_path_factory.mktemp(f"{name}_{k}"), s["kind"], s["fields"], bos, seed=10 * n + k) for k in (1, 2)
        )
    return built  # type: ignore[return-value]


def load(directory: Path):
    from mhacli.io.weights import load_model

    return load_model(str(directory))


def texts(lengths: list[int], seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 50, size=n) for n in lengths]  # a small alphabet: repeats, so induction targets exist


def test_the_packs_are_consecutive_texts_and_a_long_text_runs_alone():
    from mhacli.engine.segments import pack_groups

    assert pack_groups(DIFF_LENGTHS, PACK) == [[0, 1], [2], [3, 4, 5], [6]]
    assert pack_groups(DIFF_LENGTHS, 1) == [[i] for i in range(len(DIFF_LENGTHS))]
    assert pack_groups([5, 5, 5], 10) == [[0, 1], [2]]  # exactly full


# --- diff -------------------------------------------------------------------------------------------------------------


def assert_same_text_diff(got, want, where: str) -> None:
    np.testing.assert_allclose(got.divergence, want.divergence, rtol=RTOL, atol=ATOL, err_msg=where)
    for name in ("stats_a", "stats_b"):
        g, w = getattr(got, name), getattr(want, name)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{where} {name}")
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=f"{where} {name}")
    assert (got.kinds_a, got.kinds_b) == (want.kinds_a, want.kinds_b), where


@pytest.mark.parametrize("mode", ["paired", "matched"])
@pytest.mark.parametrize("name", NAMES)
def test_a_packed_diff_gives_each_text_its_own_comparison(models, name, mode):
    from mhacli.analyses.diff import compare_pack, compare_text

    a, b = (load(d) for d in models[name])
    ts = texts(DIFF_LENGTHS)
    got = compare_pack(a, b, ts, "js", mode)
    assert len(got) == len(ts)
    for n, (ids, g) in enumerate(zip(ts, got)):
        assert_same_text_diff(g, compare_text(a, b, ids, "js", mode), f"{name} {mode} text {n} ({len(ids)} tokens)")


@pytest.mark.parametrize("metric", ["tv", "cosine"])
def test_every_metric_is_split_per_text(models, metric):
    """Cosine sums over the whole map, tv over rows: each must see only its own text's rows and keys."""
    from mhacli.analyses.diff import compare_pack, compare_text

    a, b = (load(d) for d in models["mistral_window"])
    ts = texts(DIFF_LENGTHS, seed=4)
    for n, (ids, g) in enumerate(zip(ts, compare_pack(a, b, ts, metric, "paired"))):
        assert_same_text_diff(g, compare_text(a, b, ids, metric, "paired"), f"{metric} text {n}")


def test_a_packed_diff_of_models_of_different_shapes_matches_heads_as_alone(models, tmp_path, tokenizer_dir):
    from mhacli.analyses.diff import compare_pack, compare_text

    a = load(models["gpt2"][0])
    b = load(build_model(tmp_path / "wide", tokenizer_dir, seed=5, n_positions=64, n_layer=3, n_head=2))
    ts = texts(DIFF_LENGTHS, seed=6)
    for n, (ids, g) in enumerate(zip(ts, compare_pack(a, b, ts, "js", "matched"))):
        assert g.divergence.shape == (8, 6)
        assert_same_text_diff(g, compare_text(a, b, ids, "js", "matched"), f"text {n}")


def test_heads_removed_from_b_are_removed_in_every_text_of_a_pack(models):
    from mhacli.analyses.ablate import removal_edits
    from mhacli.analyses.diff import compare_pack, compare_text

    a = load(models["llama_gqa"][0])
    edits = removal_edits([(0, 2), (1, 5)])
    ts = texts(DIFF_LENGTHS, seed=7)
    for n, (ids, g) in enumerate(zip(ts, compare_pack(a, a, ts, "tv", "paired", edits))):
        assert_same_text_diff(g, compare_text(a, a, ids, "tv", "paired", edits), f"text {n}")
        assert (g.divergence[:8] <= ATOL).all()  # a removal changes the maps after its layer only
        assert len(ids) < 2 or g.divergence[8:].max() > 1e-3, g.divergence


def test_the_diff_report_is_the_same_whatever_the_pack_and_packs_are_run(models, monkeypatch):
    """ops.diff.compare over packs of PACK tokens: the report of --pack-tokens 1, with one forward per pack."""
    from mhacli.analyses import diff as analyses_diff
    from mhacli.ops.diff import DiffText, compare

    a, b = (load(d) for d in models["gpt2"])
    ts = [DiffText(ids, [], f"text {n}") for n, ids in enumerate(texts(DIFF_LENGTHS))]
    alone = compare(a, b, ts, "js", pack_tokens=1)
    runs = []
    real = analyses_diff.forward

    def counted(params, ids, **kwargs):
        runs.append(len(ids))
        return real(params, ids, **kwargs)

    monkeypatch.setattr(analyses_diff, "forward", counted)
    packed = compare(a, b, ts, "js", pack_tokens=PACK)
    assert sorted(runs) == sorted(2 * [8, 30, 22, 12])  # two models, one forward per pack
    assert packed.n_texts == alone.n_texts == len(ts)
    by_head = {(r.layer_a, r.head_a): r for r in alone.heads}
    for r in packed.heads:
        w = by_head[(r.layer_a, r.head_a)]
        assert (r.kind_a, r.kind_b) == (w.kind_a, w.kind_b)
        assert r.divergence == pytest.approx(w.divergence, rel=RTOL, abs=ATOL)
        for k, v in r.stat_deltas.items():
            assert (v is None) == (w.stat_deltas[k] is None)
            if v is not None:
                assert v == pytest.approx(w.stat_deltas[k], rel=RTOL, abs=1e-6), k


def test_a_matched_pack_is_guarded_for_its_texts_maps_not_the_packs_square(models):
    """Matched mode keeps each text's maps: a pack of many short texts needs far less than one text of its length."""
    from mhacli.ops.diff import DiffText, pack_bytes
    from mhacli.ops.memory import diff_bytes

    a, b = (load(d) for d in models["gpt2"])
    pack = [DiffText(np.zeros(8, dtype=np.int64), [], "") for _ in range(8)]
    assert pack_bytes(a, b, pack, "matched") < diff_bytes(a, b, 64, False)
    assert pack_bytes(a, b, pack[:1], "matched") == diff_bytes(a, b, 8, False)


# --- ablate and prune -------------------------------------------------------------------------------------------------


def ablators(params, ts, **kwargs):
    from mhacli.analyses.ablate import Ablator

    return Ablator(params, ts, pack_tokens=1, **kwargs), Ablator(params, ts, pack_tokens=PACK, **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_packed_losses_are_each_texts_own(models, name):
    """The loss of every text of a pack, from the pack's last residual stream, is the text's loss alone."""
    from mhacli.analyses.loss import scored_losses, scored_positions, text_losses
    from mhacli.engine.forward import forward
    from mhacli.engine.segments import Segments

    params = load(models[name][0])
    ts = texts(SCORE_LENGTHS, seed=8)
    for loss_from in (1, 4):
        kept = [t for t in ts if len(t) > loss_from]
        *_, last = forward(params, np.concatenate(kept), segments=Segments.of(kept))
        lengths = [len(t) for t in kept]
        got = scored_losses(params, last.residual, np.concatenate(kept), scored_positions(lengths, loss_from))
        want = np.concatenate([text_losses(params, next(reversed(list(forward(params, t)))).residual, t, loss_from)
                               for t in kept])  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=LOSS_RTOL, err_msg=f"loss_from {loss_from}")


@pytest.mark.parametrize("method", ["zero", "mean"])
@pytest.mark.parametrize("name", NAMES)
def test_a_packed_ablation_is_the_ablation_of_the_texts_alone(models, name, method):
    from mhacli.analyses.ablate import ablate_each

    params = load(models[name][0])
    alone, packed = ablators(params, texts(SCORE_LENGTHS, seed=9), method=method)
    assert len(packed._packs) == 4 and len(alone._packs) == len(SCORE_LENGTHS)  # [2, 7], [30], [3, 19, 2], [12]
    assert packed.n_targets == alone.n_targets
    assert packed.baseline == pytest.approx(alone.baseline, rel=LOSS_RTOL)
    if method == "mean":  # each head's mean output over every position of every text
        np.testing.assert_allclose(packed.means, alone.means, rtol=RTOL, atol=1e-6)
    want = {(e.layer, e.head): e for e in ablate_each(alone, alone.heads)}
    for e in ablate_each(packed, packed.heads):
        w = want[(e.layer, e.head)]
        assert e.loss == pytest.approx(w.loss, rel=LOSS_RTOL), (e.layer, e.head)
        assert e.delta == pytest.approx(w.delta, abs=LOSS_RTOL * alone.baseline), (e.layer, e.head)


def test_a_pinned_packed_ablation_keeps_its_pinned_heads_in_every_text(models):
    from mhacli.analyses.ablate import Removal, ablate_each

    params = load(models["llama_gqa"][0])
    pinned = Removal(((0, 1), (1, 6)))
    alone, packed = ablators(params, texts(SCORE_LENGTHS, seed=10), pinned=pinned)
    assert packed.baseline == pytest.approx(alone.baseline, rel=LOSS_RTOL)
    heads = [(0, 0), (0, 5), (1, 2)]
    for e, w in zip(ablate_each(packed, heads), ablate_each(alone, heads)):
        assert (e.layer, e.head) == (w.layer, w.head)
        assert e.loss == pytest.approx(w.loss, rel=LOSS_RTOL)


@pytest.mark.parametrize("name", NAMES)
def test_packed_pruning_curves_are_those_of_the_texts_alone(models, name):
    from mhacli.analyses.ablate import importance_curve, random_curve

    params = load(models[name][0])
    alone, packed = ablators(params, texts(SCORE_LENGTHS, seed=11))
    want, got = importance_curve(alone, 0.25), importance_curve(packed, 0.25)
    for g, w in zip(got, want):
        assert (g.n_removed, g.fraction) == (w.n_removed, w.fraction)
        assert g.loss == pytest.approx(w.loss, rel=LOSS_RTOL)
    assert [g.removed for g in got] == [w.removed for w in want]  # the same order (no near ties on these models)
    for g, w in zip(random_curve(packed, 0.25, 3), random_curve(alone, 0.25, 3)):
        assert g.loss_mean == pytest.approx(w.loss_mean, rel=LOSS_RTOL)
        assert g.loss_std == pytest.approx(w.loss_std, rel=1e-3, abs=LOSS_RTOL * alone.baseline)


@pytest.mark.parametrize("name", NAMES)
def test_each_heads_kind_on_a_packed_first_run_is_its_kind_alone(models, name):
    from mhacli.io.textin import TokenizedText
    from mhacli.ops.ablation import make_ablator

    params = load(models[name][0])
    tokenized = [TokenizedText(ids, [str(i) for i in ids], None) for ids in texts(SCORE_LENGTHS, seed=12)]
    _, alone = make_ablator(params, tokenized, "zero", 1, kinds=True, pack_tokens=1)
    _, packed = make_ablator(params, tokenized, "zero", 1, kinds=True, pack_tokens=PACK)
    assert alone is not None and packed is not None
    assert packed.kinds == alone.kinds  # every text's kind of every head, counted


# --- the commands -----------------------------------------------------------------------------------------------------

LINES = [
    "First Citizen:",
    "Before we proceed any further, hear me speak.",
    "All:",
    "Speak, speak.",
    "You are all resolved rather to die than to famish?",
    "Resolved. resolved.",
    "First, you know Caius Marcius is chief enemy to the people.",
    "We know't, we know't.",
]


def numbers(x, path: str = "") -> dict[str, float | None]:
    """Every number of a JSON document by its path (strings and lists of strings left out)."""
    out: dict[str, float | None] = {}
    if isinstance(x, dict):
        for k, v in x.items():
            out |= numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for n, v in enumerate(x):
            out |= numbers(v, f"{path}[{n}]")
    elif x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)):
        out[path] = x
    return out


def same_numbers(got: dict, want: dict, rtol: float, atol: float) -> None:
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        assert (g is None) == (w is None), k
        if w is not None:
            assert g == pytest.approx(w, rel=rtol, abs=atol), k


def run_both(*args: str, corpus: str) -> tuple[dict, dict]:
    """The command on the corpus alone (--pack-tokens 1) and in packs of 16 tokens: both JSON documents."""
    docs = []
    for pack in ("1", "16"):
        r = run_mha(*args, "--texts", "-", "--pack-tokens", pack, "-f", "json", input=corpus)
        assert r.returncode == 0, r.stderr.decode()
        docs.append(parse_json(r.stdout))
    return docs[0], docs[1]


def test_diff_texts_packed_and_alone_agree_on_the_bundled_models():
    alone, packed = run_both("diff", "sample-early", "sample", corpus="\n".join(LINES) + "\n")
    assert packed["n_tokens"] == alone["n_tokens"] and packed["n_texts"] == len(LINES)
    key = lambda h: (h["layer_a"], h["head_a"])  # noqa: E731
    want = {key(h): h for h in alone["heads"]}
    for h in packed["heads"]:
        assert (h["kind_a"], h["kind_b"]) == (want[key(h)]["kind_a"], want[key(h)]["kind_b"])
        same_numbers(numbers(h), numbers(want[key(h)]), RTOL, 1e-6)


def test_ablate_and_prune_texts_packed_and_alone_agree_on_the_bundled_model():
    corpus = "\n".join(LINES) + "\n"
    alone, packed = run_both("ablate", "-m", "sample", corpus=corpus)
    assert packed["baseline_loss"] == pytest.approx(alone["baseline_loss"], rel=LOSS_RTOL)
    want = {(h["layer"], h["head"]): h for h in alone["heads"]}
    for h in packed["heads"]:
        w = want[(h["layer"], h["head"])]
        assert h["kind"] == w["kind"]
        assert h["loss"] == pytest.approx(w["loss"], rel=LOSS_RTOL)
        assert h["delta"] == pytest.approx(w["delta"], abs=LOSS_RTOL * alone["baseline_loss"])
    alone, packed = run_both("prune", "-m", "sample", "--seeds", "2", "--step", "0.25", corpus=corpus)
    assert packed["pruned"] == alone["pruned"]
    assert [s["removed"] for s in packed["importance"]["curve"]] == [s["removed"] for s in alone["importance"]["curve"]]
    same_numbers(numbers(packed), numbers(alone), LOSS_RTOL, 1e-6)


@pytest.mark.parametrize(
    "command, lines, message",
    [
        (
            ("diff", "sample-early", "sample"),
            ["All:", "x " * 300, "Speak."],
            "error: --texts line 2 is 600 tokens, longer",
        ),
        (("ablate",), ["All:", "Speak, speak.", "x " * 300], "error: --texts line 3: text is "),
        (("prune", "--seeds", "1"), ["All:", "x " * 300], "error: --texts line 2: text is "),
        (("ablate",), ["All:", "A", "Speak, speak."], "error: --texts line 2 is one token long"),
    ],
)
def test_a_text_that_cannot_run_is_named_by_its_line_packed_or_not(command, lines, message, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    errors = []
    for pack in ("1", "1024"):
        r = run_mha(*command, "--texts", str(corpus), "--pack-tokens", pack, "-f", "json")
        assert r.returncode == 2 and r.stdout == b"", r.stderr.decode()
        errors.append(r.stderr.decode())
    assert errors[0] == errors[1]
    assert errors[0].startswith(message) and errors[0].count("\n") == 1, errors[0]


@pytest.mark.parametrize("command", [("diff", "sample-early", "sample"), ("ablate",), ("prune",)])
def test_pack_tokens_below_one_is_refused(command):
    r = run_mha(*command, "--texts", "-", "--pack-tokens", "0", input="All:\nSpeak.\n")
    assert r.returncode == 2
    assert r.stderr.decode() == "error: --pack-tokens 0 must be at least 1\n"


def test_the_docs_name_pack_tokens_for_every_command_that_packs():
    docs = Path(__file__).resolve().parent.parent / "docs" / "commands"
    for name in ("diff", "ablate", "prune", "census"):
        assert "--pack-tokens" in (docs / f"{name}.md").read_text(), name
