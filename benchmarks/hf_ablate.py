"""The HF side of the ablation benchmark.

What a user would write with transformers to get every head's effect on the loss (load, tokenize, the intact loss, then
one forward per head with a pre-hook on `c_proj` zeroing that head's input columns; a CSV row per head).
"""

import sys

import torch
from transformers import GPT2LMHeadModel, GPT2TokenizerFast

model_dir, text = sys.argv[1], sys.argv[2]
tokenizer = GPT2TokenizerFast.from_pretrained(model_dir)
model = GPT2LMHeadModel.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
ids = tokenizer(text, return_tensors="pt").input_ids[:, : model.config.n_positions]
d_head = model.config.n_embd // model.config.n_head


def loss_without(layer: int | None, head: int | None) -> float:
    hook = None
    if layer is not None:

        def zero_head(module, args):
            x = args[0].clone()
            x[..., head * d_head : (head + 1) * d_head] = 0.0
            return (x,)

        hook = model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero_head)
    with torch.no_grad():
        loss = float(model(ids, labels=ids).loss)
    if hook is not None:
        hook.remove()
    return loss


baseline = loss_without(None, None)
rows = ["layer,head,loss,delta"]
for layer in range(model.config.n_layer):
    for head in range(model.config.n_head):
        loss = loss_without(layer, head)
        rows.append(f"{layer},{head},{loss:.6f},{loss - baseline:.6f}")
print("\n".join(rows))
