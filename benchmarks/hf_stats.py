"""The HF side of the benchmark.

What a user would write with transformers to get every head's attention and a few statistics of each (load, tokenize,
forward with output_attentions, print a CSV row per head).
"""

import sys

import torch
from transformers import GPT2Model, GPT2TokenizerFast

model_dir, text = sys.argv[1], sys.argv[2]
tokenizer = GPT2TokenizerFast.from_pretrained(model_dir)
model = GPT2Model.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
ids = tokenizer(text, return_tensors="pt").input_ids[:, : model.config.n_positions]
with torch.no_grad():
    out = model(ids, output_attentions=True)
rows = ["layer,head,entropy,max_weight,previous_token"]
for layer, a in enumerate(out.attentions):
    a = a[0]  # [n_head, n_seq, n_seq]
    entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1).mean(-1)
    max_weight = a.max(-1).values.mean(-1)
    previous = a.diagonal(offset=-1, dim1=1, dim2=2).mean(-1)
    rows += [f"{layer},{h},{entropy[h]:.6f},{max_weight[h]:.6f},{previous[h]:.6f}" for h in range(a.shape[0])]
print("\n".join(rows))
