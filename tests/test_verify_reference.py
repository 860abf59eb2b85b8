"""`verify` (mhacli.analyses.verify) in this process: its output-head check against a loss and logits computed here.

Issue 37 item 3 (mutation testing). The reference is HF's GPT2LMHeadModel run in the test (its log-softmax, not its
labels= loss), the lone-file loader is checked on a renamed weights file, and the pass rules (attention within
atol; hidden states and logits within hidden_atol per unit of max(1, max |HF|); the loss within LOSS_RTOL relative)
are checked at their boundaries on hand-made reports.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from cached_models import model as cached_model

IDS = np.random.default_rng(21).integers(1, 400, size=13)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("verify_ref")
    out = {
        "tied": cached_model("verify_tied", seed=4, initializer_range=0.1, attn_gain=1.0),
        "untied": cached_model(
            "verify_untied", seed=5, tie_word_embeddings=False, initializer_range=0.1, attn_gain=1.0
        ),
        "base": cached_model("verify_base", seed=6, lm_head=False, tie_word_embeddings=False),
    }
    for name in ("tied", "untied", "base"):  # the same weights under a non-standard file name: the lone-file loader
        lone = root / f"{name}_lone"
        shutil.copytree(out[name], lone)
        shutil.move(lone / "model.safetensors", lone / "weights-v2.safetensors")
        out[f"{name}_lone"] = lone / "weights-v2.safetensors"
    return out


def hf_reference_here(directory) -> tuple[np.ndarray, float]:
    """HF's logits [n_seq, vocab] and the mean -ln p(ids[t] | ids[<t]) over t >= 1, float64."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([list(IDS)])).logits[0].double()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    loss = float(-logp[torch.arange(len(IDS) - 1), torch.tensor(list(IDS[1:]))].mean())
    return logits.numpy(), loss


@pytest.mark.parametrize("name", ["tied", "untied", "tied_lone", "untied_lone"])
def test_the_output_head_check_matches_a_reference(dirs, name):
    from mhacli.analyses.verify import LOSS_RTOL, verify
    from mhacli.io.weights import load_model

    reference_dir = dirs[name.removesuffix("_lone")]
    logits, loss = hf_reference_here(reference_dir)
    report = verify(load_model(str(dirs[name])), IDS)
    assert report.passed and report.head_passed and report.n_tokens == len(IDS)
    assert len(report.layers) == 2 and [c.layer for c in report.layers] == [0, 1]
    head = report.head
    assert head is not None
    assert head.hf_loss == pytest.approx(loss, rel=1e-6)
    assert head.loss == pytest.approx(loss, rel=LOSS_RTOL)
    assert head.loss_rel_err == pytest.approx(abs(head.loss - head.hf_loss) / head.hf_loss, rel=1e-12)
    assert head.logits_scale == pytest.approx(max(1.0, float(np.abs(logits).max())), rel=1e-6)
    assert head.logits_scale > 1.0 and 0.0 < head.logits_max_abs_err < 1e-4 * head.logits_scale
    doc = report.to_dict()
    assert doc["loss"] == {
        "ours": head.loss, "hf": head.hf_loss, "rel_err": head.loss_rel_err, "rtol": LOSS_RTOL,
        "logits_max_abs_err": head.logits_max_abs_err, "logits_scale": head.logits_scale, "passed": True,
    }  # fmt: skip
    assert doc["passed"] is True and doc["n_tokens"] == len(IDS) and doc["atol"] == 1e-5
    assert doc["hidden_atol"] == 1e-4
    assert doc["max_abs_err"] == {"attention": report.max_attention_err, "hidden": report.max_hidden_err}
    for c, d in zip(report.layers, doc["layers"]):
        assert d == c.to_dict() | {"passed": True}
        assert set(d) == {
            "layer", "attention_max_abs_err", "hidden_max_abs_err", "hidden_scale", "head_attention_max_abs_err",
            "passed",
        }  # fmt: skip
        assert d["attention_max_abs_err"] == max(d["head_attention_max_abs_err"])
        assert len(d["head_attention_max_abs_err"]) == 4 and d["hidden_scale"] >= 1.0


