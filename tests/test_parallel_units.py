"""Running census texts on an executor (mhacli.analyses.parallel) in this process, against docs/census.md.

Results are folded in submission order whatever order they arrive in; work goes out in chunks of whole packs, about
`chunk_size` tokens (at most CHUNK_TEXTS texts); at most `in_flight` chunks are out at once and the
work is read lazily; a text that fails is reported, not raised; local workers and a Dask LocalCluster run one BLAS
and one attention thread each, and the caller's environment is restored afterwards. Executors here are threads or
stand-ins, so the code under test runs in this process.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from helpers import SAMPLE

from mhacli.analyses import parallel
from mhacli.analyses.census import text_stats
from mhacli.analyses.parallel import (
    CHUNK_TEXTS,
    CHUNK_TOKENS,
    InOrder,
    Item,
    chunks,
    dask_executor,
    default_workers,
    drive,
    local_pool,
    remember,
    run_chunk,
)
from mhacli.errors import DependencyError, MhaError, UsageError

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "MHA_THREADS")


def test_results_are_folded_in_submission_order_whatever_order_they_arrive_in():
    folded = []
    sink = InOrder(lambda seq, outcome: folded.append((seq, outcome)))
    order = list(range(30))
    random.Random(4).shuffle(order)
    for n, seq in enumerate(order):
        sink(seq, f"text {seq}")
        # everything below the smallest missing seq has been folded, nothing above it
        missing = min(set(range(31)) - set(order[: n + 1]))
        assert folded == [(s, f"text {s}") for s in range(missing)]
    assert sink.pending == {} and sink.next == 30


def items(sizes: list[int], start: int = 0) -> list[Item]:
    return [Item(start + k, np.zeros(n, dtype=np.int64), 0) for k, n in enumerate(sizes)]


def unpacked(work, size=4096):
    """chunks() with every text its own pack (--pack-tokens 1): chunks close at `size` tokens."""
    return chunks(work, lambda *e: None, 1, size)


def test_chunks_of_unpacked_texts_close_at_the_size():
    groups = list(unpacked(items([1000] * 11)))
    assert [len(g) for g in groups] == [5, 5, 1]  # 5 x 1000 >= 4096 closes a chunk, 4 x 1000 does not
    exact = list(unpacked(items([2048, 2048, 1])))
    assert [len(g) for g in exact] == [2, 1]  # exactly 4096 tokens close it
    assert [i.seq for g in groups for i in g] == list(range(11))


def test_a_chunk_counts_its_own_tokens_from_zero():
    groups = list(unpacked(items([4095, 1, 4095, 1, 5])))
    assert [[i.seq for i in g] for g in groups] == [[0, 1], [2, 3], [4]]


def test_chunks_close_at_chunk_texts():
    n = CHUNK_TEXTS
    assert n < CHUNK_TOKENS  # one-token texts: the text count closes the chunks, not the tokens
    groups = list(unpacked(items([1] * (2 * n + 2)), CHUNK_TOKENS))
    assert [len(g) for g in groups] == [n, n, 2]
    assert [len(g) for g in unpacked(items([1] * n), CHUNK_TOKENS)] == [n]


def test_failed_entries_go_to_failed_not_to_a_chunk():
    failed = []
    work = [*items([3, 4]), (2, "too long"), *items([5], start=3), (4, "empty")]
    groups = list(chunks(work, lambda seq, error: failed.append((seq, error))))
    assert failed == [(2, "too long"), (4, "empty")]
    assert [[i.seq for i in g] for g in groups] == [[0, 1, 3]]
    assert list(chunks([], lambda *e: None)) == []
    assert list(chunks([(0, "x")], lambda *e: None)) == []


def fake_outcome(item: Item) -> str:
    return f"{item.seq}:{len(item.ids)}"


@pytest.fixture
def fake_texts(monkeypatch):
    """run_chunk's per-text work replaced by a string naming the text (seq 3 fails as a text can)."""

    def stats(params, ids, first_row):
        if len(ids) == 33:
            raise MhaError("NaN in the forward")
        return f"{len(ids)}@{first_row}"

    def model(files):
        assert files == "the files", files  # the files drive was given reach every chunk
        return "params"

    def packed(params, texts):  # a pack fails as a whole when one of its texts does
        return [stats(params, ids, first_row) for ids, first_row in texts]

    monkeypatch.setattr(parallel, "_model", model)
    monkeypatch.setattr(parallel, "text_stats", stats)
    monkeypatch.setattr(parallel, "pack_stats", packed)


def test_run_chunk_keeps_each_texts_seq_and_turns_an_error_into_its_message(fake_texts):
    chunk = [Item(7, np.zeros(5, np.int64), 2), Item(8, np.zeros(33, np.int64), 0), Item(9, np.zeros(1, np.int64), 0)]
    assert run_chunk("the files", chunk) == [(7, "5@2"), (8, "NaN in the forward"), (9, "1@0")]


def slowly(fn, *args):
    time.sleep(0.02)  # long enough for every chunk drive may submit to be out at once
    return fn(*args)


