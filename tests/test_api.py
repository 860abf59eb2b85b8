"""The Python API (mhacli.api, exposed as `import mhacli`).

The same numbers as the CLI's JSON for the same input, HF eager's attention on tiny random models, one computation per
layer and run, the CLI's typed errors, and an `import mhacli` that stays light.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import ATTN_ATOL, HIDDEN_ATOL, LLAMA, SAMPLE, bos_tokenizer, build, build_model, hf_outputs, parse_json

import mhacli
from mhacli.errors import MhaError, ModelError, TextError, TokenizerError, UsageError

TEXT = "The cat sat on the mat. The cat sat on the mat."


@pytest.fixture(scope="module")
def sample():
    return mhacli.load("sample")


@pytest.fixture(scope="module")
def sample_run(sample):
    return sample.run(TEXT)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    tok = bos_tokenizer(tmp_path_factory.mktemp("api_bos_tokenizer"))
    return build(tmp_path_factory.mktemp("api_llama"), "llama", LLAMA, tok, seed=3)


def test_the_readme_example_in_five_lines():
    model = mhacli.load("sample")
    run = model.run("The cat sat on the mat. The cat sat on the mat.")
    assert isinstance(run.tokens, list) and all(isinstance(t, str) for t in run.tokens)
    assert run.ids.dtype == np.int64 and run.ids.shape == (len(run.tokens),)
    attn = run.attention(1)
    assert attn.shape == (model.config.n_head, len(run.tokens), len(run.tokens)) and attn.dtype == np.float32
    assert np.allclose(attn.sum(axis=-1), 1.0, atol=1e-5) and not np.triu(attn, k=1).any()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_attention_and_residual_equal_hf_eager(kind, tmp_path, tokenizer_dir, llama_dir):
    directory = build_model(tmp_path / "gpt2", tokenizer_dir) if kind == "gpt2" else llama_dir
    model = mhacli.load(directory)
    ids = np.random.default_rng(5).integers(1, 400, size=40)
    run = model.run(ids=ids)
    hf_attn, hf_hidden = hf_outputs(directory, ids)
    n = model.config.n_layer
    for layer in reversed(range(n)):  # the last first: the run resumes earlier layers from kept streams
        err = float(np.abs(run.attention(layer) - hf_attn[layer]).max())
        assert err <= ATTN_ATOL, f"{kind} layer {layer}: attention max abs err {err:.3g} > {ATTN_ATOL}"
        if layer < n - 1:  # HF's last hidden state is after the final norm
            scale = max(1.0, float(np.abs(hf_hidden[layer]).max()))
            err = float(np.abs(run.residual(layer) - hf_hidden[layer]).max())
            assert err <= HIDDEN_ATOL * scale, f"{kind} layer {layer}: residual max abs err {err:.3g}"


def test_stats_equal_the_cli_json(sample_run, mha):
    doc = parse_json(mha("stats", TEXT, "-m", "sample", "-f", "json").stdout)
    got = [s.to_dict() for s in sample_run.stats()]
    assert len(got) == len(doc["heads"])
    for ours, cli in zip(got, doc["heads"]):
        assert (ours["layer"], ours["head"], ours["kind"]) == (cli["layer"], cli["head"], cli["kind"])
        assert ours["support"] == cli["support"]
        for name, value in cli["stats"].items():
            assert (value is None and ours["stats"][name] is None) or ours["stats"][name] == pytest.approx(
                value, abs=1e-12
            ), name
    assert [s.to_dict() for s in sample_run.stats(1)] == got[4:8]
    assert [s.to_dict() for s in sample_run.stats(1, 2)] == [got[6]]
    assert sample_run.stats(1, 2)[0].kind == "induction"


def test_inspect_json_maps_equal_the_api_attention(sample_run, mha):
    doc = parse_json(mha("inspect", TEXT, "-m", "sample", "-f", "json").stdout)
    assert doc["tokens"] == sample_run.tokens and doc["token_ids"] == sample_run.ids.tolist()
    for h in doc["heads"]:
        attn = sample_run.attention(h["layer"])[h["head"]]
        for i, row in enumerate(h["attention"]):
            np.testing.assert_allclose(attn[i, : i + 1], row, atol=1e-7)


def test_attention_is_computed_once_per_layer(sample, monkeypatch):
    import mhacli.api as api

    calls = []
    real = api.forward_from

    def counting(params, x, first, stop, **kwargs):
        calls.append((first, stop))
        return real(params, x, first, stop, **kwargs)

    monkeypatch.setattr(api, "forward_from", counting)
    run = sample.run(TEXT)
    a = run.attention(1)
    assert run.attention(1) is a and run.attention(-1) is a
    assert calls == [(0, 2)]
    assert not a.flags.writeable
    run.residual(0), run.residual(1)  # kept from the first pass
    assert calls == [(0, 2)]
    b = run.attention(0)  # the stream entering layer 0 is kept: only that layer again, with its map
    assert run.attention(0) is b and calls == [(0, 2), (0, 1)]
    fresh = sample.run(TEXT)
    np.testing.assert_array_equal(fresh.attention(0), b)  # the same numbers as a forward from the start


def test_ids_equal_text(sample, sample_run):
    by_ids = sample.run(ids=sample_run.ids.tolist())
    assert by_ids.tokens == sample_run.tokens
    np.testing.assert_array_equal(by_ids.attention(1), sample_run.attention(1))
    assert [s.to_dict() for s in by_ids.stats()] == [s.to_dict() for s in sample_run.stats()]
    assert sample.run(ids=np.asarray(sample_run.ids, dtype=np.int32)).tokens == sample_run.tokens


def test_loss_equals_the_ablate_baseline(sample_run, mha):
    doc = parse_json(mha("ablate", TEXT, "-m", "sample", "-f", "json").stdout)
    assert sample_run.loss() == pytest.approx(doc["baseline_loss"], rel=1e-9)
    assert sample_run.loss(loss_from=5) < 100


def test_ablate_equals_the_cli(sample_run, mha):
    doc = parse_json(mha("ablate", TEXT, "-m", "sample", "-f", "json").stdout)
    ours = sample_run.ablate()
    assert ours.baseline == pytest.approx(doc["baseline_loss"], rel=1e-9) and ours.n_targets == doc["n_targets"]
    assert [(e.layer, e.head) for e in ours.heads] == [(h["layer"], h["head"]) for h in doc["heads"]]
    for e, h in zip(ours.heads, doc["heads"]):
        assert e.delta == pytest.approx(h["delta"], rel=1e-6, abs=1e-9)
    one = sample_run.ablate([(1, 2)], method="mean")
    assert [(e.layer, e.head) for e in one.heads] == [(1, 2)] and one.method == "mean"


def test_removed_heads_equal_the_cli_ablate_option(sample, mha):
    doc = parse_json(mha("inspect", TEXT, "-m", "sample", "-f", "json", "--ablate", "0.3").stdout)
    run = sample.run(TEXT, remove=[(0, 3)])
    for ours, h in zip(run.stats(), doc["heads"], strict=True):
        assert ours.kind == h["kind"]
        assert ours.to_dict()["stats"] == pytest.approx(h["stats"], abs=1e-9)
    for h in doc["heads"]:
        attn = run.attention(h["layer"])[h["head"]]
        for i, row in enumerate(h["attention"]):
            np.testing.assert_allclose(attn[i, : i + 1], row, atol=1e-7)
    intact = sample.run(TEXT)
    np.testing.assert_array_equal(run.attention(0), intact.attention(0))  # removed after its attention
    assert np.abs(run.attention(1) - intact.attention(1)).max() > 1e-3  # layer 1 reads the edited stream


def test_diff_equals_the_cli(mha):
    doc = parse_json(mha("diff", "sample-early", "sample", TEXT, "-f", "json").stdout)
    report = mhacli.diff(mhacli.load("sample-early"), mhacli.load("sample"), TEXT)
    assert report.to_dict()["heads"] == doc["heads"]
    assert report.metric == doc["metric"] and report.mode == doc["mode"]
    same = mhacli.diff(mhacli.load("sample"), mhacli.load("sample"), TEXT, metric="tv")
    assert same.max_divergence == 0


def test_explain_equals_the_cli(sample, mha):
    doc = parse_json(mha("explain", TEXT, "-m", "sample", "-l", "1", "-H", "2", "-q", "5", "-f", "json").stdout)
    ex = sample.explain(TEXT, layer=1, head=2, query=5)
    ours = ex.to_dict()
    assert ex.matches and ours["attention"] == doc["attention"] and ours["output"] == doc["output"]
    assert ours == {k: v for k, v in doc.items() if k not in ("model", "tokens", "token_ids")}
    assert sample.explain(TEXT, layer=1, head=2, query=-1).to_dict()["query_index"] == len(sample.run(TEXT).ids) - 1


def test_census_equals_the_cli(sample, mha):
    doc = parse_json(mha("census", "-m", "sample", "--probe-count", "2", "-j", "1", "-f", "json").stdout)
    result = mhacli.census(sample, probe_count=2)
    got = [(v.layer, v.head, v.kind, v.confidence, v.source, v.statistic) for v in result.heads]
    want = [
        (h["layer"], h["head"], h["kind"], h["confidence"], h["evidence"]["source"], h["evidence"]["statistic"])
        for h in doc["heads"]
    ]
    assert got == want
    for v, h in zip(result.heads, doc["heads"]):
        assert v.mean == pytest.approx(h["evidence"]["mean"], rel=1e-12)
    assert result.head(1, 2).kind == "induction"
    with_corpus = mhacli.census(sample, [TEXT, "ROMEO: But, soft!"], probes=())
    assert with_corpus.tallies["corpus"].n_texts == 2 and len(with_corpus.heads) == 8


def test_save_writes_what_inspect_save_writes(sample_run, mha, tmp_path):
    ours, cli = tmp_path / "api.html", tmp_path / "cli.html"
    assert sample_run.save(ours) == ours
    assert mha("inspect", TEXT, "-m", "sample", "-f", "json", "--save", str(cli)).returncode == 0
    assert ours.read_bytes() == cli.read_bytes()
    npz = tmp_path / "maps.npz"
    sample_run.save(npz)
    with np.load(npz) as f:
        np.testing.assert_array_equal(f["attention"][1], sample_run.attention(1))


def test_notebook_and_text_reprs(sample, sample_run):
    page = sample_run._repr_html_()
    assert page.startswith("<iframe srcdoc=") and "&lt;!DOCTYPE html&gt;" in page[:200].replace("doctype", "DOCTYPE")
    assert sample_run.page().lstrip().lower().startswith("<!doctype html>")
    text = repr(sample_run)
    assert text.startswith("<mhacli.Run sample") and "18 tokens" in text and len(text) < 200
    assert "2 layers x 4 heads" in repr(sample)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m: m.run(""), TextError),
        (lambda m: m.run("   \n"), TextError),
        (lambda m: m.run("x" * 5000), TextError),  # past n_positions (256)
        (lambda m: m.run("hi", ids=[1, 2]), UsageError),
        (lambda m: m.run(), UsageError),
        (lambda m: m.run(ids=[]), TextError),
        (lambda m: m.run(ids=[1, 10**6]), TextError),  # the CLI's --ids rule and message (textin.check_ids)
        (lambda m: m.run(ids=[-1]), TextError),
        (lambda m: m.run(ids=[[1, 2]]), UsageError),
        (lambda m: m.run(ids=[1.5]), UsageError),
        (lambda m: m.run(ids=list(range(300))), TextError),
        (lambda m: m.run(12), UsageError),
        (lambda m: m.run("\ud800"), TextError),
        (lambda m: m.run("hi there").attention(2), UsageError),
        (lambda m: m.run("hi there").attention(-3), UsageError),
        (lambda m: m.run("hi there").stats(0, 4), UsageError),
        (lambda m: m.run("hi").loss(), UsageError),  # one token: nothing to score
        (lambda m: m.run("hi there").ablate(method="drop"), UsageError),
        (lambda m: m.run("hi there").ablate([(0, 9)]), UsageError),
        (lambda m: m.run("hi there", remove=[(5, 0)]), UsageError),
        (lambda m: m.explain("hi there", layer=0, head=7), UsageError),
        (lambda m: m.explain("hi there", layer=0, head=0, query=40), UsageError),
        (lambda m: m.run("hi there").save("x.txt"), UsageError),
        (lambda m: mhacli.diff(m, m, "hi", metric="kl"), UsageError),
        (lambda m: mhacli.census(m, probes=("sorted",)), UsageError),
        (lambda m: mhacli.census(m, probes=()), UsageError),
    ],
)
def test_bad_inputs_raise_the_clis_typed_errors(sample, call, error):
    with pytest.raises(error) as info:
        call(sample)
    assert isinstance(info.value, MhaError) and str(info.value) and "\n" not in str(info.value)


def test_a_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError):
        mhacli.load(tmp_path / "nowhere")
    assert issubclass(TokenizerError, mhacli.MhaError)


def test_a_truncated_run_says_so(sample):
    run = sample.run("the " * 400, truncate=True)
    assert run.n_seq == sample.config.n_positions and run.truncated_from and run.truncated_from > run.n_seq
    assert sample.run(ids=list(range(1, 300)), truncate=True).truncated_from == 299


def test_import_mhacli_stays_light():
    heavy = ("numpy", "torch", "transformers", "rich", "matplotlib", "typer", "safetensors", "tokenizers", "scipy")
    code = f"import sys, mhacli; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"import mhacli imported {result.stdout.strip()}"
    code = (
        "import sys, mhacli; mhacli.load; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'rich', 'matplotlib')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_the_package_names_and_types():
    assert {"load", "diff", "census", "Model", "Run", "MhaError"} <= set(dir(mhacli))
    assert callable(mhacli.diff) and callable(mhacli.census)
    from importlib import resources

    assert resources.files("mhacli").joinpath("py.typed").is_file()
    with pytest.raises(AttributeError):
        mhacli.no_such_name  # noqa: B018
    assert SAMPLE.is_dir()


def test_the_readme_api_example_runs():
    """The example of docs/python-api.md (the README links it), as written, in a fresh interpreter."""
    from helpers import REPO

    page = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    section = page[page.index("# Python API") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2", "0.634", "True", "True"], result.stdout


# --- issue 18, item 2: the CLI stands on the API: one implementation, one guard, one ids check --------------------


def _doc(obj) -> dict:
    """An API result's document as the CLI writes it (mhacli.views.formats.dumps: NaN as null), read back."""
    from mhacli.views.formats import dumps

    return parse_json(dumps(obj).encode())


