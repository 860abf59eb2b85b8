"""The HF check: run transformers (eager attention, float32) on the same ids and compare every layer.

The only module that imports torch or transformers, and only inside `hf_reference`, so no other command pays
for them. HF loads the weights with its own loader (from_pretrained) where the checkpoint has the standard file
names, so our loader is checked too; a lone .safetensors file is read with safetensors' torch reader instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mhacli.analyses.loss import logits as our_logits
from mhacli.analyses.loss import text_losses
from mhacli.config import ARCHITECTURES
from mhacli.engine.arch import family
from mhacli.engine.forward import final_norm, forward
from mhacli.errors import ModelError, missing_extra
from mhacli.io.weights import Checkpoint, normalise_key

HIDDEN_ATOL = 1e-4  # per unit of the layer's largest |hidden| (at least 1): float32 rounding grows with magnitude
LOSS_RTOL = 1e-5  # the mean next-token loss, relative to HF's


@dataclass(frozen=True)
class HFReference:
    attentions: list[np.ndarray]  # per layer [n_head, n_seq, n_seq]
    hidden: list[np.ndarray]  # per layer [n_seq, n_embd], the last after the final norm
    logits: np.ndarray | None  # [n_seq, vocab_size]; None: the checkpoint has no output head
    loss: float | None  # HF's labels=ids loss


@dataclass(frozen=True)
class HeadCheck:
    """The output head: logits and the mean next-token loss against HF's *ForCausalLM."""

    loss: float
    hf_loss: float
    logits_max_abs_err: float
    logits_scale: float  # max(1, max |HF logits|)

    @property
    def loss_rel_err(self) -> float:
        return abs(self.loss - self.hf_loss) / max(abs(self.hf_loss), 1e-12)


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
    head: HeadCheck | None = None  # None: no output head to check (a base model's weights)
    group_size: int = 1  # query heads per K/V head: query head h reads K/V head h // group_size

    @property
    def max_attention_err(self) -> float:
        return max(c.attention_max_abs_err for c in self.layers)

    @property
    def max_hidden_err(self) -> float:
        return max(c.hidden_max_abs_err for c in self.layers)

    @property
    def worst_head(self) -> tuple[int, int, float]:
        """(layer, head, error): the head whose attention differs most from HF's, over every head of every layer."""
        return max(
            ((c.layer, h, e) for c in self.layers for h, e in enumerate(c.head_attention_max_abs_err)),
            key=lambda x: x[2],
        )

    def layer_passed(self, c: LayerCheck) -> bool:
        return c.attention_max_abs_err <= self.atol and c.hidden_max_abs_err <= self.hidden_atol * c.hidden_scale

    @property
    def head_passed(self) -> bool:
        h = self.head
        return h is None or (h.loss_rel_err <= LOSS_RTOL and h.logits_max_abs_err <= self.hidden_atol * h.logits_scale)

    @property
    def passed(self) -> bool:
        return all(self.layer_passed(c) for c in self.layers) and self.head_passed

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "hidden_atol": self.hidden_atol,
            "n_tokens": self.n_tokens,
            "max_abs_err": {"attention": self.max_attention_err, "hidden": self.max_hidden_err},
            "worst_head": {
                "layer": self.worst_head[0], "head": self.worst_head[1],
                "kv_head": self.worst_head[1] // self.group_size, "attention_max_abs_err": self.worst_head[2],
            },
            "layers": [c.to_dict() | {"passed": self.layer_passed(c)} for c in self.layers],
            "loss": None if self.head is None else {
                "ours": self.head.loss, "hf": self.head.hf_loss, "rel_err": self.head.loss_rel_err, "rtol": LOSS_RTOL,
                "logits_max_abs_err": self.head.logits_max_abs_err, "logits_scale": self.head.logits_scale,
                "passed": self.head_passed,
            },
        }  # fmt: skip


def _import_hf():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise missing_extra("mha verify", "torch and transformers", "hf") from exc
    transformers.logging.set_verbosity_error()  # config warnings and load reports would drown the table
    transformers.logging.disable_progress_bar()
    return torch, transformers


def has_output_head(ckpt: Checkpoint) -> bool:
    """Tied to the embeddings, or an lm_head.weight in the files."""
    return ckpt.config.tie_word_embeddings or family(ckpt.config.model_type).LM_HEAD in ckpt.tensors