class CountingExecutor:
    """A thread pool that records how many submitted chunks were out at once (each takes 20 ms)."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(2)
        self.out = 0
        self.most = 0
        self.lock = threading.Lock()

    def submit(self, fn, *args) -> Future:
        with self.lock:
            self.out += 1
            self.most = max(self.most, self.out)
        future = self.pool.submit(slowly, fn, *args)
        future.add_done_callback(self._done)
        return future

    def _done(self, _future) -> None:
        with self.lock:
            self.out -= 1


@pytest.mark.parametrize("in_flight", [1, 2, 3])
@pytest.mark.parametrize("threads", [False, True])
def test_drive_runs_every_text_once_in_order_with_at_most_in_flight_chunks_out(fake_texts, in_flight, threads):
    sizes = [3000, 2000, 33, 4000, 100, 5000, 7, 2500, 2500]
    work = [*items(sizes[:4]), (4, "skipped"), *items(sizes[4:], start=5)]
    folded = []
    executor = CountingExecutor() if threads else None
    sink = InOrder(lambda seq, o: folded.append((seq, o)))
    drive(iter(work), "the files", executor, sink, in_flight, pack_tokens=1, chunk_size=4096)
    sizes_by_seq = dict(enumerate(sizes[:4])) | {5 + k: n for k, n in enumerate(sizes[4:])}
    want = [(s, "NaN in the forward" if n == 33 else f"{n}@0") for s, n in sizes_by_seq.items()]
    want.insert(4, (4, "skipped"))
    assert folded == want
    if threads:
        executor.pool.shutdown()
        assert executor.most == in_flight  # 4 chunks: [0, 1], [2, 3, 5], [6], [7, 8, 9]


def test_a_chunk_that_comes_back_frees_its_place_at_once(fake_texts, monkeypatch):
    """With 2 in flight and chunk 0 slow, chunks 2, 3... go out as soon as chunk 1 is back, not after chunk 0."""
    events = []
    real = parallel.run_chunk

    def run_chunk(files, chunk, *pack):
        if chunk[0].seq == 0:
            time.sleep(0.5)
        events.append(("done", chunk[0].seq))
        return real(files, chunk, *pack)

    class Logging(CountingExecutor):
        def submit(self, fn, *args):
            events.append(("submit", args[1][0].seq))
            return self.pool.submit(fn, *args)

    monkeypatch.setattr(parallel, "run_chunk", run_chunk)
    executor = Logging()
    folded = []
    sink = InOrder(lambda seq, o: folded.append(seq))
    drive(iter(items([4096] * 4)), "the files", executor, sink, in_flight=2, pack_tokens=1, chunk_size=4096)
    executor.pool.shutdown()
    assert folded == [0, 1, 2, 3]
    assert events.index(("submit", 2)) < events.index(("done", 0))


def test_drive_reads_the_work_lazily(fake_texts):
    """With one chunk in flight, a text is only read once the chunks before it have come back."""
    folded = []
    read = []

    def work():
        for k in range(6):
            read.append((k, len(folded)))
            yield Item(k, np.zeros(4096, np.int64), 0)  # one text per chunk

    executor = CountingExecutor()
    sink = InOrder(lambda seq, o: folded.append(seq))
    drive(work(), "the files", executor, sink, in_flight=1, pack_tokens=1, chunk_size=4096)
    executor.pool.shutdown()
    assert folded == list(range(6))
    assert read == [(k, k) for k in range(6)]


def test_run_chunk_is_text_stats_on_the_remembered_model():
    from mhacli.io.weights import load_model

    ckpt = load_model(str(SAMPLE))
    remember(ckpt.files, ckpt)
    assert parallel._model(ckpt.files) is ckpt
    ids = np.array([2047, 5, 9, 5, 9, 13], dtype=np.int64)
    ((seq, got),) = run_chunk(ckpt.files, [Item(3, ids, 2)])
    want = text_stats(ckpt, ids, 2)
    assert seq == 3 and got.support == want.support and got.n_rows == want.n_rows == 4
    np.testing.assert_allclose(got.values, want.values, rtol=1e-6, atol=1e-7)


def test_a_worker_keeps_one_model_open(monkeypatch):
    opened = []

    def open_checkpoint(files, cache):
        opened.append((files, cache))
        return f"model {len(opened)}"

    monkeypatch.setattr(parallel, "open_checkpoint", open_checkpoint)
    monkeypatch.setattr(parallel, "_MODELS", {})
    a = parallel.ModelFiles("a", SAMPLE, (SAMPLE / "model.safetensors",))
    same = parallel.ModelFiles("a", SAMPLE, (SAMPLE / "model.safetensors",))
    b = parallel.ModelFiles("b", SAMPLE, (SAMPLE / "model.safetensors",))
    elsewhere = parallel.ModelFiles("a", SAMPLE.parent, (SAMPLE / "model.safetensors",))
    other_weights = parallel.ModelFiles("a", SAMPLE, (SAMPLE / "other.safetensors",))
    assert len({parallel._key(f) for f in (a, same, b, elsewhere, other_weights)}) == 4
    assert parallel._model(a) == "model 1" and parallel._model(same) == "model 1"
    assert parallel._model(b) == "model 2" and len(parallel._MODELS) == 1
    assert parallel._model(a) == "model 3" and opened == [(a, None), (b, None), (a, None)]
    remember(b, "kept")
    assert parallel._MODELS == {parallel._key(b): "kept"} and parallel._model(b) == "kept"


def test_default_workers_are_the_cores_this_process_may_use(monkeypatch):
    assert default_workers() == len(os.sched_getaffinity(0))

    def no_affinity(pid):
        raise OSError("not here")

    monkeypatch.setattr(os, "sched_getaffinity", no_affinity)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert default_workers() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert default_workers() == 1
    monkeypatch.delattr(os, "sched_getaffinity")
    assert default_workers() == 1


def test_a_local_worker_leaves_ctrl_c_to_its_parent():
    before = signal.getsignal(signal.SIGINT)
    try:
        parallel._ignore_sigint()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture
def thread_env(monkeypatch):
    """The thread variables as a user may have them: one set to 4, the others unset."""
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")


def test_local_workers_run_one_thread_each_and_the_environment_is_restored(thread_env):
    with local_pool(1) as pool:
        assert {name: os.environ.get(name) for name in THREAD_VARS} == dict.fromkeys(THREAD_VARS, "1")
        assert pool.submit(os.getenv, "MHA_THREADS").result(timeout=120) == "1"
    assert os.environ["OMP_NUM_THREADS"] == "4"
    assert all(name not in os.environ for name in THREAD_VARS if name != "OMP_NUM_THREADS")


def test_an_error_inside_the_local_pool_is_raised_and_the_environment_restored(thread_env):
    with pytest.raises(KeyError, match="stop"):
        with local_pool(1):
            raise KeyError("stop")
    assert os.environ["OMP_NUM_THREADS"] == "4" and "MKL_NUM_THREADS" not in os.environ


class FakeDask:
    """dask.distributed's Client and LocalCluster, recording how they are made and closed."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail, self.events = fail, []
        fake = self

        class LocalCluster:
            def __init__(self, **kwargs):
                fake.events.append(("cluster", kwargs))

            def close(self):
                fake.events.append(("cluster closed",))

        class Client:
            def __init__(self, address, **kwargs):
                fake.events.append(("client", address if isinstance(address, str) else "cluster", kwargs))
                if fake.fail is not None:
                    raise fake.fail

            def get_executor(self):
                return "executor"

            def close(self):
                fake.events.append(("client closed",))

        self.module = type(sys)("dask.distributed")
        self.module.Client, self.module.LocalCluster = Client, LocalCluster


