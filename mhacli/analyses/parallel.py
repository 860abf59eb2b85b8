"""Running independent texts on an executor: in this process, on local worker processes, or on a Dask cluster.

Work goes out in chunks of tokenized texts to `run_chunk`, which a worker runs with its model loaded once (a
process-wide cache, so a worker never reloads it per text); results come back in any order and are handed to the
caller in submission order (`InOrder`), so every reduction is the same whatever ran where. No scheduler of our own:
`concurrent.futures.ProcessPoolExecutor` locally, `dask.distributed`'s `Client.get_executor()` on a cluster.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from mhacli.analyses.census import TextStats, pack_stats, text_stats
from mhacli.engine.attention import one_blas_thread
from mhacli.engine.segments import PACK_TOKENS, pack_groups
from mhacli.errors import MhaError, UsageError, missing_extra
from mhacli.io.weights import Checkpoint, ModelFiles, open_checkpoint

CHUNK_TOKENS = 4096  # tokens per unit of work: small models run thousands of texts a second, so send them in bulk
CHUNK_TEXTS = 1024
DASK_TIMEOUT_S = 5
# BLAS and attention threads per local worker: the workers are the parallelism (N workers x N threads each would
# oversubscribe the cores); MHA_THREADS is mhacli.engine.attention's
_ONE_THREAD = {
    v: "1"
    for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "MHA_THREADS")
}


@dataclass(frozen=True)
class Item:
    seq: int  # position in the census' text order
    ids: np.ndarray
    first_row: int


Outcome = TextStats | str | MhaError  # a text's statistics, or why it failed (a message, or the error itself)


_MODELS: dict[tuple, Checkpoint] = {}


def _key(files: ModelFiles) -> tuple:
    return (files.source, str(files.directory), tuple(str(p) for p in files.weight_files))


def remember(files: ModelFiles, ckpt: Checkpoint) -> None:
    """Let work run in this process use an already open checkpoint (and its cached tensors)."""
    _MODELS.clear()
    _MODELS[_key(files)] = ckpt


def _model(files: ModelFiles) -> Checkpoint:
    key = _key(files)
    if key not in _MODELS:
        _MODELS.clear()  # one model per worker
        _MODELS[key] = open_checkpoint(files, cache=None)
    return _MODELS[key]


def run_chunk(files: ModelFiles, items: list[Item], pack_tokens: int = PACK_TOKENS) -> list[tuple[int, Outcome]]:
    """A worker's unit of work: every text of the chunk through the model (loaded once per process).

    Consecutive texts are packed into forwards of at most `pack_tokens` tokens (a longer text runs alone); a pack
    that fails (NaN on one of its texts) is rerun text by text, so only the failing text fails.

    BLAS runs on one thread here whatever the executor: OpenBLAS' float32 GEMMs round differently on one thread
    and on two, so a census run in this process, on local workers (one thread each) or on a Dask cluster with the
    user's own settings would otherwise differ in its last digits. Attention's own threads change nothing.
    """
    params = _model(files)
    out: list[tuple[int, Outcome]] = []
    with one_blas_thread():
        for pack in packs(items, pack_tokens):
            if len(pack) > 1:
                try:
                    results = pack_stats(params, [(item.ids, item.first_row) for item in pack])
                except MhaError:
                    pass  # one of its texts fails: each on its own below, the others unspoiled
                else:
                    out.extend((item.seq, r) for item, r in zip(pack, results))
                    continue
            for item in pack:
                try:
                    out.append((item.seq, text_stats(params, item.ids, item.first_row)))
                except MhaError as exc:  # e.g. NaN in the forward on this text: the text fails, the census goes on
                    out.append((item.seq, str(exc)))
    return out


def packs(items: list[Item], pack_tokens: int) -> Iterator[list[Item]]:
    """Consecutive items grouped into packs of at most `pack_tokens` tokens (a longer item alone)."""
    for group in pack_groups([len(item.ids) for item in items], pack_tokens):
        yield [items[i] for i in group]


def _ignore_sigint() -> None:
    """Local workers leave Ctrl-C to the parent, which stops them (no traceback from each worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def local_pool(workers: int) -> Iterator[Executor]:
    """`workers` fresh processes (spawned: no copy of this process' threads or state), one BLAS thread each."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)  # inherited by the workers when they are spawned (on the first submits)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():  # stop work in progress now (Ctrl-C, an error)
            child.terminate()
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def dask_executor(address: str, workers: int) -> Iterator[Executor]:
    """A Dask cluster's executor:

    `address` of a running scheduler, or `local` for a LocalCluster of `workers` single-threaded worker processes.
    Needs the dask extra (errors.install_hint)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise missing_extra("{dask}", "dask.distributed", "dask", params=("dask",)) from exc
    cluster = None
    try:
        if address == "local":
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, env=dict(_ONE_THREAD)
            )  # each worker process on one BLAS and one attention thread, as the local pool's
            client = Client(cluster)
        else:
            client = Client(address, timeout=DASK_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        if cluster is not None:
            cluster.close()
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{{dask}} {address}: cannot reach a Dask scheduler within {DASK_TIMEOUT_S} s ({reason})", params=("dask",)
        ) from exc
    try:
        yield client.get_executor()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class InOrder:
    """Hands results to `fold(seq, outcome)` in seq order, whatever order they arrive in."""

    def __init__(self, fold: Callable[[int, Outcome], None]) -> None:
        self.fold = fold
        self.next = 0
        self.pending: dict[int, Outcome] = {}

    def __call__(self, seq: int, outcome: Outcome) -> None:
        self.pending[seq] = outcome
        while self.next in self.pending:
            self.fold(self.next, self.pending.pop(self.next))
            self.next += 1


