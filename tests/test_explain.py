"""`mha explain`: every intermediate against HF transformers (eager, float32), the CLI, and the terminal layout.

HF's numbers are captured with forward hooks inside its own GPT2Attention (ln_1, c_attn, c_proj's input, the
attention module's output), and q/k/v are split into heads the way HF does it (split, view, transpose), so no
expected value comes from the code under test.
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, break_attention_kernel, build_model, parse_json, run_mha
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ATTN_ATOL = 1e-5  # attention probabilities vs HF
VEC_ATOL = 1e-4  # vectors (hidden states, q/k/v, scores, outputs) vs HF, per unit of max(1, max |HF value|)
TEXT = "The quick brown fox jumps over the lazy dog. It is the east, and Juliet is the sun."  # 30 tokens
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# name -> GPT2Config overrides; every model has 3 layers, 4 heads of d_head 8
CONFIGS = {
    "default": {},
    "inverse_layer": {"scale_attn_by_inverse_layer_idx": True},
    "unscaled": {"scale_attn_weights": False},
    "inverse_layer_unscaled": {"scale_attn_weights": False, "scale_attn_by_inverse_layer_idx": True},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    return {
        name: build_model(tmp_path_factory.mktemp(name), tokenizer_dir, seed=3 + n, n_layer=3, **overrides)
        for n, (name, overrides) in enumerate(CONFIGS.items())
    }


@functools.lru_cache(maxsize=None)
def ours(directory: Path):
    from mhacli.io.tokenizer import load_tokenizer
    from mhacli.io.weights import load_model

    return load_model(str(directory)), load_tokenizer(directory)


def ids_of(directory: Path, text: str = TEXT) -> tuple[int, ...]:
    return tuple(ours(directory)[1].encode(text))


@functools.lru_cache(maxsize=None)
def hf_capture(directory: Path, ids: tuple[int, ...]) -> list[dict]:
    """Per layer, HF's own intermediates for `ids`, captured with hooks; q/k/v are [n_head, n_seq, d_head]."""
    import torch
    from transformers import GPT2Model

    model = GPT2Model.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()
    n_head, n_embd = model.config.n_head, model.config.n_embd
    seen: list[dict] = [{} for _ in model.h]
    hooks = []
    for layer, block in enumerate(model.h):
        rec = seen[layer]

        def ln_hook(module, args, output, rec=rec):
            rec["ln_in"], rec["ln_out"] = args[0][0].clone(), output[0].clone()

        def c_attn_hook(module, args, output, rec=rec):
            q, k, v = output.split(n_embd, dim=2)  # as GPT2Attention.forward does
            heads = [t.view(*t.shape[:-1], n_head, -1).transpose(1, 2)[0].clone() for t in (q, k, v)]
            rec["q"], rec["k"], rec["v"] = heads

        def c_proj_pre_hook(module, args, rec=rec):
            rec["concat"] = args[0][0].clone()  # [n_seq, n_embd]: the heads' outputs, merged

        def attn_hook(module, args, output, rec=rec):
            rec["attn_out"] = output[0][0].clone()  # after c_proj, before the residual add

        hooks += [
            block.ln_1.register_forward_hook(ln_hook),
            block.attn.c_attn.register_forward_hook(c_attn_hook),
            block.attn.c_proj.register_forward_pre_hook(c_proj_pre_hook),
            block.attn.register_forward_hook(attn_hook),
        ]
    with torch.no_grad():
        out = model(torch.tensor([list(ids)]), output_attentions=True, output_hidden_states=True)
    for h in hooks:
        h.remove()
    for layer, rec in enumerate(seen):
        rec["scores"] = rec["q"] @ rec["k"].transpose(1, 2)  # [n_head, n_seq, n_seq] raw q.k
        rec["scaling"] = float(model.h[layer].attn.scaling)
        rec["attention"] = out.attentions[layer][0]
        rec["hidden_in"] = out.hidden_states[layer][0]
    return [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in rec.items()} for rec in seen]


