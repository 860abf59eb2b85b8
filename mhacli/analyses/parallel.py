"""Running independent texts on an executor: in this process, on local worker processes, or on a Dask cluster.

Work goes out in chunks of tokenized texts to `run_chunk`, which a worker runs with its model loaded once (a
process-wide cache, so a worker never reloads it per text); results come back in any order and are handed to the
caller in submission order (`InOrder`), so every reduction is the same whatever ran where. No scheduler of our own:
`concurrent.futures.ProcessPoolExecutor` locally, `dask.distributed`'s `Client.get_executor()` on a cluster.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from mhacli.analyses.census import TextStats, pack_stats, text_stats
from mhacli.engine.attention import one_blas_thread
from mhacli.engine.segments import PACK_TOKENS, pack_groups
from mhacli.errors import MhaError, UsageError, missing_extra
from mhacli.io.weights import Checkpoint, ModelFiles, open_checkpoint

# A unit of work (a chunk) is whole packs, at least one, of about CHUNK_FLOP of work: enough that a Dask task's
# ~2.4 ms overhead (benchmarks/dask_overhead.py) is under 2% of it, and small enough that the chunks of a corpus
# spread evenly over the workers. On GPT-2 small that is one pack of 1,024 tokens (about 1.3 s on a core of this
# machine); a tiny model's are capped at CHUNK_TOKENS tokens or CHUNK_TEXTS texts (the bundled model: 4 chunks of
# its 12,386-token census, so two workers share them).
CHUNK_FLOP = 2e10
CHUNK_TOKENS = 4096
CHUNK_TEXTS = 1024
DASK_TIMEOUT_S = 5
POLL_S = 0.5  # while it waits for results, how often drive looks for a dead local worker
STOP_S = 5.0  # a stopped local worker's time to end after SIGTERM (then SIGKILL); the same for the pool's thread
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


class LocalPool(Executor):
    """concurrent.futures' process pool (spawned workers), plus the two things a run needs when something goes wrong.

    `lost()` names a worker that died: the pool notices most deaths itself (its futures fail with BrokenProcessPool),
    but not a worker killed while it sent a result, whose half-sent message the pool's thread then waits for forever.
    `stop()` ends every worker whatever it is doing, and the pool's thread with them, within a bounded time.
    (A wrapper, not a subclass: concurrent.futures.process and multiprocessing are imported only when a pool starts.)
    """

    def __init__(self, workers: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_ignore_sigint)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait, cancel_futures=cancel_futures)

    def workers(self) -> list:
        """The pool's worker processes (multiprocessing.Process), as it holds them now."""
        return list((getattr(self.pool, "_processes", None) or {}).values())

    def lost(self) -> str | None:
        """How a worker died (a signal, an exit code), or None while every worker lives."""
        for process in self.workers():
            code = process.exitcode
            if code is not None and code < 0:
                return f"worker {process.pid} was killed by {_signal_name(-code)}"
            if code is not None:
                return f"worker {process.pid} exited with code {code}"
        return None

    def stop(self) -> None:
        """Stop now, without waiting for the work in progress; never hangs.

        Pending work is cancelled, every worker terminated (killed after STOP_S seconds) and reaped. A worker stopped
        while it sent a result leaves the pool's thread reading a message that never ends; with every worker gone
        this process holds the last write end of that pipe, and closing it ends the read (EOF), after which the pool
        marks itself broken and its thread returns: nothing is left for the interpreter to wait for at exit.
        """
        workers = self.workers()
        manager: threading.Thread | None = getattr(self.pool, "_executor_manager_thread", None)
        results = getattr(self.pool, "_result_queue", None)
        self.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            _signal_process(process.terminate)
        deadline = time.monotonic() + STOP_S
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in workers:
            if process.exitcode is None:
                _signal_process(process.kill)
                process.join(STOP_S)
        writer = getattr(results, "_writer", None)
        if writer is not None:
            writer.close()
        if manager is not None and manager is not threading.current_thread():
            manager.join(STOP_S)