def chunks(
    work: Iterable[Item | tuple[int, str | MhaError]], failed: Callable[[int, Outcome], None]
) -> Iterator[list[Item]]:
    """Group the work into chunks of about CHUNK_TOKENS tokens; (seq, error) entries go straight to `failed`."""
    chunk: list[Item] = []
    tokens = 0
    for entry in work:
        if not isinstance(entry, Item):
            failed(*entry)
            continue
        chunk.append(entry)
        tokens += len(entry.ids)
        if tokens >= CHUNK_TOKENS or len(chunk) >= CHUNK_TEXTS:
            yield chunk
            chunk, tokens = [], 0
    if chunk:
        yield chunk


class WorkerLost(MhaError):
    """A worker process died mid-run (killed, out of memory): the run stops with this one error, never a hang."""


def _result(future: Future) -> list[tuple[int, Outcome]]:
    """A chunk's outcomes; a worker that died (a broken local pool, Dask's KilledWorker) is one WorkerLost."""
    from concurrent.futures import BrokenExecutor, CancelledError

    try:
        return future.result()
    except MhaError:
        raise
    except (BrokenExecutor, CancelledError) as exc:
        raise WorkerLost(_lost(exc), params=("workers",)) from exc
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":  # dask.distributed's, not imported unless Dask runs
            raise
        raise WorkerLost(_lost(exc), params=("workers",)) from exc


def _submit(executor: Executor, files: ModelFiles, chunk: list[Item], pack_tokens: int) -> Future:
    """Send a chunk; a pool already broken by a dead worker is one WorkerLost, as a broken result is."""
    from concurrent.futures import BrokenExecutor

    try:
        return executor.submit(run_chunk, files, chunk, pack_tokens)
    except BrokenExecutor as exc:
        raise WorkerLost(_lost(exc), params=("workers",)) from exc


def _lost(exc: BaseException) -> str:
    why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return f"a worker process died mid-run ({why}); nothing was written: run again, perhaps with fewer {{workers}}"


def drive(
    work: Iterable[Item | tuple[int, str | MhaError]],
    files: ModelFiles,
    executor: Executor | None,
    sink: InOrder,
    in_flight: int,
    pack_tokens: int = PACK_TOKENS,
) -> None:
    """Run every item:

    in this process when `executor` is None, else at most `in_flight` chunks out at a time (the work is read lazily,
    so a streamed corpus is never held whole)."""
    if executor is None:
        for chunk in chunks(work, sink):
            for seq, outcome in run_chunk(files, chunk, pack_tokens):
                sink(seq, outcome)
        return
    pending: set[Future] = set()

    def collect(done: Iterable[Future]) -> None:
        for future in done:
            for seq, outcome in _result(future):
                sink(seq, outcome)

    for chunk in chunks(work, sink):
        pending.add(_submit(executor, files, chunk, pack_tokens))
        while len(pending) >= in_flight:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            collect(done)
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        collect(done)