def test_a_dask_local_cluster_has_single_threaded_worker_processes(monkeypatch):
    fake = FakeDask()
    monkeypatch.setitem(sys.modules, "dask.distributed", fake.module)
    with dask_executor("local", 3) as executor:
        assert executor == "executor"
    (cluster, client, *closed) = fake.events
    assert cluster == (
        "cluster",
        {
            "n_workers": 3,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": ":0",  # the scheduler's routes on a free port: 8787 may be another cluster's
            "scheduler_kwargs": {"dashboard": False},
            "env": dict.fromkeys(THREAD_VARS, "1"),
            "silence_logs": logging.CRITICAL,  # a lost worker's restart is no log line on stderr (test_exec_faults)
        },
    )
    assert client == ("client", "cluster", {}) and closed == [("client closed",), ("cluster closed",)]


def test_a_dask_scheduler_is_reached_within_5_s(monkeypatch):
    fake = FakeDask()
    monkeypatch.setitem(sys.modules, "dask.distributed", fake.module)
    with dask_executor("tcp://host:8786", 2) as executor:
        assert executor == "executor"
    assert fake.events == [("client", "tcp://host:8786", {"timeout": 5}), ("client closed",)]


@pytest.mark.parametrize(
    "error,reason",
    [
        (OSError("Timed out trying to connect\nsecond line"), "(Timed out trying to connect)"),
        (TimeoutError(), "(TimeoutError)"),
        (ValueError("x" * 200), "(" + "x" * 160 + ")"),
    ],
)
@pytest.mark.parametrize("address", ["local", "tcp://nowhere:1"])
def test_an_unreachable_scheduler_is_a_usage_error_naming_why(monkeypatch, error, reason, address):
    fake = FakeDask(fail=error)
    monkeypatch.setitem(sys.modules, "dask.distributed", fake.module)
    with pytest.raises(UsageError) as info:
        with dask_executor(address, 2):
            pass
    assert str(info.value) == f"dask {address}: cannot reach a Dask scheduler within 5 s {reason}"
    assert (("cluster closed",) in fake.events) == (address == "local")


def test_without_dask_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with pytest.raises(DependencyError, match=r"^dask needs dask\.distributed"):
        with dask_executor("local", 1):
            pass
