"""The TransformerLens side of the SmolLM2 rows: TransformerBridge on a local safetensors directory.

    python benchmarks/tl_stats.py MODEL_DIR TEXT

What a TransformerLens user would write for every head's entropy, max weight and previous-token weight: boot the
bridge (offline), tokenize with the model's tokenizer (no BOS added, as mha and transformers read the text), one
forward with a hook on every layer's attention pattern that reduces it to the three statistics (no pattern kept).
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

model_dir, text = sys.argv[1], sys.argv[2]
bridge = TransformerBridge.boot_transformers(model_dir, device="cpu", dtype=torch.float32)
ids = bridge.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
rows = [f"# tokens {ids.shape[1]}", "layer,head,entropy,max_weight,previous_token"]


def reduce(pattern: torch.Tensor, hook) -> None:
    a = pattern[0]  # [n_head, n_seq, n_seq]
    layer = int(hook.name.split(".")[1])
    entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1).mean(-1)
    max_weight = a.max(-1).values.mean(-1)
    previous = a.diagonal(offset=-1, dim1=1, dim2=2).mean(-1)
    rows.extend(f"{layer},{h},{entropy[h]:.6f},{max_weight[h]:.6f},{previous[h]:.6f}" for h in range(a.shape[0]))


with torch.no_grad():
    bridge.run_with_hooks(ids, fwd_hooks=[(lambda name: name.endswith("attn.hook_pattern"), reduce)])
print("\n".join(rows))