def hf_reference(ckpt: Checkpoint, ids: np.ndarray) -> HFReference:
    """HF's attentions, hidden states and, where the checkpoint has an output head, logits and labels=ids loss.

    From the checkpoint's model_type class (GPT2LMHeadModel, LlamaForCausalLM, ...; the base class GPT2Model,
    LlamaModel, ... without an output head), eager attention, float32."""
    torch, transformers = _import_hf()
    directory = ckpt.files.directory
    model_type = ckpt.config.model_type
    with_head = has_output_head(ckpt)
    standard = {directory / "model.safetensors"} == set(ckpt.files.weight_files) or (
        directory / "model.safetensors.index.json"
    ).is_file()
    try:
        row = ARCHITECTURES[model_type]
        model_class = getattr(transformers, row.hf_lm if with_head else row.hf_model)  # e.g. LlamaForCausalLM
        if ckpt.files.gguf is not None:  # HF dequantises the same file (transformers' GGUF loader)
            model = model_class.from_pretrained(
                directory, gguf_file=ckpt.files.gguf.name, attn_implementation="eager", dtype=torch.float32
            )
        elif standard:
            model = model_class.from_pretrained(
                directory, attn_implementation="eager", dtype=torch.float32, use_safetensors=True
            )
        else:
            model = _from_lone_file(ckpt, model_class, with_head)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - HF raises many kinds; the user needs one line
        raise ModelError(f"transformers could not load the model: {str(exc).strip().splitlines()[0][:200]}") from exc
    model = (model if ckpt.files.gguf is not None else model.float()).eval()  # a GGUF load refuses .float()
    batch = torch.as_tensor(ids, dtype=torch.long)[None]
    with torch.no_grad():
        kwargs = {"labels": batch} if with_head and len(ids) > 1 else {}
        out = model(batch, output_attentions=True, output_hidden_states=True, **kwargs)
    attentions = [a[0].numpy() for a in out.attentions]
    # after each block; every class we run reports the last one after its final norm (ln_f / norm)
    hidden = [h[0].numpy() for h in out.hidden_states[1:]]
    logits = out.logits[0].float().numpy() if with_head else None
    loss = float(out.loss) if getattr(out, "loss", None) is not None else None
    return HFReference(attentions, hidden, logits, loss)


def _from_lone_file(ckpt: Checkpoint, model_class, with_head: bool):
    """A lone .safetensors file: the model built from config.json, its state read with safetensors' torch reader."""
    from safetensors.torch import load_file

    model_type = ckpt.config.model_type
    config = model_class.config_class.from_pretrained(ckpt.files.directory)
    config._attn_implementation = "eager"
    model = model_class(config)
    prefix = model.base_model_prefix + "." if with_head else ""
    lm_head = family(model_type).LM_HEAD
    state = {}
    for path in ckpt.files.weight_files:
        for key, tensor in load_file(str(path)).items():
            ours = normalise_key(key, model_type)
            if ours is not None:
                state[ours if ours == lm_head else prefix + ours] = tensor.float()
    missing, _ = model.load_state_dict(state, strict=False)
    ignored = ("attn.bias", "attn.masked_bias") + ((lm_head,) if ckpt.config.tie_word_embeddings else ())
    missing = [k for k in missing if not k.endswith(ignored)]
    if missing:
        raise ModelError(f"transformers could not find {missing[0]!r} in the weights")
    if with_head and ckpt.config.tie_word_embeddings:
        model.tie_weights()
    return model


def verify(ckpt: Checkpoint, ids: np.ndarray, *, atol: float = 1e-5, hidden_atol: float = HIDDEN_ATOL) -> VerifyReport:
    hf = hf_reference(ckpt, ids)
    checks = []
    last = None
    for trace in forward(ckpt, ids):
        ours_hidden = trace.residual
        if trace.layer == ckpt.config.n_layer - 1:
            last = trace.residual
            ours_hidden = final_norm(ckpt, ours_hidden)  # HF reports the last hidden state after the final norm
        ref_a, ref_h = hf.attentions[trace.layer], hf.hidden[trace.layer]
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
    head = None
    if hf.logits is not None and hf.loss is not None and last is not None:
        losses = text_losses(ckpt, last, np.asarray(ids))
        head = HeadCheck(
            loss=float(losses.mean(dtype=np.float64)),
            hf_loss=hf.loss,
            logits_max_abs_err=float(np.abs(our_logits(ckpt, last) - hf.logits).max()),
            logits_scale=max(1.0, float(np.abs(hf.logits).max())),
        )
    return VerifyReport(atol, hidden_atol, len(ids), checks, head, ckpt.config.group_size)
