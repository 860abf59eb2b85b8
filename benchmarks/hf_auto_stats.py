"""The HF side of the SmolLM2 rows: any model transformers' Auto classes load, from a directory or a GGUF in it.

    python benchmarks/hf_auto_stats.py MODEL_DIR TEXT [GGUF_FILE]

What a user would write with transformers to get every head's entropy, max weight and previous-token weight: load
(from the GGUF when GGUF_FILE is given: transformers dequantises the whole model to float32), tokenize, one eager
forward with output_attentions, a CSV row per head.
"""

import sys

import torch
from transformers import AutoModel, AutoTokenizer

model_dir, text = sys.argv[1], sys.argv[2]
gguf = {"gguf_file": sys.argv[3]} if len(sys.argv) > 3 else {}
tokenizer = AutoTokenizer.from_pretrained(model_dir, **gguf)
model = AutoModel.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32, **gguf).eval()
ids = tokenizer(text, return_tensors="pt").input_ids
with torch.no_grad():
    out = model(ids, output_attentions=True)
rows = [f"# tokens {ids.shape[1]}", "layer,head,entropy,max_weight,previous_token"]
for layer, a in enumerate(out.attentions):
    a = a[0]  # [n_head, n_seq, n_seq]
    entropy = -(a * torch.log(a.clamp_min(1e-30))).sum(-1).mean(-1)
    max_weight = a.max(-1).values.mean(-1)
    previous = a.diagonal(offset=-1, dim1=1, dim2=2).mean(-1)
    rows += [f"{layer},{h},{entropy[h]:.6f},{max_weight[h]:.6f},{previous[h]:.6f}" for h in range(a.shape[0])]
print("\n".join(rows))
