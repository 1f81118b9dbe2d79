"""Helpers of the process-level chaos tests of `lathe serve`, black-box through the official tinker 0.38.0 SDK.

Unlike coordinator/tests/sdk (one server for the whole suite), every test here owns its servers:
`LatheServer` starts `lathe serve` on a fixed loopback port and `--data-dir`, can SIGKILL it and
start it again on the same port and data dir, and a `Watchdog` thread restarts it whenever it dies.
The SDK talks to lathe directly (no proxy), so a kill looks to the client exactly like a crash:
refused or reset connections, then a server that answers again.

`RetryCounter` wraps the SDK's three retry points (the Stainless inner loop, the holder's outer
`execute_with_retries`, and the `retrieve_future` poll loop) to count the retries a run needed.

Environment:
  LATHE_BIN              the binary (default target/release/lathe)
  LATHE_CHAOS_TESTS=0    skip every test here
  LATHE_CHAOS_SEED       the seed of the kill schedule (default 20261204)
  LATHE_STARTUP_TIMEOUT_S  bound on one start-up (default 120)
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
CHAOS_ENABLED = os.environ.get("LATHE_CHAOS_TESTS", "1") != "0"
STARTUP_TIMEOUT_S = float(os.environ.get("LATHE_STARTUP_TIMEOUT_S", "120"))
API_KEY = "tml-chaos"
_ORIGINAL_ENV = dict(os.environ)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lathe_binary() -> Path:
    binary = Path(os.environ.get("LATHE_BIN", REPO / "target" / "release" / "lathe"))
    if not binary.is_file():
        pytest.fail(f"{binary} not found: build it with `cargo build --release -p coordinator` or set LATHE_BIN")
    return binary


class LatheServer:
    """One `lathe serve` identity: a port and a data dir that survive any number of (re)starts."""

    def __init__(self, root: Path, models: tuple[str, ...] = ("tiny/qwen3",), extra_args: tuple[str, ...] = ()):
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [a for m in models for a in ("--model", m)] + list(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.generation = 0
        self.logs: list[Path] = []
        self.lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------
    def spawn(self) -> subprocess.Popen:
        with self.lock:
            self.generation += 1
            log_path = self.root / f"serve-{self.generation}.log"
            self.logs.append(log_path)
            env = dict(_ORIGINAL_ENV)
            env.setdefault("RUST_BACKTRACE", "1")
            with open(log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [str(lathe_binary()), "serve", "--listen", f"127.0.0.1:{self.port}",
                     "--data-dir", str(self.data_dir), *self.args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                )
            return self.proc

    def start(self) -> float:
        """Spawns and waits for healthz; returns the seconds that took. A start that fails because the
        port is still held (it should not be: lathe binds with SO_REUSEADDR) is retried a few times."""
        t0 = time.monotonic()
        for attempt in range(5):
            proc = self.spawn()
            try:
                self.wait_healthy(proc)
                return time.monotonic() - t0
            except RuntimeError:
                if proc.poll() is not None and "in use" in self.log_tail(2000).lower() and attempt < 4:
                    time.sleep(0.2)
                    continue
                raise
        raise AssertionError("unreachable")

    def wait_healthy(self, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"lathe serve exited with {proc.returncode} before healthz; log:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(0.02)
        raise RuntimeError(f"lathe serve gave no healthz within {STARTUP_TIMEOUT_S:.0f} s ({last}); log:\n{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def sigkill(self) -> None:
        with self.lock:
            proc = self.proc
        assert proc is not None and proc.poll() is None, "sigkill of a server that is not running"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def alive(self) -> bool:
        with self.lock:
            return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        with self.lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        if not self.logs:
            return "<no log>"
        try:
            return self.logs[-1].read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def all_logs(self, chars_each: int = 1500) -> str:
        out = []
        for p in self.logs:
            try:
                out.append(f"--- {p.name} ---\n" + p.read_text(errors="replace")[-chars_each:])
            except OSError:
                pass
        return "\n".join(out)


@dataclass
class Restart:
    killed_at: float  # time.monotonic() of the SIGKILL (set by whoever killed)
    delay_s: float = 0.0  # how long the watchdog waited before starting the new process
    dead_seen_at: float = 0.0
    healthy_at: float = 0.0
    error: str = ""


class Watchdog(threading.Thread):
    """Restarts `server` (same port, same data dir) whenever its process is found dead. `kill()` is the
    way the chaos side kills: it stamps the kill time so recovery can be measured from it."""

    def __init__(self, server: LatheServer, poll_s: float = 0.01, delays_s: tuple[float, ...] = ()):
        """`delays_s`: the wait before each restart in turn (a supervisor's back-off); 0 after them."""
        super().__init__(name="lathe-watchdog", daemon=True)
        self.server = server
        self.delays_s = list(delays_s)
        self.poll_s = poll_s
        self.restarts: list[Restart] = []
        self._halt = threading.Event()
        self._pending: collections.deque[Restart] = collections.deque()
        self.lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    def kill(self) -> Restart:
        r = Restart(killed_at=time.monotonic())
        with self.lock:
            self.idle.clear()
            self._pending.append(r)
        self.server.sigkill()
        return r

    def run(self) -> None:
        while not self._halt.is_set():
            if self.server.alive():
                time.sleep(self.poll_s)
                continue
            with self.lock:
                r = self._pending.popleft() if self._pending else Restart(killed_at=time.monotonic())
            r.dead_seen_at = time.monotonic()
            r.delay_s = self.delays_s.pop(0) if self.delays_s else 0.0
            time.sleep(r.delay_s)
            try:
                self.server.start()
                r.healthy_at = time.monotonic()
            except Exception as e:  # noqa: BLE001 - reported by the test
                r.error = f"{type(e).__name__}: {e}"
                self.restarts.append(r)
                self.idle.set()
                return
            self.restarts.append(r)
            self.idle.set()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=STARTUP_TIMEOUT_S + 10)


