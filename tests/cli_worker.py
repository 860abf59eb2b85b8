"""The whole CLI in a child process under an address-space limit, case after case.

A fuzz case that makes a library abort (a Rust allocation failure is SIGABRT, exit 134) or hang must fail the
test, not kill or stall the test run. Starting `python -m mhacli` for every case costs a second of imports, so
one child serves many cases: it imports mhacli once, then for each request runs `mhacli.cli.main` exactly as the
console script does (argv, stdin, environment; file descriptors 1 and 2 redirected to files, so what a library
writes straight to fd 2 is seen too) and answers with the exit code and both outputs. Requests and answers
travel on two extra pipes, never on the child's stdin/stdout.

The parent (`CliWorker`) starts the child with RLIMIT_AS set in preexec_fn (and one thread for every pool,
so the address space does not depend on the number of CPUs), waits for each answer with a timeout, and turns
a dead child (its signal) or a silent one (killed after the timeout) into a result the test reports; the next
case gets a fresh child.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ADDRESS_SPACE = 1024**3  # the child takes ~200 MB of it; tokenizing 8 MiB of text in full needs more than all of it
CASE_TIMEOUT = 60.0  # seconds; a case takes well under one
SINGLE_THREADED = {
    "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false", "MALLOC_ARENA_MAX": "2", "PYTHONUTF8": "1",
}  # fmt: skip


@dataclass
class Result:
    returncode: int | None  # None: the case hung and the child was killed; negative: killed by that signal
    stdout: bytes
    stderr: bytes

    def describe(self) -> str:
        if self.returncode is None:
            return f"hung (no answer in {CASE_TIMEOUT:.0f} s); stderr {self.stderr[-2000:]!r}"
        return f"exit {self.returncode}; stderr {self.stderr[-2000:]!r}"


# --- the child --------------------------------------------------------------------------------------------------


def _serve(request_fd: int, answer_fd: int, case_dir: str) -> None:
    import mhacli.cli  # noqa: F401 - imported once, before the first case

    global CASE_DIR
    CASE_DIR = Path(case_dir)

    requests = os.fdopen(request_fd, "rb")
    answers = os.fdopen(answer_fd, "wb")
    answers.write(b'{"ready": true}\n')
    answers.flush()
    for line in requests:
        answers.write(json.dumps(_run_case(json.loads(line))).encode() + b"\n")
        answers.flush()


def _run_case(case: dict) -> dict:
    from mhacli.cli import main

    saved_env = dict(os.environ)
    os.environ.update(case.get("env", {}))
    for key in case.get("unset", []):
        os.environ.pop(key, None)
    stdin = base64.b64decode(case["stdin"])
    saved_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    sys.argv = ["mha", *case["argv"]]
    # files the parent can read after a crash: what a library wrote before aborting explains the abort
    with open(CASE_DIR / "case-stdout", "w+b") as out, open(CASE_DIR / "case-stderr", "w+b") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - anything escaping main() is a finding, reported as exit 99
            import traceback

            traceback.print_exc()
            code = 99
            if isinstance(exc, KeyboardInterrupt):
                code = 98
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sys.stdin = saved_stdin
            os.environ.clear()
            os.environ.update(saved_env)
        out.seek(0)
        err.seek(0)
        return {
            "code": code,
            "stdout": base64.b64encode(out.read()).decode(),
            "stderr": base64.b64encode(err.read()).decode(),
        }


# --- the parent -------------------------------------------------------------------------------------------------


class CliWorker:
    def __init__(self, log_dir: Path, address_space: int = ADDRESS_SPACE):
        self.log_dir = log_dir
        self.address_space = address_space
        self.proc: subprocess.Popen | None = None
        self.started = 0

    def _limit(self) -> None:  # runs in the child, before exec
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (self.address_space, self.address_space))

    def _start(self) -> None:
        request_r, request_w = os.pipe()
        answer_r, answer_w = os.pipe()
        self.started += 1
        self.log = self.log_dir / f"worker-{self.started}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("MHA_MODEL", "MHA_DEBUG", "NO_COLOR")}
        env.update(SINGLE_THREADED)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, str(request_r), str(answer_w), str(self.log_dir)],
                pass_fds=(request_r, answer_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=self._limit,
                env=env,
            )
        os.close(request_r)
        os.close(answer_w)
        self.requests = os.fdopen(request_w, "wb")
        self.answers = os.fdopen(answer_r, "rb")
        ready = self._answer(timeout=120.0)
        if ready is None or not isinstance(ready, dict) or not ready.get("ready"):
            raise RuntimeError(
                f"the CLI worker did not start under a {self.address_space} byte address space: "
                f"{self.log.read_text()[-3000:]}"
            )

    def _answer(self, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.answers], [], [], left)[0]:
                return None
            line = self.answers.readline()
            return json.loads(line) if line else {}

    def _stop(self) -> int | None:
        if self.proc is None:
            return None
        for stream in (self.requests, self.answers):
            try:
                stream.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.proc = None
        return code

    def run(self, *argv: str, input: bytes = b"", env: dict | None = None, unset: tuple[str, ...] = ()) -> Result:
        """`mha ARGV` in the child; a case that kills or stalls the child is a Result saying so."""
        if self.proc is None:
            self._start()
        request = {
            "argv": list(argv),
            "stdin": base64.b64encode(input).decode(),
            "env": env or {},
            "unset": list(unset),
        }
        try:
            self.requests.write(json.dumps(request).encode() + b"\n")
            self.requests.flush()
        except BrokenPipeError:
            pass
        answer = self._answer(CASE_TIMEOUT)
        if answer:
            return Result(answer["code"], base64.b64decode(answer["stdout"]), base64.b64decode(answer["stderr"]))
        hung = answer is None
        code = self._stop()
        crashed = b"".join(p.read_bytes() for p in (self.log_dir / "case-stderr", self.log) if p.exists())
        return Result(None if hung else code, b"", crashed)

    def close(self) -> None:
        self._stop()


CASE_DIR = Path(tempfile.gettempdir())

if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