def _signal_process(send: Callable[[], None]) -> None:
    try:
        send()
    except OSError:  # already gone (reaped by the pool's own thread)
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextmanager
def local_pool(workers: int) -> Iterator[LocalPool]:
    """`workers` fresh processes (spawned: no copy of this process' threads or state), one BLAS thread each.

    On any exception (an error, Ctrl-C, a signal) the pool is stopped at once (LocalPool.stop), else shut down after
    its work.
    """
    with _environ_kept():
        os.environ.update(_ONE_THREAD)  # inherited by the workers when they are spawned (on the first submits)
        pool = LocalPool(workers)
        try:
            yield pool
        except BaseException:
            pool.stop()
            raise
        else:
            pool.shutdown(wait=True)


@contextmanager
def dask_executor(address: str, workers: int) -> Iterator[Executor]:
    """A Dask cluster's executor:

    `address` of a running scheduler, or `local` for a LocalCluster of `workers` single-threaded worker processes.
    Needs the dask extra (errors.install_hint)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise missing_extra("{dask}", "dask.distributed", "dask", params=("dask",)) from exc
    with _environ_kept(), _quiet("distributed"):  # a Nanny writes its pre-spawn settings into our os.environ
        yield from _dask_executor(address, workers, Client, LocalCluster)


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """A library's log records under CRITICAL dropped at their logger while the block runs, its level restored after.

    LocalCluster's silence_logs only quiets Dask's own handler: a lost and restarted worker's WARNING records would
    still reach the root logger (where the CLI holds library warnings back as `warning:` lines), though the run
    completes or ends in one error either way."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def _environ_kept() -> Iterator[None]:
    """This process's environment as it was on entry, whatever the code inside wrote into it."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for name in [n for n in os.environ if n not in saved]:
            del os.environ[name]
        for name, value in saved.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


def _dask_executor(address: str, workers: int, Client, LocalCluster) -> Iterator[Executor]:  # noqa: N803 - classes
    cluster = None
    try:
        if address == "local":
            with _no_malloc_trim():
                cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    scheduler_kwargs={"dashboard": False},
                    env=dict(_ONE_THREAD),
                    silence_logs=logging.CRITICAL,
                )  # each worker process on one BLAS and one attention thread, as the local pool's; a worker lost
                # and restarted is Dask's business, not a log line on our stderr (the run completes or one error);
                # no dashboard, and the scheduler's HTTP routes on a free port: with None it tries 8787 and warns
                # "Port 8787 is already in use" whenever another cluster holds it
            client = Client(cluster)
        else:
            client = Client(address, timeout=DASK_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError, TypeError, RuntimeError) as exc:  # RuntimeError: a nanny did not start
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


@contextmanager
def _no_malloc_trim() -> Iterator[None]:
    """Nannies started inside spawn their workers without Dask's MALLOC_TRIM_THRESHOLD_ (pre-spawn-environ).

    Dask sets it to 65,536 so long-lived workers give memory back; glibc then stops raising its mmap threshold, and
    every temporary over 128 KiB of a forward is a fresh mmap: a census task ran 18% slower in CPU time on a
    LocalCluster worker than on a local one (14x the page faults). A LocalCluster of ours lives for one run."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        yield


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


def chunk_tokens(flop_per_token: float, pack_tokens: int = PACK_TOKENS) -> int:
    """Tokens per chunk for a model doing `flop_per_token` per token: about CHUNK_FLOP, at least one whole pack."""
    wanted = CHUNK_FLOP / max(flop_per_token, 1.0)
    return int(max(pack_tokens, min(CHUNK_TOKENS, wanted)))