# -- counting the SDK's retries -------------------------------------------------------------------


@dataclass
class RetryCounter:
    """Counts, by cause, every retry the SDK took. `inner`: the Stainless loop in _base_client
    (submissions; 10 retries, 0.5 s doubling to 10 s); `outer`: InternalClientHolder.execute_with_retries
    (whole submission again, up to 300 s); `poll`: retrieve_future transport errors in _APIFuture;
    `try_again`: try_again answers to retrieve_future (not errors)."""

    inner: collections.Counter = field(default_factory=collections.Counter)
    outer: collections.Counter = field(default_factory=collections.Counter)
    poll: collections.Counter = field(default_factory=collections.Counter)
    try_again: int = 0
    # The first message seen for each outer / poll key (what the server said).
    examples: dict[str, str] = field(default_factory=dict)
    futures: list[tuple[str, str]] = field(default_factory=list)  # (request_type, request_id)
    poll_started: list[tuple[str, str, int]] = field(default_factory=list)  # (type, id, iteration)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_poll: Optional[Callable[[str, str, int], None]] = None

    def total(self) -> int:
        """Retries taken: every inner retry, outer attempts judged retryable, poll errors not fatal."""
        return (
            sum(self.inner.values())
            + sum(n for k, n in self.outer.items() if k.endswith("retry=True"))
            + sum(n for k, n in self.poll.items() if " fatal " not in k and " retryable_exception " not in k)
        )

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "total_retries": self.total(),
                "inner_stainless": dict(self.inner),
                "outer_execute_with_retries": dict(self.outer),
                "retrieve_future_transport_errors": dict(self.poll),
                "try_again_answers": self.try_again,
                "messages": dict(self.examples),
            }


def install_retry_counter(monkeypatch) -> RetryCounter:
    """Wraps the SDK's retry points (undone by `monkeypatch` at the end of the test)."""
    from tinker import _base_client
    from tinker.lib import api_future_impl
    from tinker.lib.internal_client_holder import InternalClientHolder

    c = RetryCounter()

    orig_sleep = _base_client.AsyncAPIClient._sleep_for_retry

    async def sleep_for_retry(self, *, retries_taken, max_retries, options, response):
        cause = f"http {response.status_code}" if response is not None else "connection/timeout"
        with c.lock:
            c.inner[f"{options.url} {cause}"] += 1
        return await orig_sleep(self, retries_taken=retries_taken, max_retries=max_retries, options=options,
                                response=response)

    monkeypatch.setattr(_base_client.AsyncAPIClient, "_sleep_for_retry", sleep_for_retry)

    orig_retryable = InternalClientHolder._is_retryable_exception

    def is_retryable(e):
        ok = orig_retryable(e)
        status = getattr(e, "status_code", None)
        key = f"{type(e).__name__}{'' if status is None else ' ' + str(status)} retry={ok}"
        with c.lock:
            c.outer[key] += 1
            c.examples.setdefault(f"outer {key}", str(e)[:400])
        return ok

    monkeypatch.setattr(InternalClientHolder, "_is_retryable_exception", staticmethod(is_retryable))

    APIFuture = api_future_impl._APIFuture
    orig_handle = APIFuture._handle_transport_error

    async def handle_transport_error(self, err, state, iteration, start_time):
        key = f"{self.request_type} {err.kind.value} status={err.status_code}"
        with c.lock:
            c.poll[key] += 1
            c.examples.setdefault(f"poll {key}", str(err.detail)[:400])
        return await orig_handle(self, err, state, iteration, start_time)

    monkeypatch.setattr(APIFuture, "_handle_transport_error", handle_transport_error)

    orig_fetch = APIFuture._fetch_via_rest

    async def fetch_via_rest(self, state, iteration):
        with c.lock:
            c.poll_started.append((self.request_type, self.request_id, iteration))
        if c.on_poll is not None:
            c.on_poll(self.request_type, self.request_id, iteration)
        out = await orig_fetch(self, state, iteration)
        if isinstance(out, api_future_impl._TryAgain):
            with c.lock:
                c.try_again += 1
        return out

    monkeypatch.setattr(APIFuture, "_fetch_via_rest", fetch_via_rest)

    orig_init = APIFuture.__init__

    def init(self, model_cls, holder, untyped_future, *a, **kw):
        with c.lock:
            c.futures.append((kw.get("request_type", "?"), untyped_future.request_id))
        orig_init(self, model_cls, holder, untyped_future, *a, **kw)

    monkeypatch.setattr(APIFuture, "__init__", init)
    return c