@pytest.mark.parametrize("name", ["base", "base_lone"])
def test_a_base_model_has_no_head_to_check(dirs, name):
    from mhacli.analyses.verify import has_output_head, verify
    from mhacli.io.weights import load_model

    ckpt = load_model(str(dirs[name]))
    assert not has_output_head(ckpt)
    report = verify(ckpt, IDS)
    assert report.head is None and report.head_passed and report.passed
    assert report.to_dict()["loss"] is None
    assert len(report.layers) == 2


def test_has_output_head(dirs):
    from mhacli.analyses.verify import has_output_head
    from mhacli.io.weights import load_model

    assert has_output_head(load_model(str(dirs["tied"]))) and has_output_head(load_model(str(dirs["untied"])))


def test_a_wrong_loss_or_wrong_logits_fail_the_head(dirs, monkeypatch):
    import mhacli.analyses.verify as v
    from mhacli.io.weights import load_model

    ckpt = load_model(str(dirs["untied"]))
    real_losses, real_logits = v.text_losses, v.our_logits
    monkeypatch.setattr(v, "text_losses", lambda *a, **k: real_losses(*a, **k) * np.float32(1.001))
    report = v.verify(ckpt, IDS)
    assert not report.head_passed and not report.passed and all(report.layer_passed(c) for c in report.layers)
    assert report.to_dict()["loss"]["passed"] is False and report.to_dict()["passed"] is False
    monkeypatch.setattr(v, "text_losses", real_losses)
    monkeypatch.setattr(v, "our_logits", lambda *a: real_logits(*a) + np.float32(0.01))
    report = v.verify(ckpt, IDS)
    assert not report.head_passed and report.head.logits_max_abs_err == pytest.approx(0.01, rel=1e-3)


def test_a_lone_file_missing_a_tensor_is_a_model_error(dirs, tmp_path):
    """HF's side of a lone file reads it again: a tensor gone from it since our load is named."""
    from safetensors.numpy import load_file, save_file

    from mhacli.analyses.verify import hf_reference
    from mhacli.errors import ModelError
    from mhacli.io.weights import load_model

    shutil.copytree(dirs["untied_lone"].parent, tmp_path / "m")
    path = tmp_path / "m" / dirs["untied_lone"].name
    ckpt = load_model(str(path))
    tensors = load_file(str(path))
    del tensors[next(k for k in tensors if k.endswith("h.1.ln_2.weight"))]
    save_file(tensors, str(path))
    with pytest.raises(ModelError, match="transformers could not find 'transformer.h.1.ln_2.weight' in the weights"):
        hf_reference(ckpt, IDS)


def report_with(attn: float, hidden: float, scale: float, loss: float = 3.0, hf_loss: float = 3.0, logits=0.0):
    from mhacli.analyses.verify import HeadCheck, LayerCheck, VerifyReport

    layers = [
        LayerCheck(0, 0.0, 0.0, 1.0, [0.0, 0.0]),
        LayerCheck(1, attn, hidden, scale, [attn / 2, attn]),
    ]
    return VerifyReport(1e-5, 1e-4, 5, layers, HeadCheck(loss, hf_loss, logits, 2.0))


def test_pass_rules_at_their_boundaries():
    from mhacli.analyses.verify import LOSS_RTOL

    assert report_with(1e-5, 2e-4, 2.0).passed  # both exactly at their bounds
    assert not report_with(1.01e-5, 0.0, 1.0).passed
    assert not report_with(0.0, 2.02e-4, 2.0).passed
    report = report_with(0.0, 1.5e-4, 2.0)
    assert report.passed and not report_with(0.0, 1.5e-4, 1.0).passed
    assert report_with(0.0, 0.0, 1.0, loss=3.0 * (1 + LOSS_RTOL / 2)).passed
    assert not report_with(0.0, 0.0, 1.0, loss=3.0 * (1 + 2 * LOSS_RTOL)).passed
    assert not report_with(0.0, 0.0, 1.0, loss=3.0 * (1 - 2 * LOSS_RTOL)).passed
    assert report_with(0.0, 0.0, 1.0, logits=2e-4).passed and not report_with(0.0, 0.0, 1.0, logits=2.1e-4).passed
    worst = report_with(3e-6, 0.0, 1.0)
    assert worst.worst_head == (1, 1, 3e-6) and worst.max_attention_err == 3e-6
    assert worst.to_dict()["worst_head"] == {"layer": 1, "head": 1, "kv_head": 1, "attention_max_abs_err": 3e-6}
    assert report_with(0.0, 7e-5, 1.0).max_hidden_err == 7e-5