def explain_in_process(directory: Path, layer: int, head: int, query: int | None, text: str = TEXT):
    from mhacli.analyses.explain import explain

    ckpt, tok = ours(directory)
    return explain(ckpt, tok.encode(text), layer, head, query)


# --- parity with HF -----------------------------------------------------------------------------------------------

CASES = [
    ("default", 0, 0, 0),
    ("default", 1, 2, 13),
    ("default", 2, 3, None),
    ("inverse_layer", 0, 1, None),
    ("inverse_layer", 2, 0, 7),
    ("inverse_layer", 1, 3, 0),
    ("unscaled", 1, 1, 21),
    ("unscaled", 2, 2, None),
    ("inverse_layer_unscaled", 2, 1, 16),
    ("inverse_layer_unscaled", 0, 3, -2),
]


@pytest.mark.parametrize("config,layer,head,query", CASES)
def test_every_intermediate_matches_hf(models, config, layer, head, query):
    directory = models[config]
    ids = ids_of(directory)
    n_seq = len(ids)
    i = n_seq - 1 if query is None else query % n_seq
    hf = hf_capture(directory, ids)[layer]
    ex = explain_in_process(directory, layer, head, query)
    doc = ex.to_dict()
    where = f"{config} layer {layer} head {head} query {i}"

    assert ex.query_index == doc["query_index"] == i
    assert_close(f"{where}: input vs hidden_states[{layer}]", doc["input"], hf["hidden_in"][i], VEC_ATOL)
    assert_close(f"{where}: input vs ln_1's input", doc["input"], hf["ln_in"][i], VEC_ATOL)
    assert_close(f"{where}: ln_input", doc["ln_input"], hf["ln_out"][i], VEC_ATOL)
    assert_close(f"{where}: query", doc["query"], hf["q"][head, i], VEC_ATOL)
    assert_close(f"{where}: keys", doc["keys"], hf["k"][head, : i + 1], VEC_ATOL)
    assert_close(f"{where}: values", doc["values"], hf["v"][head, : i + 1], VEC_ATOL)
    assert_close(f"{where}: scores", doc["scores"], hf["scores"][head, i, : i + 1], VEC_ATOL)
    assert doc["scale"] == pytest.approx(hf["scaling"], rel=1e-12), (
        f"{where}: scale {doc['scale']} vs HF {hf['scaling']}"
    )
    assert_close(
        f"{where}: scaled_scores", doc["scaled_scores"], hf["scores"][head, i, : i + 1] * hf["scaling"], VEC_ATOL
    )
    assert_close(f"{where}: attention", doc["attention"], hf["attention"][head, i, : i + 1], ATTN_ATOL, relative=False)
    assert doc["masked_keys"] == list(range(i + 1, n_seq))
    assert np.all(hf["attention"][head, i, i + 1 :] == 0)  # what the masked keys get in HF
    d = ex.d_head
    assert_close(f"{where}: head_output", doc["head_output"], hf["concat"][i, head * d : (head + 1) * d], VEC_ATOL)
    assert_close(f"{where}: concat", doc["concat"], hf["concat"][i], VEC_ATOL)
    assert_close(f"{where}: output", doc["output"], hf["attn_out"][i], VEC_ATOL)
    assert doc["kv_head"] == head and doc["layer"] == layer and doc["head"] == head
    assert ex.matches and 0 <= doc["max_abs_diff_vs_forward"] < 1e-5, doc["diff_vs_forward"]


