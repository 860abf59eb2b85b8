"""The suite's guard on signal handlers (tests/conftest.py: _signals_kept), run on a test that leaks one.

A test that left SIGINT ignored in the pytest process made every later child process inherit it: Ctrl-C tests then
failed only inside the full suite. The guard names the first test that changes SIGINT, SIGTERM or SIGHUP and puts
the handler back for the tests after it.
"""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO, default_sigint

LEAKS = """
import signal


def test_leaks_an_ignored_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_after_it():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_restores_what_it_changes():
    old = signal.signal(signal.SIGTERM, lambda *a: None)
    signal.signal(signal.SIGTERM, old)
"""


def test_the_guard_names_the_test_that_leaves_sigint_ignored(tmp_path):
    (tmp_path / "test_leak.py").write_text(LEAKS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    got = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", "test_leak.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=300,
        preexec_fn=default_sigint,  # this process may ignore SIGINT (started in the background): not the child
    )
    out = got.stdout.decode()
    assert got.returncode == 1, out
    assert "ERROR test_leak.py::test_leaks_an_ignored_sigint" in out, out
    assert "SIGINT: <built-in function default_int_handler> -> <Handlers.SIG_IGN: 1>" in out, out
    assert "3 passed, 1 error" in out, out  # the test after it saw the handler put back