def test_loss_rel_err_is_relative_to_hf():
    from mhacli.analyses.verify import HeadCheck

    assert HeadCheck(3.3, 3.0, 0.0, 1.0).loss_rel_err == pytest.approx(0.1, rel=1e-12)
    assert HeadCheck(2.7, 3.0, 0.0, 1.0).loss_rel_err == pytest.approx(0.1, rel=1e-12)
    assert HeadCheck(1e-13, 0.0, 0.0, 1.0).loss_rel_err == pytest.approx(0.1, rel=1e-9)


def test_without_torch_the_error_says_what_to_install(monkeypatch):
    import sys

    from mhacli.analyses.verify import _import_hf
    from mhacli.errors import DependencyError, install_hint

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(DependencyError) as err:
        _import_hf()
    assert str(err.value) == f"mha verify needs torch and transformers: {install_hint('hf')}"
    assert 'pip install "mhacli[hf]"' in str(err.value)


def test_standard_files_are_loaded_by_hf_itself(dirs, tmp_path, monkeypatch):
    """HF's own from_pretrained loads model.safetensors and a sharded index, so our loader is checked against HF's.

    The lone-file reader is for a non-standard name only.
    """
    import transformers

    from mhacli.analyses.verify import verify
    from mhacli.io.weights import load_model

    calls = []
    real = transformers.GPT2LMHeadModel.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.GPT2LMHeadModel, "from_pretrained", classmethod(spy))
    sharded = tmp_path / "sharded"
    model = transformers.GPT2LMHeadModel.from_pretrained(dirs["untied"])
    model.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    calls.clear()
    for path, standard in ((dirs["untied"], True), (sharded, True), (dirs["untied_lone"], False)):
        report = verify(load_model(str(path)), IDS)
        assert report.passed
        assert calls == ([path] if standard else []), path
        calls.clear()


def test_hf_load_failure_is_one_model_error_with_hfs_first_line(dirs, tmp_path):
    import json

    import transformers

    from mhacli.analyses.verify import hf_reference
    from mhacli.errors import ModelError
    from mhacli.io.weights import load_model

    directory = tmp_path / "m"
    shutil.copytree(dirs["tied"], directory)
    ckpt = load_model(str(directory))
    config = json.loads((directory / "config.json").read_text())
    config["n_embd"] = 30  # not divisible by n_head, and not the weights' shape
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception) as hf_err:
        transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager", use_safetensors=True)
    first = str(hf_err.value).strip().splitlines()[0][:200]
    with pytest.raises(ModelError) as err:
        hf_reference(ckpt, IDS)
    assert str(err.value) == f"transformers could not load the model: {first}"


@pytest.mark.parametrize("n", [1, 2])
def test_one_token_has_no_loss_to_check_and_two_have(dirs, n):
    from mhacli.analyses.verify import verify
    from mhacli.io.weights import load_model

    report = verify(load_model(str(dirs["tied"])), IDS[:n])
    assert report.passed and (report.head is None) == (n == 1)


def test_scales_are_at_least_one_and_otherwise_hfs_largest_value(dirs):
    """A default-init model, whose hidden states and logits stay below 1 in places: the scales are max(1, max |HF|)."""
    from helpers import hf_outputs

    from mhacli.analyses.verify import verify
    from mhacli.io.weights import load_model

    directory = cached_model("loss_tied", seed=1)
    logits, _ = hf_reference_here(directory)
    _, hidden = hf_outputs(directory, IDS)
    report = verify(load_model(str(directory)), IDS)
    assert report.head.logits_scale == pytest.approx(max(1.0, float(np.abs(logits).max())), rel=1e-6)
    for c, h in zip(report.layers, hidden):
        assert c.hidden_scale == pytest.approx(max(1.0, float(np.abs(h).max())), rel=1e-6)
    assert float(np.abs(logits).max()) < 2.0 or min(float(np.abs(h).max()) for h in hidden) < 2.0