def test_scaling_variants_really_differ(models):
    """The four configs do scale differently at layer 2 (else the scaling cases above would prove nothing)."""
    scales = {name: explain_in_process(models[name], 2, 0, None).scale for name in CONFIGS}
    assert len({round(s, 12) for s in scales.values()}) == 4, scales
    assert scales["unscaled"] == 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_head_and_query_matches_hf(models, data):
    config = data.draw(st.sampled_from(sorted(CONFIGS)), label="config")
    directory = models[config]
    ids = ids_of(directory)
    layer = data.draw(st.integers(0, 2), label="layer")
    head = data.draw(st.integers(0, 3), label="head")
    query = data.draw(st.integers(-len(ids), len(ids) - 1), label="query")
    i = query % len(ids)
    hf = hf_capture(directory, ids)[layer]
    ex = explain_in_process(directory, layer, head, query)
    assert_close("attention", ex.step.attention, hf["attention"][head, i, : i + 1], ATTN_ATOL, relative=False)
    assert_close("output", ex.output, hf["attn_out"][i], VEC_ATOL)
    assert float(ex.step.attention.sum()) == pytest.approx(1.0, abs=1e-6)


def test_query_defaults_to_last_and_negative_counts_from_end(models):
    directory = models["default"]
    n_seq = len(ids_of(directory))
    last = explain_in_process(directory, 1, 1, None)
    assert last.query_index == n_seq - 1
    assert explain_in_process(directory, 1, 1, -1).query_index == n_seq - 1
    minus3, plus = explain_in_process(directory, 1, 1, -3), explain_in_process(directory, 1, 1, n_seq - 3)
    assert minus3.query_index == n_seq - 3
    np.testing.assert_array_equal(minus3.output, plus.output)


def test_one_token_text(models):
    directory = models["inverse_layer"]
    ids = ids_of(directory, "The")
    assert len(ids) == 1
    hf = hf_capture(directory, ids)[2]
    ex = explain_in_process(directory, 2, 3, None, "The")
    doc = ex.to_dict()
    assert doc["query_index"] == 0 and doc["masked_keys"] == [] and len(doc["keys"]) == 1
    assert doc["attention"] == [1.0]
    assert_close("values", doc["values"], hf["v"][3, :1], VEC_ATOL)
    assert_close("head_output", doc["head_output"], hf["v"][3, 0], VEC_ATOL)  # one key: z is its value
    assert_close("output", doc["output"], hf["attn_out"][0], VEC_ATOL)


# --- the step-by-step numbers are our own, and the check catches a broken batched forward -----------------------


def test_steps_do_not_come_from_the_batched_forward(models, monkeypatch):
    """Break the forward's attention kernel (z times 1.5).

    The steps still match HF, and the check reports the mismatch in the head outputs and the projection, not in the
    attention the kernel got right.
    """
    break_attention_kernel(monkeypatch, 1.5)
    directory = models["default"]
    ids = ids_of(directory)
    hf = hf_capture(directory, ids)[0]
    ex = explain_in_process(directory, 0, 2, 9)  # layer 0: its input, the embeddings, is not touched by the kernel
    assert_close("output", ex.output, hf["attn_out"][9], VEC_ATOL)
    assert_close("concat", ex.concat, hf["concat"][9], VEC_ATOL)
    assert not ex.matches
    for name in ("head_output", "concat", "output"):
        assert ex.diffs[name] > ex.bounds[name], name
    for name in ("query", "keys", "values", "scores", "attention"):
        assert ex.diffs[name] <= ex.bounds[name], name


def test_cli_exits_1_when_the_kernel_is_wrong(models, monkeypatch, capsys):
    from mhacli.cli import run

    break_attention_kernel(monkeypatch, 1.5)
    code = run(["explain", TEXT, "-m", str(models["default"]), "-l", "0", "-H", "1", "--format", "text"])
    out = capsys.readouterr().out
    assert code == 1
    assert "DOES NOT match the model's forward pass" in out and "concat differs by" in out


# --- the CLI, through the real entry point ------------------------------------------------------------------------


