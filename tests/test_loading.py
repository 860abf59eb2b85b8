"""Model resolution (every form of -m) and loader errors that name what is wrong."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, build_model, hf_outputs, run_mha
from safetensors.numpy import load_file, save_file

from mhacli.engine.forward import forward
from mhacli.errors import ConfigError, ModelError, WeightsError
from mhacli.io.weights import load_model, resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(cache: Path, repo_id: str, model_dir: Path) -> None:
    """The layout huggingface_hub writes: blobs, a snapshot of symlinks into them, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for i, f in enumerate(sorted(model_dir.iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))


def test_directory_file_and_env(tiny_model, monkeypatch):
    assert resolve_model(str(tiny_model)).weight_files == (tiny_model / "model.safetensors",)
    assert resolve_model(str(tiny_model / "model.safetensors")).directory == tiny_model
    monkeypatch.setenv("MHA_MODEL", str(tiny_model))
    assert resolve_model(None).directory == tiny_model


def test_mha_model_pointing_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv("MHA_MODEL", str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="MHA_MODEL="):
        resolve_model(None)


def test_default_is_the_bundled_sample_from_any_directory(tmp_path):
    result = run_mha("info", "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["source"] == "sample:tiny-shakespeare"
    assert doc["config"]["model_type"] == "gpt2"


def test_hub_id_from_the_local_cache_offline(tmp_path, tiny_model, monkeypatch):
    fake_hub_cache(tmp_path / "hub", "tester/tiny-gpt2", tiny_model)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    ckpt = load_model("tester/tiny-gpt2")
    ids = np.arange(10)
    ours = next(forward(ckpt, ids)).attention
    ref = hf_outputs(tiny_model, ids)[0][0]
    assert np.abs(ours - ref).max() < 1e-6


def test_sharded_hub_checkpoint_through_cache_symlinks(tmp_path, tokenizer_dir, monkeypatch):
    """Cache snapshots are symlinks into ../../blobs: they stay inside the repo's cache folder, so are accepted."""
    model = build_model(tmp_path / "m", tokenizer_dir, max_shard_size="20KB")
    fake_hub_cache(tmp_path / "hub", "tester/sharded", model)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert len(load_model("tester/sharded").files.weight_files) > 2


def test_hub_id_not_in_cache_while_offline(tmp_path):
    result = run_mha("info", "-m", "nobody/not-cached", env={"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert result.stderr.decode().startswith("error: nobody/not-cached: not in the local Hugging Face cache")
    assert result.stdout == b""


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt"])
def test_pickle_checkpoints_are_refused_by_name(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not even read")
    with pytest.raises(ModelError, match="pickle checkpoint.*safetensors"):
        resolve_model(str(path))


def test_directory_with_only_a_pickle_is_refused(tmp_path, tiny_model):
    shutil.copy(tiny_model / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ModelError, match="pytorch_model.bin is a pickle checkpoint"):
        resolve_model(str(tmp_path))


def test_config_defaults_match_hf(tmp_path, tokenizer_dir):
    """A config.json that omits fields (as the official gpt2 one does) gets GPT2Config's defaults, like HF."""
    directory = build_model(tmp_path, tokenizer_dir, n_embd=32, n_head=4, n_layer=2, n_positions=64)
    config = json.loads((directory / "config.json").read_text())
    minimal = {k: config[k] for k in ("model_type", "n_embd", "n_head", "n_layer", "n_positions", "vocab_size")}
    (directory / "config.json").write_text(json.dumps(minimal))
    ckpt = load_model(str(directory))
    assert ckpt.config.activation_function == "gelu_new" and ckpt.config.layer_norm_epsilon == 1e-5
    assert ckpt.config.n_inner == 4 * 32 and ckpt.config.scale_attn_weights


def test_unsupported_model_type_names_what_is_supported(tiny_model, tmp_path):
    shutil.copytree(tiny_model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text()) | {"model_type": "bert"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="'bert' is not supported.*gpt2"):
        load_model(str(tmp_path / "m"))


def test_missing_tensor_is_named(tiny_model, tmp_path):
    shutil.copytree(tiny_model, tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.bias"]
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(WeightsError, match="'h.1.mlp.c_fc.bias' is missing"):
        load_model(str(tmp_path / "m"))


def test_wrong_shape_is_named(tiny_model, tmp_path):
    shutil.copytree(tiny_model, tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    tensors["transformer.h.0.attn.c_proj.weight"] = tensors["transformer.h.0.attn.c_proj.weight"][:, :16].copy()
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(WeightsError, match=r"'transformer.h.0.attn.c_proj.weight'.*\[32, 16\].*\[32, 32\]"):
        load_model(str(tmp_path / "m"))


def test_nan_in_weights_names_the_tensor(tiny_model, tmp_path):
    shutil.copytree(tiny_model, tmp_path / "m")
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    tensors["transformer.h.1.ln_2.weight"][3] = np.nan
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    ckpt = load_model(str(tmp_path / "m"))
    with pytest.raises(WeightsError, match="'transformer.h.1.ln_2.weight'.*NaN"):
        list(forward(ckpt, np.arange(5)))


def test_sample_weights_ship_in_the_repo():
    assert (REPO / "sample_weights" / "tiny-shakespeare" / "model.safetensors").is_file()
