"""Shared fixtures: tiny random GPT-2 checkpoints built with transformers, a BPE tokenizer trained here.

Fixtures and pytest hooks only: the plain functions and constants the test files share are in tests/helpers.py.
Nothing is downloaded: models come from `transformers` configs with random weights, saved with save_pretrained.
"""

from __future__ import annotations

import io
import signal
import sys
from pathlib import Path

import pytest

# The fixtures below use CASES, Result, build_model and train_tokenizer; the other names are re-exported only for
# test files written before tests/helpers.py existed (branches in flight when it was split out), and
# tests/test_suite_layout.py fails on any test file that still imports them from here.
from helpers import (  # noqa: F401
    ATTN_ATOL,
    CASES,
    HIDDEN_ATOL,
    REPO,
    SAMPLE,
    TRICKY_TEXTS,
    Result,
    assert_close,
    blocks_on_hf_inputs,
    break_attention_kernel,
    build_model,
    compare_with_hf,
    count_case,
    hf_outputs,
    parse_json,
    run_mha,
    train_tokenizer,
)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer, 4-head random GPT-2 with the test tokenizer."""
    return build_model(tmp_path_factory.mktemp("tiny"), tokenizer_dir)


def pytest_terminal_summary(terminalreporter) -> None:
    if CASES:
        terminalreporter.write_sep("-", "cases run")
        for kind, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{kind}: {n:,}")


@pytest.fixture
def mha(capsysbinary, monkeypatch):
    """The CLI's entry function `run(argv)` in this process (fast), with stdin, stdout and stderr captured."""
    from mhacli.cli import run

    def call(*args: str, input: bytes = b"", env: dict | None = None) -> Result:
        for key in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR"):
            monkeypatch.delenv(key, raising=False)
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(input)))
        capsysbinary.readouterr()
        code = run(list(args))
        out, err = capsysbinary.readouterr()
        return Result(code, out, err)

    return call


@pytest.fixture(scope="session")
def cli_worker(tmp_path_factory):
    """The whole CLI in one child process under an address-space limit (tests/cli_worker.py).

    An abort or a hang in a case is a failing result, not a killed or stalled test run.
    """
    from cli_worker import CliWorker

    worker = CliWorker(tmp_path_factory.mktemp("cli-worker"))
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Playwright's sync API, one per test module.

    Not per session: the sync API keeps an event loop running in the main thread while it is open, and a later
    module that runs its own (tests/test_browse.py: asyncio.run) would find it running and fail.
    """
    import os

    from helpers import chromium_path

    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


# The signals whose handlers a test must leave as it found them: a child process inherits an ignored one (an ignored
# SIGINT leaves a Python child without KeyboardInterrupt), and a later test would run under another's handler.
KEPT_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


STARTED_WITH = signal.getsignal(signal.SIGINT)  # when pytest imported this file, before any test ran


def pytest_report_header() -> list[str]:
    if STARTED_WITH is not signal.SIG_IGN:
        return []
    return [
        "SIGINT was ignored when pytest started (a background job of a non-interactive shell: `cmd &`, nohup): "
        "every child process inherits that; tests of Ctrl-C start theirs with helpers.default_sigint"
    ]


@pytest.fixture(autouse=True)
def _signals_kept(request):
    """Fail the first test that leaves a signal's handler changed, and put the handler back for the tests after it."""
    before = [signal.getsignal(signum) for signum in KEPT_SIGNALS]
    yield
    changed = []
    for signum, old in zip(KEPT_SIGNALS, before):
        new = signal.getsignal(signum)
        if new != old:
            changed.append(f"{signal.Signals(signum).name}: {old!r} -> {new!r}")
            if old is not None:
                signal.signal(signum, old)
    if changed:
        pytest.fail(f"{request.node.nodeid} left signal handlers changed ({'; '.join(changed)})", pytrace=False)