@pytest.mark.parametrize("which", ["sample", "llama"])
def test_census_document_equals_the_cli_json(which, llama_dir, mha):
    source = "sample" if which == "sample" else str(llama_dir)
    doc = parse_json(mha("census", "-m", source, "--probe-count", "2", "-j", "1", "-f", "json").stdout)
    assert _doc(mhacli.census(mhacli.load(source), probe_count=2).to_dict()) == doc


def test_census_with_texts_equals_the_cli_with_a_file(sample, mha, tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text(f"{TEXT}\nROMEO: But, soft!\n", encoding="utf-8")
    doc = parse_json(
        mha(
            "census",
            "-m",
            "sample",
            "--texts",
            str(lines),
            "--probes",
            "random",
            "--probe-count",
            "2",
            "-j",
            "1",
            "-f",
            "json",
        ).stdout
    )
    ours = _doc(mhacli.census(sample, [TEXT, "ROMEO: But, soft!"], probes=("random",), probe_count=2).to_dict())
    assert doc["sources"]["corpus"].pop("path") == str(lines) and ours["sources"]["corpus"].pop("path") is None
    assert ours == doc


def test_a_failed_census_text_raises_naming_it(sample):
    with pytest.raises(TextError, match=r"^text 1: .*longer than the model's n_positions"):
        mhacli.census(sample, [TEXT, "x " * 600], probes=())


@pytest.mark.parametrize("which", ["sample", "llama"])
def test_stats_and_inspect_equal_the_cli_json(which, llama_dir, mha):
    source = "sample" if which == "sample" else str(llama_dir)
    ids = "1,5,9,12,5,9,12,30,5,9"
    model = mhacli.load(source)
    run = model.run(ids=[int(i) for i in ids.split(",")])
    stats = parse_json(mha("stats", "--ids", ids, "-m", source, "-f", "json").stdout)
    assert stats["token_ids"] == run.ids.tolist() and stats["tokens"] == run.tokens
    for ours, h in zip(run.stats(), stats["heads"], strict=True):
        d = ours.to_dict()
        assert (d["layer"], d["head"], d["kind"], d["support"]) == (h["layer"], h["head"], h["kind"], h["support"])
        assert model.config.kv_head(ours.head) == h["kv_head"]
        assert d["stats"] == pytest.approx(h["stats"], abs=1e-12)
    maps = parse_json(mha("inspect", "--ids", ids, "-m", source, "-f", "json", "-l", "1").stdout)
    for h in maps["heads"]:
        attn = run.attention(1)[h["head"]]
        for i, row in enumerate(h["attention"]):
            np.testing.assert_allclose(attn[i, : i + 1], row, atol=1e-7)


def _cli_error(result) -> str:
    assert result.returncode == 2
    line = result.stderr.decode().strip()
    assert line.startswith("error: ")
    return line.removeprefix("error: ")


def test_the_memory_guard_is_the_clis(sample, mha):
    """The same estimate and wording as --max-memory, the limit named max_memory; a ResourceError (exit 2).

    The estimate counts the weights held: one layer's at a time for a model loaded with cache=False, as stats and
    explain load it; every tensor for a caching one (load's default for small models, and diff's).
    """
    from mhacli.errors import ResourceError

    streamed = mhacli.load("sample", cache=False)
    cli = _cli_error(mha("stats", TEXT, "-m", "sample", "--max-memory", "1K", "-f", "json"))
    with pytest.raises(ResourceError) as info:
        streamed.run(TEXT, max_memory="1K").stats()
    assert str(info.value) == cli.replace("--max-memory", "max_memory")
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    cli = _cli_error(mha("explain", TEXT, "-m", "sample", "-l", "1", "-H", "2", "--max-memory", "1K"))
    with pytest.raises(ResourceError) as info:
        streamed.explain(TEXT, layer=1, head=2, max_memory=1024)
    assert str(info.value) == cli.replace("--max-memory", "max_memory")
    cli = _cli_error(mha("diff", "sample-early", "sample", TEXT, "--max-memory", "1K"))
    with pytest.raises(ResourceError) as info:
        mhacli.diff(mhacli.load("sample-early"), sample, TEXT, max_memory="1K")
    assert str(info.value) == cli.replace("--max-memory", "max_memory")
    for call in (
        lambda: sample.run(TEXT, max_memory="1K").attention(0),
        lambda: sample.run(TEXT, max_memory="1K").residual(0),
        lambda: sample.run(TEXT, max_memory="1K").ablate(),
        lambda: mhacli.census(sample, probe_count=2, max_memory="1K"),
    ):
        with pytest.raises(ResourceError, match=r"^this request needs about .* \(max_memory\); .*raise max_memory$"):
            call()
    with pytest.raises(UsageError, match="max_memory '1Q' is not a size"):
        sample.run(TEXT, max_memory="1Q").stats()
    assert sample.run(TEXT, max_memory="1G").stats()  # a roomy limit runs


@pytest.mark.parametrize(
    "ids, cli_ids",
    [([1, 99999], "1,99999"), ([5] * 300, ",".join(["5"] * 300)), ([3, -2], "3,-2")],
)
def test_ids_are_checked_by_the_clis_rule(sample, mha, ids, cli_ids):
    """One ids check (mhacli.io.textin.check_ids): the API's message is --ids' with the names the API uses."""
    cli = _cli_error(mha("stats", "--ids", cli_ids, "-m", "sample", "-f", "json"))
    with pytest.raises(TextError) as info:
        sample.run(ids=ids)
    expected = cli.replace("--ids", "ids").replace("pass --truncate", "pass truncate=True").replace("'-2'", "-2")
    assert str(info.value) == expected
    if len(ids) == 300:
        run = sample.run(ids=ids, truncate=True)
        cut = parse_json(mha("stats", "--ids", cli_ids, "--truncate", "-m", "sample", "-f", "json").stdout)
        assert run.ids.tolist() == cut["token_ids"] and run.truncated_from == 300


@pytest.mark.parametrize(
    "cli_args, call, flag, keyword",
    [
        (["explain", TEXT, "-l", "99", "-H", "0"], lambda m: m.explain(TEXT, layer=99, head=0), "--layer", "layer"),
        (["explain", TEXT, "-l", "0", "-H", "99"], lambda m: m.explain(TEXT, layer=0, head=99), "--head", "head"),
        (["explain", TEXT, "-l", "0", "-H", "0", "--query", "99"], lambda m: m.explain(TEXT, layer=0, head=0, query=99),
         "--query", "query"),
        (["ablate", TEXT, "--loss-from", "99"], lambda m: m.run(TEXT).loss(loss_from=99), "--loss-from", "loss_from"),
        (["stats", "word " * 600], lambda m: m.run("word " * 600), "--truncate", "truncate=True"),
    ],
    ids=["layer", "head", "query", "loss_from", "truncate"],
)  # fmt: skip
def test_the_analyses_errors_name_each_doors_parameter(sample, mha, cli_args, call, flag, keyword):
    """An analysis names a parameter as a field: the CLI reads its flag, the API its keyword, nothing else differs."""
    cli = _cli_error(mha(*cli_args, "-m", "sample"))
    with pytest.raises(MhaError) as info:
        call(sample)
    assert flag in cli and keyword in str(info.value) and "--" not in str(info.value), (cli, str(info.value))
    assert str(info.value) == cli.replace(flag, keyword)


def test_analyses_without_a_cli_path_here_spell_both_ways(monkeypatch):
    """Messages the CLI's own checks reach first (choices) or that need a cluster: each spelling, from the error."""
    from mhacli.analyses.ablate import Ablator, parse_heads, random_curve, schedule
    from mhacli.analyses.diff import check_metric
    from mhacli.analyses.parallel import dask_executor
    from mhacli.cli._common import cli_words

    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # not installed
    calls = [
        (lambda: check_metric("kl"), "metric 'kl' is not one of", "--metric 'kl' is not one of"),
        (lambda: schedule(10, 2.0), "step 2.0 must be in (0, 1]", "--step 2.0 must be in (0, 1]"),
        (lambda: random_curve(None, 0.5, 0), "seeds 0 must be at least 1", "--seeds 0 must be at least 1"),  # type: ignore[arg-type]
        (lambda: Ablator(None, [], method="drop"), "method 'drop' is not one of", "--method 'drop' is not one of"),
        (lambda: parse_heads("x", 2, 4), "the heads to remove: 'x' is not a head", "--ablate: 'x' is not a head"),
        (lambda: dask_executor("local", 1).__enter__(), "dask needs dask.distributed", "--dask needs dask.distributed"),
    ]
    for call, python, cli in calls:
        with pytest.raises(MhaError) as info:
            call()
        assert str(info.value).startswith(python), str(info.value)
        assert info.value.spelled(cli_words).startswith(cli), info.value.spelled(cli_words)