@pytest.mark.parametrize("via_stdin", [False, True])
def test_cli_json_is_strict_and_matches_hf(models, via_stdin):
    directory = models["inverse_layer"]
    args = ["explain", "-m", str(directory), "-l", "1", "-H", "2", "-q", "-4", "--format", "json"]
    r = run_mha(*args, "-", input=TEXT) if via_stdin else run_mha(*args, TEXT)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr == b""
    doc = parse_json(r.stdout)
    ids = ids_of(directory)
    n_seq, i = len(ids), len(ids) - 4
    hf = hf_capture(directory, ids)[1]
    required = {
        "input", "ln_input", "query", "keys", "values", "scores", "scaled_scores", "attention", "head_output",
        "concat", "output", "tokens", "layer", "head", "query_index", "scale", "kv_head", "max_abs_diff_vs_forward",
    }  # fmt: skip
    assert required <= doc.keys(), required - doc.keys()
    assert doc["token_ids"] == list(ids) and len(doc["tokens"]) == n_seq
    assert (doc["layer"], doc["head"], doc["kv_head"], doc["query_index"]) == (1, 2, 2, i)
    assert doc["scale"] == pytest.approx(hf["scaling"], rel=1e-12)
    assert len(doc["keys"]) == len(doc["values"]) == len(doc["scores"]) == len(doc["attention"]) == i + 1
    assert all(len(k) == 8 for k in doc["keys"]) and len(doc["query"]) == len(doc["head_output"]) == 8
    assert len(doc["input"]) == len(doc["ln_input"]) == len(doc["concat"]) == len(doc["output"]) == 32
    assert_close("attention", doc["attention"], hf["attention"][2, i, : i + 1], ATTN_ATOL, relative=False)
    assert_close("output", doc["output"], hf["attn_out"][i], VEC_ATOL)
    assert_close("keys", doc["keys"], hf["k"][2, : i + 1], VEC_ATOL)
    assert 0 <= doc["max_abs_diff_vs_forward"] < 1e-5 and doc["matches_forward"] is True


def test_cli_text_has_every_step_and_no_ansi(models):
    directory = models["default"]
    r = run_mha("explain", TEXT, "-m", str(directory), "-l", "2", "-H", "1", "-q", "5")
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert "\x1b" not in out
    starts = [out.index(f"\n{n}. ") for n in range(1, 7)]
    assert starts == sorted(starts), "the six steps are out of order"
    assert re.search(r"matches the model's forward pass: max \|diff\| \d\.\de[-+]\d\d", out)
    hf = hf_capture(directory, ids_of(directory))[2]
    # the attention table of step 3: one row per visible key, `j token q.k scaled a_j bar`
    step3 = out[starts[2] : starts[3]].splitlines()
    header = next(n for n, line in enumerate(step3) if line.split()[:2] == ["j", "token"])
    rows = [line.split() for line in step3[header + 1 : header + 7]]
    assert [int(r[0]) for r in rows] == list(range(6))
    np.testing.assert_allclose([float(r[4]) for r in rows], hf["attention"][1, 5, :6], atol=6e-5)
    assert "keys 6..29 are hidden" in out
    # compact vectors: first and last components and the norm of q_5
    qline = next(line for line in out.splitlines() if line.lstrip().startswith("q_5 = "))
    inside, norm = re.search(r"\[(.*)\]\s+‖(\S+)‖", qline).groups()
    shown = [float(x) for x in inside.split() if x != "…"]
    q = hf["q"][1, 5]
    assert shown[0] == pytest.approx(q[0], rel=1e-3, abs=1e-6) and shown[-1] == pytest.approx(q[-1], rel=1e-3, abs=1e-6)
    assert float(norm) == pytest.approx(float(np.linalg.norm(q)), rel=1e-3)


