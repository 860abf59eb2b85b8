"""The HF check: run transformers (eager attention, float32) on the same ids and compare every layer.

The only module that imports torch or transformers, and only inside `hf_reference`, so no other command pays
for them. HF loads the weights with its own loader (from_pretrained) where the checkpoint has the standard file
names, so our loader is checked too; a lone .safetensors file is read with safetensors' torch reader instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mhacli.arch import family
from mhacli.errors import DependencyError, ModelError
from mhacli.model import final_norm, forward
from mhacli.weights import Checkpoint, normalise_key

HIDDEN_ATOL = 1e-4  # per unit of the layer's largest |hidden| (at least 1): float32 rounding grows with magnitude


@dataclass(frozen=True)
class LayerCheck:
    layer: int
    attention_max_abs_err: float
    hidden_max_abs_err: float
    hidden_scale: float  # max(1, max |hidden|) of HF's hidden state
    head_attention_max_abs_err: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "attention_max_abs_err": self.attention_max_abs_err,
            "hidden_max_abs_err": self.hidden_max_abs_err,
            "hidden_scale": self.hidden_scale,
            "head_attention_max_abs_err": self.head_attention_max_abs_err,
        }


@dataclass(frozen=True)
class VerifyReport:
    atol: float
    hidden_atol: float
    n_tokens: int
    layers: list[LayerCheck]

    @property
    def max_attention_err(self) -> float:
        return max(c.attention_max_abs_err for c in self.layers)

    @property
    def max_hidden_err(self) -> float:
        return max(c.hidden_max_abs_err for c in self.layers)

    def layer_passed(self, c: LayerCheck) -> bool:
        return c.attention_max_abs_err <= self.atol and c.hidden_max_abs_err <= self.hidden_atol * c.hidden_scale

    @property
    def passed(self) -> bool:
        return all(self.layer_passed(c) for c in self.layers)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "hidden_atol": self.hidden_atol,
            "n_tokens": self.n_tokens,
            "max_abs_err": {"attention": self.max_attention_err, "hidden": self.max_hidden_err},
            "layers": [c.to_dict() | {"passed": self.layer_passed(c)} for c in self.layers],
        }


def _import_hf():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise DependencyError(
            "mha verify needs torch and transformers: pip install 'mhacli[hf]' "
            "(or pip install 'torch>=2.2,<2.14' transformers)"
        ) from exc
    transformers.logging.set_verbosity_error()  # config warnings and load reports would drown the table
    transformers.logging.disable_progress_bar()
    return torch, transformers


def hf_reference(ckpt: Checkpoint, ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """HF's attentions [n_layer x [n_head, n_seq, n_seq]] and hidden states [n_layer x [n_seq, n_embd]], from the
    base model class of the checkpoint's model_type (GPT2Model, LlamaModel, ...), eager attention, float32."""
    torch, transformers = _import_hf()
    directory = ckpt.files.directory
    model_type = ckpt.config.model_type
    standard = {directory / "model.safetensors"} == set(ckpt.files.weight_files) or (
        directory / "model.safetensors.index.json"
    ).is_file()
    try:
        model_class = getattr(transformers, family(model_type).HF_MODEL_CLASS[model_type])  # e.g. LlamaModel
        if standard:
            model = model_class.from_pretrained(
                directory, attn_implementation="eager", dtype=torch.float32, use_safetensors=True
            )
        else:
            from safetensors.torch import load_file

            config = model_class.config_class.from_pretrained(directory)
            config._attn_implementation = "eager"
            model = model_class(config)
            state = {}
            for path in ckpt.files.weight_files:
                for key, tensor in load_file(str(path)).items():
                    ours = normalise_key(key, model_type)
                    if ours is not None:
                        state[ours] = tensor.float()
            missing, _ = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
            if missing:
                raise ModelError(f"transformers could not find {missing[0]!r} in the weights")
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - HF raises many kinds; the user needs one line
        raise ModelError(f"transformers could not load the model: {str(exc).strip().splitlines()[0][:200]}") from exc
    model = model.float().eval()
    with torch.no_grad():
        out = model(torch.as_tensor(ids, dtype=torch.long)[None], output_attentions=True, output_hidden_states=True)
    attentions = [a[0].numpy() for a in out.attentions]
    # after each block; every class we run reports the last one after its final norm (ln_f / norm)
    hidden = [h[0].numpy() for h in out.hidden_states[1:]]
    return attentions, hidden


def verify(ckpt: Checkpoint, ids: np.ndarray, *, atol: float = 1e-5, hidden_atol: float = HIDDEN_ATOL) -> VerifyReport:
    hf_attn, hf_hidden = hf_reference(ckpt, ids)
    checks = []
    for trace in forward(ckpt, ids):
        ours_hidden = trace.residual
        if trace.layer == ckpt.config.n_layer - 1:
            ours_hidden = final_norm(ckpt, ours_hidden)  # HF reports the last hidden state after the final norm
        ref_a, ref_h = hf_attn[trace.layer], hf_hidden[trace.layer]
        per_head = np.abs(trace.attention - ref_a).reshape(ref_a.shape[0], -1).max(axis=1)
        checks.append(
            LayerCheck(
                layer=trace.layer,
                attention_max_abs_err=float(per_head.max()),
                hidden_max_abs_err=float(np.abs(ours_hidden - ref_h).max()),
                hidden_scale=max(1.0, float(np.abs(ref_h).max())),
                head_attention_max_abs_err=[float(e) for e in per_head],
            )
        )
    return VerifyReport(atol, hidden_atol, len(ids), checks)
