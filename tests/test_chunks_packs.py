"""A census' units of work (mhacli.analyses.parallel.chunks) are whole packs, sized by the model's work (issue 34).

Packs are cut over the whole stream, never at a chunk boundary, so every forward, and every result, is the same
whatever the chunk size and the executor; a chunk is about CHUNK_FLOP of work, at least one pack; Dask's local
workers run without the MALLOC_TRIM_THRESHOLD_ that made them 18% slower.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import SAMPLE, run_mha
from hypothesis import given, settings
from hypothesis import strategies as st

from mhacli.analyses import parallel
from mhacli.analyses.parallel import CHUNK_TEXTS, CHUNK_TOKENS, InOrder, Item, chunk_tokens, chunks, drive, remember
from mhacli.engine.segments import pack_groups


def items(sizes: list[int]) -> list[Item]:
    return [Item(k, np.zeros(n, dtype=np.int64), 0) for k, n in enumerate(sizes)]


def seqs(groups) -> list[list[int]]:
    return [[item.seq for item in g] for g in groups]


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 300), max_size=80),
    pack=st.integers(1, 400),
    size=st.integers(1, 3000),
)
def test_chunks_are_whole_packs_of_the_whole_stream(sizes, pack, size):
    groups = seqs(chunks(items(sizes), lambda *e: None, pack, size))
    assert [s for g in groups for s in g] == list(range(len(sizes)))  # every text once, in order
    whole = pack_groups(sizes, pack)  # the packs of the stream as one
    per_chunk = [[g[i] for i in grp] for g in groups for grp in pack_groups([sizes[s] for s in g], pack)]
    assert per_chunk == whole  # run_chunk's packs of each chunk are exactly the stream's packs
    for g in groups[:-1]:  # a chunk closes only where one more full pack would pass the size
        tokens = sum(sizes[s] for s in g)
        assert tokens + pack > size or len(g) >= CHUNK_TEXTS
    for g in groups:  # ... and not sooner: without its last pack it could still take a full one
        last = pack_groups([sizes[s] for s in g], pack)[-1]
        before = g[: len(g) - len(last)]
        assert not before or (sum(sizes[s] for s in before) + pack <= size and len(before) < CHUNK_TEXTS)


def test_one_pack_per_chunk_when_the_size_is_one_pack():
    sizes = [12, 700, 300, 5, 1024, 2000, 1, 1, 1023]
    groups = seqs(chunks(items(sizes), lambda *e: None, 1024, 1024))
    assert groups == [[0, 1, 2, 3], [4], [5], [6, 7], [8]]  # 1,017 tokens; 1,024; 2,000 alone; 2; 1,023


def test_a_chunk_counts_its_tokens_and_its_packs_from_zero():
    # a chunk after the first: 6 + 4 fill a pack of 10 exactly (no close: 10 + 10 is not over 20), then 6 more
    assert seqs(chunks(items([6, 6, 6, 4, 6]), lambda *e: None, 10, 20)) == [[0, 1], [2, 3, 4]]
    # a pack after the first filled exactly (5 + 5): one chunk, as pack_groups makes it one pack
    assert seqs(chunks(items([8, 5, 5, 3]), lambda *e: None, 10, 10)) == [[0], [1, 2], [3]]
    assert pack_groups([8, 5, 5, 3], 10) == [[0], [1, 2], [3]]


def test_a_full_pack_closes_its_chunk_before_the_next_text_is_read():
    read = []

    def work():
        for k, n in enumerate([512, 512, 100, 924]):
            read.append(k)
            yield Item(k, np.zeros(n, np.int64), 0)

    stream = chunks(work(), lambda *e: None, 1024, 1024)
    assert seqs([next(stream)]) == [[0, 1]] and read == [0, 1]  # 1,024 tokens: full, text 2 not read yet
    assert seqs(stream) == [[2, 3]]


def test_chunk_size_is_about_chunk_flop_and_at_least_one_pack():
    gpt2_small = 2 * 85_000_000  # FLOPs per token of its blocks: a pack of 1,024 tokens is ~1.3 s on one core
    assert chunk_tokens(gpt2_small, 1024) == 1024
    assert chunk_tokens(gpt2_small, 1) == int(parallel.CHUNK_FLOP / gpt2_small)  # unpacked: ~118 tokens
    assert chunk_tokens(2 * 400_000, 1024) == CHUNK_TOKENS  # a tiny model: capped
    assert chunk_tokens(1e15, 1024) == 1024  # a huge model: still one whole pack
    sizes = [chunk_tokens(f, 64) for f in (1e5, 1e6, 1e7, 1e8, 1e9)]
    assert sizes == sorted(sizes, reverse=True)  # more work per token, fewer tokens per chunk


def test_layer_parameter_count_is_the_blocks_values():
    from mhacli.io.weights import load_model

    ckpt = load_model(str(SAMPLE))
    n, layers = ckpt.config.n_embd, ckpt.config.n_layer
    # a GPT-2 block with n_inner = 4 n_embd: c_attn 3n^2 + 3n, c_proj n^2 + n, two LayerNorms 4n, MLP 8n^2 + 5n
    assert ckpt.config.n_inner == 4 * n
    assert ckpt.layer_parameter_count() == layers * (12 * n * n + 13 * n)


@pytest.mark.parametrize("threads", [False, True])
def test_the_packs_run_are_the_same_whatever_the_chunk_size(monkeypatch, threads):
    from concurrent.futures import ThreadPoolExecutor

    from mhacli.io.weights import load_model

    ckpt = load_model(str(SAMPLE))
    remember(ckpt.files, ckpt)
    rng = np.random.default_rng(5)
    sizes = [int(n) for n in rng.integers(1, 90, size=60)]
    work = [Item(k, rng.integers(0, 100, size=n), 0) for k, n in enumerate(sizes)]
    real_stats, real_alone, real_chunk = parallel.pack_stats, parallel.text_stats, parallel.run_chunk

    def runs(chunk_size: int) -> tuple[list[list[int]], int, list]:
        packs: list[list[int]] = []
        ran: list[int] = []

        def recording(params, texts):
            packs.append([len(ids) for ids, _ in texts])
            return real_stats(params, texts)

        def alone(params, ids, first_row):  # a pack of one text runs unpacked
            packs.append([len(ids)])
            return real_alone(params, ids, first_row)

        def counted(files, chunk, pack_tokens):
            ran.append(len(chunk))
            return real_chunk(files, chunk, pack_tokens)

        monkeypatch.setattr(parallel, "pack_stats", recording)
        monkeypatch.setattr(parallel, "text_stats", alone)
        monkeypatch.setattr(parallel, "run_chunk", counted)
        out: dict = {}
        sink = InOrder(lambda s, o: out.__setitem__(s, o))
        executor = ThreadPoolExecutor(2) if threads else None
        drive(iter(work), ckpt.files, executor, sink, 2, 100, chunk_size)
        if executor is not None:
            executor.shutdown()
        return sorted(packs), len(ran), [out[k] for k in range(len(work))]

    (few, n_few, a), (many, n_many, b) = runs(250), runs(CHUNK_TOKENS)
    assert n_few > n_many == 1  # the chunk size was used: 250-token chunks, or the whole work in one
    assert few == many and sum(map(len, few)) == len(sizes)  # and the packs are the same either way
    assert max(map(sum, few)) <= 100
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.values, y.values, rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.filterwarnings("ignore")
def test_dask_local_workers_run_without_malloc_trim(monkeypatch):
    pytest.importorskip("dask.distributed", reason="the test extra installs dask[distributed]")
    import dask

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # a user's own setting would pass through, as it should

    before = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    assert "MALLOC_TRIM_THRESHOLD_" in before  # Dask's own default, which this test exists to undo
    with parallel.dask_executor("local", 1) as executor:
        got = executor.submit(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")})
        env = got.result(timeout=60)
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}
    assert dict(dask.config.get("distributed.nanny.pre-spawn-environ")) == before  # the setting restored after


def test_dask_local_says_nothing_when_another_cluster_holds_port_8787(tmp_path):
    pytest.importorskip("dask.distributed", reason="the test extra installs dask[distributed]")
    import socket

    taken = socket.socket()
    try:
        taken.bind(("0.0.0.0", 8787))
        taken.listen()
    except OSError:
        pass  # already held by another process: the case itself
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat.\nA dog ran.\n")
    try:
        done = run_mha("census", "--texts", str(corpus), "--probes", "none", "--dask", "local", "-j", "1", "-f", "json")
    finally:
        taken.close()
    assert done.returncode == 0 and done.stderr == b"", done.stderr