def chunks(
    work: Iterable[Item | tuple[int, str | MhaError]],
    failed: Callable[[int, Outcome], None],
    pack_tokens: int = PACK_TOKENS,
    size: int = CHUNK_TOKENS,
) -> Iterator[list[Item]]:
    """Group the work into chunks of whole packs; (seq, error) entries go straight to `failed`.

    A chunk closes at a pack end where one more full pack would pass `size` tokens (one pack each when `size` is
    one pack), or at CHUNK_TEXTS texts.

    Packs are cut as pack_groups cuts the whole stream (consecutive texts up to `pack_tokens` tokens), and run_chunk
    packs a chunk's items the same way from its first item, so every pack, and every result, is the same whatever
    the chunk size: serial, local workers and Dask compute the same GEMMs."""

    def full(tokens: int, texts: int) -> bool:
        return tokens + pack_tokens > size or texts >= CHUNK_TEXTS

    chunk: list[Item] = []
    tokens = in_pack = 0
    for entry in work:
        if not isinstance(entry, Item):
            failed(*entry)
            continue
        n = len(entry.ids)
        if chunk and in_pack + n > pack_tokens:  # entry starts a new pack: the chunk may close before it
            if full(tokens, len(chunk)):
                yield chunk
                chunk, tokens = [], 0
            in_pack = 0
        chunk.append(entry)
        tokens += n
        in_pack += n
        if in_pack >= pack_tokens and full(tokens, len(chunk)):  # a full pack: no need to read the next text
            yield chunk
            chunk, tokens, in_pack = [], 0, 0
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
        raise WorkerLost(_lost(_why(exc)), params=("workers",)) from exc
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":  # dask.distributed's, not imported unless Dask runs
            raise
        raise WorkerLost(_lost(_why(exc)), params=("workers",)) from exc


def _submit(executor: Executor, files: ModelFiles, chunk: list[Item], pack_tokens: int) -> Future:
    """Send a chunk; a pool already broken by a dead worker is one WorkerLost, as a broken result is."""
    from concurrent.futures import BrokenExecutor

    try:
        return executor.submit(run_chunk, files, chunk, pack_tokens)
    except BrokenExecutor as exc:
        raise WorkerLost(_lost(_why(exc)), params=("workers",)) from exc


def _why(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__


def _lost(why: str) -> str:
    return f"a worker process died mid-run ({why}); nothing was written: run again, perhaps with fewer {{workers}}"


def _wait(pending: set[Future], executor: Executor) -> tuple[set[Future], set[Future]]:
    """The chunks done (at least one) and those still out; a local worker found dead meanwhile is WorkerLost.

    The pool reports most dead workers through their futures, but one killed while it sent a result would leave
    them pending forever (LocalPool.lost), so the wait looks every POLL_S seconds.
    """
    while True:
        done, left = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
        if done:
            return done, left
        why = executor.lost() if isinstance(executor, LocalPool) else None
        if why is not None:
            raise WorkerLost(_lost(why), params=("workers",))


def drive(
    work: Iterable[Item | tuple[int, str | MhaError]],
    files: ModelFiles,
    executor: Executor | None,
    sink: InOrder,
    in_flight: int,
    pack_tokens: int = PACK_TOKENS,
    chunk_size: int = CHUNK_TOKENS,
) -> None:
    """Run every item:

    in this process when `executor` is None, else at most `in_flight` chunks of about `chunk_size` tokens out at a
    time (the work is read lazily, so a streamed corpus is never held whole)."""
    if executor is None:
        for chunk in chunks(work, sink, pack_tokens, chunk_size):
            for seq, outcome in run_chunk(files, chunk, pack_tokens):
                sink(seq, outcome)
        return
    pending: set[Future] = set()

    def collect(done: Iterable[Future]) -> None:
        for future in done:
            for seq, outcome in _result(future):
                sink(seq, outcome)

    for chunk in chunks(work, sink, pack_tokens, chunk_size):
        pending.add(_submit(executor, files, chunk, pack_tokens))
        while len(pending) >= in_flight:
            done, pending = _wait(pending, executor)
            collect(done)
    while pending:
        done, pending = _wait(pending, executor)
        collect(done)
