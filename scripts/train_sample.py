#!/usr/bin/env python
"""Train the bundled sample model: a tiny GPT-2 on Tiny Shakespeare.

Reproducible (fixed --seed), CPU-only, standard ``GPT2LMHeadModel`` so that
Hugging Face and any GPT-2 tool can load the result.  Writes into ``--out``:

* ``vocab.json``, ``merges.txt``, ``tokenizer.json`` (+ tokenizer_config):
  a byte-level BPE tokenizer trained on the training split of the corpus;
* ``config.json`` + ``model.safetensors``;
* ``training_summary.json``: held-out loss and per-head attention scores.

Every step sums three losses (see ``--natural``, ``--repeat``, ``--skip``,
``--weights``):

* natural text: random 256-token windows of the first 90% of the corpus;
* "repeat" rows: sequences of random length (``--rep-len``) followed by their
  exact repeat (loss only on the predictable second copies); half of them are
  random token ids, half are corpus passages (``--rep-text-frac``).  This is
  what turns a layer-1 head into an induction head;
* "skip" rows: random tokens where at half the positions the next token equals
  the token before the current one (loss only there).  Only a head attending
  to the previous token can serve this, which seeds previous-token heads in
  layer 0 (induction heads are built on top of them).

Progress goes to stderr, including the head scores every ``--eval-every``
steps.  The defaults are the settings that produced the shipped weights in
``sample_weights/tiny-shakespeare/``.  On one machine and library build the
run is bitwise deterministic, but a re-run on torch 2.13.0+cpu did not
reproduce the shipped weights bit for bit (same heads, held-out loss within
0.003; ``sample_weights/tiny-shakespeare-early/README.md`` has the figures).

Checkpoints along the run (``--checkpoint-every``, default 50 steps): at each
one the script logs the best induction score over all heads and the loss on the
second copy of repeated random tokens (the same probe as the summary's
``induction`` score), optionally saves the weights into ``--checkpoint-dir``,
and keeps the last checkpoint whose best induction score is still at most
``--early-threshold`` (0.1) before the first one above it.  That checkpoint,
from before the induction head formed, is written to ``--early-out`` with the
same tokenizer files (``sample_weights/tiny-shakespeare-early/``).  None of
this touches the training's random streams: the probes use their own seeded
generator and run in eval mode without dropout, so the trained weights are the
same with or without checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np

EOT = "<|endoftext|>"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------


def train_tokenizer(text: str, vocab_size: int):
    """Byte-level BPE like GPT-2: 256 byte tokens, merges, then <|endoftext|> last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the last id is reserved for <|endoftext|>
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    base.train_from_iterator(text.splitlines(keepends=True), trainer)
    model_json = json.loads(base.to_str())["model"]
    vocab = dict(model_json["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    eot_id = len(vocab)
    vocab[EOT] = eot_id
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([EOT])
    assert tok.token_to_id(EOT) == eot_id == vocab_size - 1, (tok.token_to_id(EOT), eot_id)
    return tok


def save_tokenizer(tok, out: str):
    from transformers import GPT2TokenizerFast

    fast = GPT2TokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, add_prefix_space=False, model_max_length=256
    )
    fast.save_pretrained(out)
    # GPT-2 style vocab.json / merges.txt as well (the slow GPT2Tokenizer reads these).
    model_json = json.loads(tok.to_str())["model"]
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(model_json["vocab"], f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in model_json["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


def natural_rows(rng, tokens: np.ndarray, n: int, T: int):
    starts = rng.integers(0, len(tokens) - T, n)
    x = np.stack([tokens[s : s + T] for s in starts])
    return x, x.copy()


def repeat_rows(
    rng,
    n: int,
    T: int,
    lo: int,
    hi: int,
    lmin: int,
    lmax: int,
    tile: bool = False,
    text_tokens=None,
    text_frac: float = 0.0,
):
    """Rows of blocks [s, s] with s random of random length; labels on 2nd copies.

    With ``tile`` a row is one random s repeated until the row is full."""
    x = np.empty((n, T), dtype=np.int64)
    lab = np.full((n, T), -100, dtype=np.int64)
    for r in range(n):
        if tile:
            L = int(rng.integers(lmin, lmax + 1))
            x[r] = np.resize(rng.integers(lo, hi, L), T)
            lab[r, L + 1 :] = x[r, L + 1 :]
            continue
        pos = 0
        while pos < T:
            L = int(rng.integers(lmin, lmax + 1))
            if text_tokens is not None and rng.random() < text_frac:
                a0 = int(rng.integers(0, len(text_tokens) - L))
                s = text_tokens[a0 : a0 + L]  # a real passage, repeated verbatim
            else:
                s = rng.integers(lo, hi, L)
            blk = np.concatenate([s, s])[: T - pos]
            x[r, pos : pos + len(blk)] = blk
            a, b = pos + L + 1, min(pos + 2 * L, T)
            if a < b:
                lab[r, a:b] = x[r, a:b]
            pos += 2 * L
    return x, lab


def skip_rows(rng, n: int, T: int, lo: int, hi: int):
    """Random tokens; at ~half the positions x[i+1] = x[i-1] (labels only there)."""
    x = rng.integers(lo, hi, (n, T))
    lab = np.full((n, T), -100, dtype=np.int64)
    copy = rng.random((n, T)) < 0.5
    copy[:, :2] = False
    for i in range(2, T):
        m = copy[:, i]
        x[m, i] = x[m, i - 2]
    lab[copy] = x[copy]
    return x, lab


# --------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------


def head_scores(model, torch, val_tokens: np.ndarray, vocab_size: int, seed: int = 1234):
    """Per-head previous-token, induction and position-0 attention scores."""
    model.eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        # induction: 40 random ids from 256..V/2, repeated (80 tokens, no BOS)
        draws = 16
        seq = rng.integers(256, vocab_size // 2, (draws, 40))
        x = torch.tensor(np.concatenate([seq, seq], axis=1))
        out = model(x, output_attentions=True)
        ind = []
        ind_loss = torch.nn.functional.cross_entropy(
            out.logits[:, 40:79].reshape(-1, out.logits.shape[-1]), x[:, 41:80].reshape(-1)
        ).item()
        i = torch.arange(40, 80)
        prev_rand = []
        k = torch.arange(1, 80)
        for A in out.attentions:  # (B, H, T, T)
            ind.append(A[:, :, i, i - 39].mean(dim=(0, 2)).tolist())
            prev_rand.append(A[:, :, k, k - 1].mean(dim=(0, 2)).tolist())
        seq = rng.integers(256, vocab_size // 2, (draws, 10))
        out = model(torch.tensor(np.concatenate([seq, seq], axis=1)), output_attentions=True)
        i10 = torch.arange(10, 20)
        ind_short = [A[:, :, i10, i10 - 9].mean(dim=(0, 2)).tolist() for A in out.attentions]
        # previous-token and sink on held-out natural text: 8 passages of 200 tokens
        n_pass, T = 8, 200
        starts = np.linspace(0, len(val_tokens) - T - 1, n_pass).astype(int)
        x = torch.tensor(np.stack([val_tokens[s : s + T] for s in starts]))
        out = model(x, output_attentions=True)
        prev, sink = [], []
        j = torch.arange(1, T)
        for A in out.attentions:
            prev.append(A[:, :, j, j - 1].mean(dim=(0, 2)).tolist())
            sink.append(A[:, :, j, 0].mean(dim=(0, 2)).tolist())
        # sink on the induction-test sequences too
    model.train()
    return {
        "previous_token": prev,
        "induction": ind,
        "attention_to_pos0": sink,
        "previous_token_random": prev_rand,
        "induction_len10": ind_short,
        "induction_second_copy_loss": ind_loss,
    }


def heldout_loss(model, torch, val_tokens: np.ndarray, T: int, max_windows: int | None = None):
    model.eval()
    n = (len(val_tokens) - 1) // T
    if max_windows:
        n = min(n, max_windows)
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for b in range(0, n, 32):
            idx = range(b, min(n, b + 32))
            x = torch.tensor(np.stack([val_tokens[k * T : k * T + T] for k in idx]))
            logits = model(x).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            tot += loss.item()
            cnt += x[:, 1:].numel()
    model.train()
    return tot / cnt


CHECKPOINT_ARGS = ("checkpoint_every", "checkpoint_dir", "early_out", "early_threshold")


def best_head(rows):
    """(\"LlHh\", score) of the largest entry of a per-layer, per-head score table."""
    best = best_entry(rows)
    return best["head"], best["score"]


def checkpoint_row(step, sc):
    ind_head, ind = best_head(sc["induction"])
    prev_head, prev = best_head(sc["previous_token"])
    return {
        "step": step,
        "best_induction_head": ind_head,
        "best_induction": ind,
        "second_copy_loss": sc["induction_second_copy_loss"],
        "best_previous_token_head": prev_head,
        "best_previous_token": prev,
    }


def save_early(args, early, crossed_at, curve, tok, cfg, model_cls, torch, val_tokens, V, T):
    """Write the chosen pre-induction checkpoint like the final model, with its own training_summary.json."""
    step, state, sc = early
    model = model_cls(cfg)
    model.set_attn_implementation("eager")
    model.load_state_dict(state)
    model.eval()
    vl = heldout_loss(model, torch, val_tokens, T)
    os.makedirs(args.early_out, exist_ok=True)
    save_tokenizer(tok, args.early_out)
    model.save_pretrained(args.early_out, safe_serialization=True)
    summary = {
        "step": step,
        "of_steps": args.steps,
        "chosen_as": f"the last checkpoint (every {args.checkpoint_every} steps) before the best induction score "
        f"rose above {args.early_threshold}, which happened at step {crossed_at}",
        "heldout_loss_nats_per_token": vl,
        "heldout_tokens": int(len(val_tokens)),
        "per_head": {
            "previous_token_natural_text": sc["previous_token"],
            "induction_repeated_random_tokens": sc["induction"],
            "attention_to_position0_natural_text": sc["attention_to_pos0"],
        },
        "induction_second_copy_loss": sc["induction_second_copy_loss"],
        "args": {
            k: v for k, v in vars(args).items() if k not in ("corpus", "out", "no_save", "checkpoint_dir", "early_out")
        },
        "corpus": os.path.basename(args.corpus),
        "curve": curve,
        "score_definitions": {
            "induction": "16 draws of 40 random ids in [256, V/2) repeated twice (80 tokens, no BOS);"
            " mean over i=40..79 of A[i,i-39]; best_induction is the largest over all heads",
            "second_copy_loss": "mean next-token cross-entropy over the predictable part of the second copy"
            " (targets 41..79) of the same sequences",
            "previous_token": "mean over query i>=1 of A[i,i-1], 8 held-out passages of 200 tokens",
        },
    }
    with open(os.path.join(args.early_out, "training_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"early checkpoint (step {step}, held-out loss {vl:.4f}) saved to {args.early_out}")


def fmt_heads(name, rows):
    return "  " + name + ": " + " | ".join(f"L{i} " + " ".join(f"{v:.2f}" for v in r) for i, r in enumerate(rows))


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--corpus",
        default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "tinyshakespeare.txt"),
    )
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "sample_weights", "tiny-shakespeare"))
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-positions", type=int, default=256)
    p.add_argument("--natural", default="8x256", help="ROWSxCTX natural-text rows per step")
    p.add_argument("--repeat", default="12x128", help="ROWSxCTX repeated-random-sequence rows per step")
    p.add_argument("--skip", default="12x128", help="ROWSxCTX skip-bigram rows per step")
    p.add_argument("--tile", action="store_true", help="repeat rows: tile one sequence over the row")
    p.add_argument(
        "--rep-text-frac",
        type=float,
        default=0.5,
        help="fraction of repeated sequences that are corpus passages (rest random tokens)",
    )
    p.add_argument("--weights", default="1,1,1", help="loss weights natural,repeat,skip")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--decay-frac", type=float, default=0.3, help="final fraction of steps with linear lr decay to 10%%")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--rep-len", default="8,60", help="min,max length of a repeated sequence")
    p.add_argument(
        "--wpe-init",
        choices=["normal", "sinusoid"],
        default="sinusoid",
        help="initialise position embeddings as (scaled) sinusoids: relative offsets become "
        "linear maps, which lets previous-token heads form early",
    )
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=50,
        help="probe (and with --checkpoint-dir save) a checkpoint every N steps; 0: none",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        help="also save every checkpoint's weights here, as step-NNNNN/model.safetensors",
    )
    p.add_argument(
        "--early-out",
        default=os.path.join(os.path.dirname(__file__), "..", "sample_weights", "tiny-shakespeare-early"),
        help="where to write the last checkpoint before induction rises above --early-threshold",
    )
    p.add_argument(
        "--early-threshold",
        type=float,
        default=0.1,
        help="best induction score (any head) that counts as the induction head having formed",
    )
    p.add_argument("--no-save", action="store_true", help="experiment only: write nothing")
    return p.parse_args(argv)


def build_model(args, torch, V: int, eot: int):
    """A fresh GPT-2 (eager attention) for the tokenizer's vocabulary; --wpe-init sinusoid: scaled sinusoids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=V,
        n_positions=args.n_positions,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(cfg)
    model.set_attn_implementation("eager")
    if args.wpe_init == "sinusoid":
        with torch.no_grad():
            pos = torch.arange(args.n_positions, dtype=torch.float32)[:, None]
            freq = torch.exp(-math.log(10000.0) * torch.arange(0, args.n_embd, 2) / args.n_embd)
            pe = torch.zeros(args.n_positions, args.n_embd)
            pe[:, 0::2] = torch.sin(pos * freq)
            pe[:, 1::2] = torch.cos(pos * freq)
            model.transformer.wpe.weight.copy_(pe * cfg.initializer_range * math.sqrt(2.0))
    model.train()
    return cfg, model


def make_optimizer(model, args, torch):
    """AdamW, weight decay on the matrices except the position embeddings."""
    decay, no_decay = [], []
    for n_, p_ in model.named_parameters():
        (decay if p_.dim() >= 2 and "wpe" not in n_ else no_decay).append(p_)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )


def lr_at(args, step: int) -> float:
    """Linear warm-up, constant, then linear decay to 10% over the last --decay-frac of the steps."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    d0 = int(args.steps * (1 - args.decay_frac))
    if step >= d0 and args.steps > d0:
        return args.lr * (1 - 0.9 * (step - d0) / (args.steps - d0))
    return args.lr


def make_batch(args, rng, torch, train_tokens: np.ndarray, eot: int):
    """One step's rows: [(loss weight, inputs, labels)] for the natural, repeat and skip groups with weight > 0."""
    (nn, nc), (rn, rc), (sn, scx) = (
        tuple(int(v) for v in g.split("x")) for g in (args.natural, args.repeat, args.skip)
    )
    weights = [float(v) for v in args.weights.split(",")]
    lmin, lmax = (int(v) for v in args.rep_len.split(","))
    out = []
    if nn:
        out.append((weights[0],) + natural_rows(rng, train_tokens, nn, nc))
    if rn:
        out.append(
            (weights[1],)
            + repeat_rows(rng, rn, rc, 0, eot, lmin, min(lmax, rc // 2), args.tile, train_tokens, args.rep_text_frac)
        )
    if sn:
        out.append((weights[2],) + skip_rows(rng, sn, scx, 0, eot))
    return [(w, torch.tensor(x), torch.tensor(labels)) for w, x, labels in out if w > 0]


def train_step(model, opt, torch, parts) -> tuple[float, np.ndarray]:
    """One optimiser step on the weighted mean of the parts' losses: (that loss, each part's loss)."""
    part_losses = [model(x, labels=lab).loss for _, x, lab in parts]
    loss = sum(w * part for (w, _, _), part in zip(parts, part_losses)) / sum(w for w, _, _ in parts)
    pl = np.array([part.item() for part in part_losses])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item(), pl


def probe_checkpoint(args, model, torch, done: int, val_tokens, V: int, curve: list, early, crossed_at):
    """Score, log and record the checkpoint after `done` steps; returns (scores, early, crossed_at).

    The row goes to `curve`, the weights to --checkpoint-dir when given, and the state becomes the early checkpoint
    while the best induction score is at most --early-threshold.
    """
    sc = head_scores(model, torch, val_tokens, V)
    row = checkpoint_row(done, sc)
    curve.append(row)
    log(
        f"checkpoint {done}: best induction {row['best_induction_head']} "
        f"{row['best_induction']:.3f}, second-copy loss {row['second_copy_loss']:.3f}, "
        f"best previous-token {row['best_previous_token_head']} {row['best_previous_token']:.3f}"
    )
    if args.checkpoint_dir and not args.no_save:
        from safetensors.torch import save_file

        ck = os.path.join(args.checkpoint_dir, f"step-{done:05d}")
        os.makedirs(ck, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
            os.path.join(ck, "model.safetensors"),
            metadata={"format": "pt"},
        )
    if crossed_at is None:
        if row["best_induction"] > args.early_threshold:
            crossed_at = done
            log(
                f"  induction rose above {args.early_threshold} at step {done}; "
                f"the early checkpoint is step {early[0] if early else None}"
            )
        else:
            early = (done, copy.deepcopy(model.state_dict()), sc)
    return sc, early, crossed_at


def evaluate(args, model, torch, step: int, sc, val_tokens, V: int, run_loss: float, run_parts, t_train: float):
    """The progress report after step `step` (0-based): held-out loss on 32 windows and every head's scores."""
    sc = sc or head_scores(model, torch, val_tokens, V)
    vl = heldout_loss(model, torch, val_tokens, args.n_positions, max_windows=32)
    el = time.time() - t_train
    log(
        f"step {step + 1}/{args.steps} lr {lr_at(args, step):.2e} train {run_loss:.3f} "
        f"parts {' '.join(f'{v:.2f}' for v in run_parts)} held-out {vl:.3f} "
        f"ind-copy-loss {sc['induction_second_copy_loss']:.2f} "
        f"best prev {max(map(max, sc['previous_token'])):.2f} "
        f"best ind {max(map(max, sc['induction'])):.2f} ({el:.0f}s, {el / (step + 1):.2f}s/step)"
    )
    log(fmt_heads("prev", sc["previous_token"]))
    log(fmt_heads("ind ", sc["induction"]))
    log(fmt_heads("prev-rand", sc["previous_token_random"]))
    log(fmt_heads("pos0", sc["attention_to_pos0"]))
    log(fmt_heads("ind10", sc["induction_len10"]))
    return {"step": step + 1, "heldout_loss_partial": vl, **sc}


def best_entry(rows) -> dict:
    """The largest entry of a per-layer, per-head score table, with its layer and head."""
    layer, head = max(
        ((i, j) for i in range(len(rows)) for j in range(len(rows[i]))), key=lambda lh: rows[lh[0]][lh[1]]
    )
    return {"head": f"L{layer}H{head}", "layer": layer, "head_index": head, "score": rows[layer][head]}


def final_summary(args, model, torch, val_tokens, V: int, n_params: int, t_train: float, history: list) -> dict:
    """The trained model's training_summary.json: held-out loss on every window and the heads' scores (logged)."""
    sc = head_scores(model, torch, val_tokens, V)
    vl = heldout_loss(model, torch, val_tokens, args.n_positions)
    summary = {
        "heldout_loss_nats_per_token": vl,
        "heldout_tokens": int(len(val_tokens)),
        "per_head": {
            "previous_token_natural_text": sc["previous_token"],
            "induction_repeated_random_tokens": sc["induction"],
            "attention_to_position0_natural_text": sc["attention_to_pos0"],
        },
        "best_previous_token_head": best_entry(sc["previous_token"]),
        "best_induction_head": best_entry(sc["induction"]),
        "induction_second_copy_loss": sc["induction_second_copy_loss"],
        "sink_heads_over_0.5": [
            f"L{layer}H{h}" for layer, r in enumerate(sc["attention_to_pos0"]) for h, v in enumerate(r) if v > 0.5
        ],
        "n_parameters": n_params,
        "train_seconds": time.time() - t_train,
        "args": {k: v for k, v in vars(args).items() if k not in ("corpus", "out", "no_save") + CHECKPOINT_ARGS},
        "corpus": os.path.basename(args.corpus),
        "history": history,
        "score_definitions": {
            "previous_token": "mean over query i>=1 of A[i,i-1], 8 held-out passages of 200 tokens",
            "induction": "16 draws of 40 random ids in [256, V/2) repeated twice (80 tokens, no BOS);"
            " mean over i=40..79 of A[i,i-39]",
            "attention_to_position0": "mean over query i>=1 of A[i,0] on the held-out passages",
        },
    }
    log(f"== summary: held-out loss {vl:.4f} nats/token")
    log(fmt_heads("previous-token (natural text)", sc["previous_token"]))
    log(fmt_heads("induction (repeated random)  ", sc["induction"]))
    log(fmt_heads("attention to position 0      ", sc["attention_to_pos0"]))
    log(
        f"  best previous-token {summary['best_previous_token_head']}, "
        f"best induction {summary['best_induction_head']}, sinks {summary['sink_heads_over_0.5']}"
    )
    return summary


def main(argv=None):
    args = parse_args(argv)

    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()

    with open(args.corpus, encoding="utf-8") as f:
        text = f.read()
    cut = int(len(text) * 0.9)
    train_text, val_text = text[:cut], text[cut:]
    tok = train_tokenizer(train_text, args.vocab_size)
    V = tok.get_vocab_size()
    eot = tok.token_to_id(EOT)
    train_tokens = np.array(tok.encode(train_text).ids, dtype=np.int64)
    val_tokens = np.array(tok.encode(val_text).ids, dtype=np.int64)
    log(
        f"tokenizer: vocab {V}, train {len(train_tokens)} tokens, held-out {len(val_tokens)} tokens "
        f"({time.time() - t0:.1f}s)"
    )

    cfg, model = build_model(args, torch, V, eot)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {args.n_layer} layers x {args.n_head} heads x {args.n_embd}, {n_params:,} parameters")
    opt = make_optimizer(model, args, torch)

    history = []
    curve = []  # one row per checkpoint: step, best induction head and score, second-copy loss
    early = None  # (step, state_dict, scores) of the last checkpoint at or below the threshold
    crossed_at = None  # the first checkpoint step above it
    t_train = time.time()
    run_loss = run_parts = None  # running means of the loss and of each part's loss
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(args, step)
        loss, pl = train_step(model, opt, torch, make_batch(args, rng, torch, train_tokens, eot))
        run_parts = pl if run_parts is None else 0.95 * run_parts + 0.05 * pl
        run_loss = loss if run_loss is None else 0.95 * run_loss + 0.05 * loss
        sc = None
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            sc, early, crossed_at = probe_checkpoint(
                args, model, torch, step + 1, val_tokens, V, curve, early, crossed_at
            )
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            history.append(evaluate(args, model, torch, step, sc, val_tokens, V, run_loss, run_parts, t_train))

    summary = final_summary(args, model, torch, val_tokens, V, n_params, t_train, history)
    if not args.no_save:
        os.makedirs(args.out, exist_ok=True)
        save_tokenizer(tok, args.out)
        model.save_pretrained(args.out, safe_serialization=True)
        with open(os.path.join(args.out, "training_summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        log(f"saved to {args.out} ({time.time() - t0:.0f}s total)")
        if early is not None and crossed_at is not None:
            save_early(
                args, early, crossed_at, curve, tok, cfg, GPT2LMHeadModel, torch, val_tokens, V, args.n_positions
            )
        else:
            log(
                f"no early checkpoint written: the best induction score never rose above {args.early_threshold} "
                "after a checkpoint below it"
            )


if __name__ == "__main__":
    main()
