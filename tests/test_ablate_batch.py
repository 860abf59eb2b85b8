"""The Ablator's cached, batched evaluations against the plain way: every head removed, the whole model rerun.

The Ablator reruns only the layers a removal changes and runs the heads of one layer together as a batch of
variants (mhacli.analyses.ablate). The reference here removes one head (or a set) with the forward's plain edit and
reruns every layer of every text, one model at a time, on a tiny random Llama with grouped K/V heads and a tiny
GPT-2, for zero and mean ablation; the mean outputs are measured here from the intact forward. The bound is the
issue's: 1e-6 relative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import LLAMA, bos_tokenizer, build, build_model

RTOL = 1e-6
# texts of different lengths: a batch runs one text at a time, and the loss weighs texts by their targets
TEXTS = [np.random.default_rng(s).integers(1, 400, size=n) for s, n in ((21, 9), (22, 23))]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    bos = bos_tokenizer(tmp_path_factory.mktemp("bos"))
    llama = LLAMA | {"num_hidden_layers": 3}  # 8 query heads over 2 K/V heads
    return {
        "llama_gqa": build(tmp_path_factory.mktemp("llama"), "llama", llama, bos, seed=31),
        "gpt2": build_model(tmp_path_factory.mktemp("gpt2"), tokenizer_dir, seed=32, n_layer=3, n_head=4),
    }


def checkpoint(directory: Path):
    from mhacli.io.weights import load_model

    return load_model(str(directory), cache=True)


def intact_means(ckpt) -> np.ndarray:
    """Each head's output averaged over every position of every text, [n_layer, n_head, d_head] float32."""
    from mhacli.engine.forward import forward

    sums, count = 0.0, 0
    for ids in TEXTS:
        sums = sums + np.stack([t.z.sum(axis=1, dtype=np.float64) for t in forward(ckpt, ids)])
        count += len(ids)
    return (sums / count).astype(np.float32)


def plain_loss(ckpt, removed, means) -> float:
    """The whole model rerun on every text with `removed` heads set to 0 or to their means; token-weighted."""
    from mhacli.analyses.loss import text_losses

    c = ckpt.config
    total, n = 0.0, 0
    for ids in TEXTS:
        x = _embed(ckpt, ids)
        for layer in range(c.n_layer):
            x = _block(ckpt, x, layer, [h for lay, h in removed if lay == layer], means)
        losses = text_losses(ckpt, x, ids)
        total += float(losses.sum(dtype=np.float64))
        n += len(losses)
    return total / n


def _embed(ckpt, ids):
    from mhacli.engine.forward import embed

    return embed(ckpt, np.asarray(ids))


def _block(ckpt, x, layer, heads, means):
    """One layer, written out: the family's block with an edit of its heads' outputs z [n_head, n_seq, d_head]."""
    from mhacli.engine.forward import family

    def edit(z):
        z = z.copy()
        for h in heads:
            z[h] = 0.0 if means is None else means[layer, h]
        return z

    out, _ = family(ckpt.config).block(x, ckpt.layer(layer), ckpt.config, layer, edit if heads else None)
    return out


@pytest.mark.parametrize("method", ["zero", "mean"])
@pytest.mark.parametrize("name", ["llama_gqa", "gpt2"])
@pytest.mark.parametrize("batch", [1, 3, 64])
def test_each_head_equals_the_plain_rerun(models, name, method, batch):
    from mhacli.analyses.ablate import Ablator, ablate_each

    ckpt = checkpoint(models[name])
    means = intact_means(ckpt) if method == "mean" else None
    ablator = Ablator(ckpt, TEXTS, method=method, batch=batch)
    if means is not None:
        assert ablator.means is not None and np.abs(ablator.means - means).max() <= 1e-6 * np.abs(means).max()
    base = plain_loss(ckpt, [], means)
    assert ablator.baseline == pytest.approx(base, rel=RTOL)
    for e in ablate_each(ablator, ablator.heads):
        want = plain_loss(ckpt, [(e.layer, e.head)], means)
        assert e.loss == pytest.approx(want, rel=RTOL), f"{name} {method} head {e.layer}.{e.head}"


@pytest.mark.parametrize("method", ["zero", "mean"])
@pytest.mark.parametrize("name", ["llama_gqa", "gpt2"])
def test_sets_over_a_base_equal_the_plain_rerun(models, name, method):
    """Variants with several heads over several layers, parting at different layers, over a cached base."""
    from mhacli.analyses.ablate import Ablator

    ckpt = checkpoint(models[name])
    means = intact_means(ckpt) if method == "mean" else None
    ablator = Ablator(ckpt, TEXTS, method=method, batch=2)
    base = [(1, 0), (2, 3)]
    assert ablator.set_base(base) == pytest.approx(plain_loss(ckpt, base, means), rel=RTOL)
    extras = [[(0, 1)], [(0, 2), (2, 1)], [(1, 2)], [(1, 1), (1, 3)], [(2, 0)], [], [(1, 0)], [(0, 3), (1, 1)]]
    ticks: list[int] = []
    got = ablator.losses(extras, tick=lambda: ticks.append(1))
    assert len(ticks) == len(extras)
    for extra, loss in zip(extras, got):
        want = plain_loss(ckpt, sorted(set(base) | set(extra)), means)
        assert loss == pytest.approx(want, rel=RTOL), f"{name} {method} {base} + {extra}"


def test_a_pinned_base_is_the_baseline_and_keeps_its_values(models):
    """A Removal's heads keep their own values (here: arbitrary vectors), and further removals use the method."""
    from mhacli.analyses.ablate import Ablator, Removal

    ckpt = checkpoint(models["llama_gqa"])
    c = ckpt.config
    heads = ((0, 3), (2, 5))
    values = np.random.default_rng(7).standard_normal((2, c.d_head)).astype(np.float32)
    pinned = Removal(heads, "mean", values)
    ablator = Ablator(ckpt, TEXTS, method="zero", pinned=pinned)
    fill = np.zeros((c.n_layer, c.n_head, c.d_head), dtype=np.float32)
    fill[0, 3], fill[2, 5] = values
    assert ablator.baseline == pytest.approx(plain_loss(ckpt, list(heads), fill), rel=RTOL)
    got = ablator.losses([[(1, 1)], [(0, 3)]])
    assert got[0] == pytest.approx(plain_loss(ckpt, [*heads, (1, 1)], fill), rel=RTOL)  # (1, 1) zeroed: fill is 0
    assert got[1] == ablator.baseline  # already removed


def test_workers_do_not_change_the_numbers(models):
    """Batches run on several threads compute what one thread computes (BLAS on one thread in each)."""
    from mhacli.analyses.ablate import Ablator, ablate_each

    ckpt = checkpoint(models["llama_gqa"])
    runs = [ablate_each(Ablator(ckpt, TEXTS, method="mean", batch=3, workers=w), Ablator(ckpt, TEXTS).heads)
            for w in (1, 3)]  # fmt: skip
    for one, three in zip(*runs, strict=True):
        assert (one.layer, one.head) == (three.layer, three.head) and one.loss == pytest.approx(three.loss, rel=1e-12)