def test_cli_full_shows_every_component(models):
    directory = models["default"]
    r = run_mha("explain", TEXT, "-m", str(directory), "-l", "0", "-H", "3", "--full", "--format", "text")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    start = next(n for n, line in enumerate(lines) if line.lstrip().startswith("q_29 = "))
    assert "(8 components, ‖" in lines[start]
    values: list[float] = []
    for line in lines[start + 1 :]:
        m = re.match(r"\s+\[\s*(\d+)\] (.*)", line)
        if not m:
            break
        assert int(m.group(1)) == len(values)
        values += [float(x) for x in m.group(2).split()]
    hf = hf_capture(directory, ids_of(directory))[0]
    np.testing.assert_allclose(values, hf["q"][3, 29], rtol=1e-3, atol=1e-6)
    assert (
        sum(1 for line in lines if re.match(r"\s+k_\d+ = \(8 components", line)) == 30
    )  # every key, not the strongest 12


ERRORS = [
    (["-l", "0", "-H", "0", "-q", "30"], "--query 30"),
    (["-l", "0", "-H", "0", "-q", "-31"], "--query -31"),
    (["-l", "3", "-H", "0"], "--layer 3"),
    (["-l", "-1", "-H", "0"], "--layer -1"),
    (["-l", "0", "-H", "4"], "--head 4"),
    (["-H", "0"], "--layer"),
    (["-l", "0"], "--head"),
    (["-l", "0", "-H", "0", "-q", "x"], "--query"),
]


@pytest.mark.parametrize("args,mentions", ERRORS, ids=[" ".join(a) for a, _ in ERRORS])
def test_cli_errors_exit_2_with_one_line(models, args, mentions):
    r = run_mha("explain", TEXT, "-m", str(models["default"]), *args)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert r.stdout == b""
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert mentions in err


# --- the terminal view ----------------------------------------------------------------------------------------------


def render(ex, tokens, width: int, full: bool) -> list[str]:
    from rich.console import Console

    from mhacli.views.terminal import explain_view

    buf = io.StringIO()
    Console(width=width, file=buf, force_terminal=True, color_system="truecolor").print(
        explain_view(ex, tokens, width, full=full)
    )
    return ANSI.sub("", buf.getvalue()).splitlines()


WIDE_TOKENS = ["東京東京東京東京", "🙂🚀", "\t\n", "x" * 40]


@pytest.mark.parametrize("width", [40, 80, 200])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("text,query", [("The", None), (TEXT, None), (TEXT, 0), (TEXT, 20)])
def test_rich_view_fits_the_terminal(models, width, full, text, query):
    from rich.cells import cell_len

    from mhacli.views.terminal import explain_lines

    directory = models["inverse_layer_unscaled"]
    ex = explain_in_process(directory, 1, 3, query, text)
    tokens = ours(directory)[1].display(list(ids_of(directory, text)))
    for toks in (tokens, [WIDE_TOKENS[n % len(WIDE_TOKENS)] for n in range(len(tokens))]):
        laid_out = ["".join(t for t, _ in line) for line in explain_lines(ex, toks, width, full=full)]
        too_wide = [line for line in laid_out if cell_len(line) > width]
        assert not too_wide, f"{len(too_wide)} lines wider than {width}: {too_wide[0]!r}"
        shown = render(ex, toks, width, full)
        assert len(shown) == len(laid_out)  # rich neither wrapped nor split a line
        assert all(cell_len(line) <= width for line in shown)
    assert any("6. check" in line for line in shown) and "matches the model's forward pass" in " ".join(shown)


def test_rich_view_marks_the_query_and_the_head(models):
    ex = explain_in_process(models["default"], 0, 2, 3)
    tokens = ours(models["default"])[1].display(list(ids_of(models["default"])))
    lines = render(ex, tokens, 100, False)
    marked = [line for line in lines if line.lstrip().startswith("▶")]
    assert len(marked) == 1 and "z_2" in marked[0] and "[16:24]" in marked[0]
    assert any("W_K = c_attn.weight[:, 48:56]" in line for line in lines)  # E + h*d = 32 + 16
    assert any("W_V = c_attn.weight[:, 80:88]" in line for line in lines)  # 2E + h*d
    assert any("keys 4..29 are hidden" in line for line in lines)
