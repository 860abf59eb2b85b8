"""TransformerLens' activation patching of every head's output on IOI pairs, a whole process (`run.py --patch`).

Usage: python tl_patch.py MODEL_DIR PAIRS.jsonl. Loads the model with TransformerBridge (raw weights, as mha's), then
for each pair runs get_act_patch_attn_head_out_all_pos (the logit difference at the last position) and prints the mean
over pairs of every head's value as JSON.
"""

import json
import sys

import torch
from transformer_lens import patching
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    directory, pairs_path = sys.argv[1], sys.argv[2]
    hf = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(directory)
    bridge = TransformerBridge.boot_transformers(directory, hf_model=hf, tokenizer=tok)
    with open(pairs_path) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    total = None
    for p in pairs:
        clean = torch.tensor([tok(p["clean"])["input_ids"]])
        corrupt = torch.tensor([tok(p["corrupt"])["input_ids"]])
        a = tok(p["answer"], add_special_tokens=False)["input_ids"][0]
        w = tok(p["wrong"], add_special_tokens=False)["input_ids"][0]

        def metric(logits, a=a, w=w):
            return logits[0, -1, a] - logits[0, -1, w]

        with torch.no_grad():
            _, cache = bridge.run_with_cache(clean)
            values = patching.get_act_patch_attn_head_out_all_pos(bridge, corrupt, cache, metric)
        total = values if total is None else total + values
    print(json.dumps({"values": (total / len(pairs)).tolist()}))


if __name__ == "__main__":
    main()
