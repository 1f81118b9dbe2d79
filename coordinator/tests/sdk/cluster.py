"""Starts lathe as a cluster on this machine: a real etcd (Debian `etcd-server`) on loopback ports of its
own, one `lathe coordinator` and N `lathe worker` processes, each with its own log. Used by conftest.py
when LATHE_SDK_WORKERS=cluster:N, and by the membership tests. Every wait is bounded."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from recording_proxy import free_port


def etcd_binary() -> str | None:
    return shutil.which("etcd")


@dataclass
class Etcd:
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        _stop(self.process)


def start_etcd(root: Path, timeout_s: float = 20.0) -> Etcd:
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd is not installed: apt-get install etcd-server (CI installs it)")
    client, peer = free_port(), free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    data = root / f"etcd-{client}"
    log_path = root / f"etcd-{client}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "--name", "default", "--data-dir", str(data), "--listen-client-urls", url,
             "--advertise-client-urls", url, "--listen-peer-urls", peer_url,
             "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"default={peer_url}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return Etcd(url=url, process=proc, log_path=log_path)
        except OSError:
            pass
        time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"etcd did not become healthy in {timeout_s} s:\n{log_path.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
    except OSError:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _metrics_text(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def metric(url: str, name: str) -> float | None:
    """One sample of the coordinator's /metrics by its full name (labels included); None when unreadable."""
    text = _metrics_text(url)
    m = re.search(rf"^{re.escape(name)} (\S+)", text or "", re.M)
    return float(m.group(1)) if m else None


def live_workers(url: str) -> int | None:
    """`lathe_workers{state="live"}` from the coordinator's /metrics (None when it cannot be read)."""
    value = metric(url, 'lathe_workers{state="live"}')
    return None if value is None else int(value)


def wait_live(url: str, n: int, timeout_s: float = 120.0) -> float:
    """Waits until exactly `n` workers are live; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if live_workers(url) == n:
            return time.monotonic() - start
        time.sleep(0.05)
    raise RuntimeError(f"{url}: lathe_workers{{state=\"live\"}} did not reach {n} in {timeout_s} s "
                       f"(last {live_workers(url)})")


@dataclass
class Cluster:
    url: str
    etcd: Etcd
    coordinator: subprocess.Popen
    log_path: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    worker_logs: dict[str, Path] = field(default_factory=dict)
    binary: str = ""
    root: Path = Path(".")
    env: dict = field(default_factory=dict)

    def start_worker(self, name: str, extra: list[str] | None = None) -> subprocess.Popen:
        log_path = self.root / f"worker-{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [self.binary, "worker", "--coordinator", self.url.removeprefix("http://"), "--etcd", self.etcd.url,
                 "--name", name, *(extra or [])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            )
        self.workers[name] = proc
        self.worker_logs[name] = log_path
        return proc

    def stop(self) -> None:
        for proc in self.workers.values():
            _stop(proc)
        _stop(self.coordinator)
        self.etcd.stop()

    def logs(self, chars: int = 3000) -> str:
        parts = [f"--- coordinator\n{self.log_path.read_text(errors='replace')[-chars:]}"]
        for name, path in self.worker_logs.items():
            parts.append(f"--- worker {name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


def start_cluster(binary: str, root: Path, n_workers: int, extra_args: list[str], env: dict,
                  timeout_s: float = 300.0) -> Cluster:
    etcd = start_etcd(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / f"coordinator-{port}.log"
    with open(log_path, "wb") as log:
        coordinator = subprocess.Popen(
            [binary, "coordinator", "--listen", f"127.0.0.1:{port}", "--etcd", etcd.url,
             "--data-dir", str(root / "data"), *extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    cluster = Cluster(url=url, etcd=etcd, coordinator=coordinator, log_path=log_path, binary=binary, root=root,
                      env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while live_workers(url) is None:
            if coordinator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lathe coordinator did not come up:\n{cluster.logs()}")
            time.sleep(0.2)
        for i in range(n_workers):
            cluster.start_worker(f"w{i}")
        wait_live(url, n_workers, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster
