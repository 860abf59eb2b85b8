"""The HF side of the census benchmark.

What a user would write with transformers to get every head's statistics over many texts: load, then for each text (the
same token ids mha ran, one JSON list per line of IDS_FILE, with the first row the statistics read), a forward with
output_attentions and the eight statistics of docs/statistics.md per head, averaged over the texts; one CSV row per
head.
"""

import json
import sys

import torch
from transformers import AutoModel

model_dir, ids_file = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
sums = None
n_texts = 0
with open(ids_file) as f, torch.no_grad():
    for line in f:
        record = json.loads(line)
        ids = torch.tensor([record["token_ids"]])
        first = record["first_row"]
        n = ids.shape[1]
        out = model(ids, output_attentions=True)
        t = ids[0]
        same = t[:, None] == t[None, :]
        dup = torch.tril(same, diagonal=-2)[first:]
        ind = torch.zeros_like(same)
        ind[:, 1:] = t[:, None] == t[None, :-1]
        ind = torch.tril(ind, diagonal=-2)[first:]
        rows = torch.arange(first, n)
        per_layer = []
        for a in out.attentions:
            a = a[0, :, first:].double()  # [n_head, rows, n_seq]
            lo = max(first, 1)
            stats = [
                -(a * torch.log(a.clamp_min(1e-300))).sum(-1).mean(-1),
                a.max(-1).values.mean(-1),
                (a * (rows[:, None] - torch.arange(n)[None, :]).clamp_min(0)).sum(-1).mean(-1),
                a[:, lo - first :, 0].mean(-1),
                a[:, torch.arange(n - first), rows].mean(-1),
                a[:, torch.arange(lo - first, n - first), torch.arange(lo - 1, n - 1)].mean(-1),
            ]
            for mask in (dup, ind):
                have = mask.any(-1)
                stats.append((a * mask).sum(-1)[:, have].mean(-1) if have.any() else torch.zeros(a.shape[0]))
            per_layer.append(torch.stack(stats))
        values = torch.stack(per_layer)  # [n_layer, 8, n_head]
        sums = values if sums is None else sums + values
        n_texts += 1
means = sums / n_texts
rows = ["layer,head,entropy,max_weight,mean_distance,first_token,self,previous_token,duplicate_token,induction"]
for layer in range(means.shape[0]):
    for h in range(means.shape[2]):
        rows.append(f"{layer},{h}," + ",".join(f"{v:.6f}" for v in means[layer, :, h].tolist()))
print("\n".join(rows))
