"""Starts one real `lathe serve` for the whole suite and points the official SDK at it.

Builds nothing: the binary comes from `LATHE_BIN` (default `target/release/lathe`; ops/test.sh builds
it). The server listens on a free loopback port with a temporary `--data-dir`; a recording proxy
(recording_proxy.py) sits in front of it so tests can assert what the server received. The SDK's
environment is the one protocol §9 prescribes: TINKER_BASE_URL, TINKER_API_KEY=tml-..., HOME=<tmp>,
HF_HUB_OFFLINE=1, TINKER_TELEMETRY=0. The server keeps the caller's HOME so it finds the model cache.
Every wait is bounded; the server is terminated (then killed) at the end.

`LATHE_TORCH_SITE`, when set, names a site-packages directory with torch/peft (e.g. the golden-fixture
venv) appended to sys.path so the torch-only tests (DPO, PEFT export) can run; without it they skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

_extra_site = os.environ.get("LATHE_TORCH_SITE")
if _extra_site:
    sys.path.append(_extra_site)  # after the venv's own packages, so the pinned SDK stack wins

sys.path.insert(0, str(Path(__file__).parent))
from recording_proxy import RecordingProxy, free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
# The tiny model the suite trains; ops/test.sh runs the suite again (less the SmolLM2 files) on tiny/qwen3-moe.
TINY = os.environ.get("LATHE_SDK_TINY_MODEL", "tiny/llama3")
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
API_KEY = "tml-sdk-suite"
STARTUP_TIMEOUT_S = float(os.environ.get("LATHE_STARTUP_TIMEOUT_S", "300"))


@dataclass
class Server:
    url: str  # lathe itself
    proxy: RecordingProxy
    data_dir: Path
    log_path: Path
    process: subprocess.Popen

    @property
    def recorder(self):
        return self.proxy.recorder

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"lathe serve exited with {proc.returncode} before answering healthz; log:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        try:
            with urllib.request.urlopen(f"{url}/api/v1/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last_error = str(e)
        time.sleep(0.5)
    raise RuntimeError(
        f"lathe serve did not answer healthz within {STARTUP_TIMEOUT_S:.0f} s ({last_error}); log:\n"
        + log_path.read_text(errors="replace")[-4000:]
    )


def lathe_binary() -> Path:
    binary = Path(os.environ.get("LATHE_BIN", REPO / "target" / "release" / "lathe"))
    if not binary.is_file():
        pytest.exit(f"{binary} not found: build it with `cargo build --release -p coordinator` or set LATHE_BIN", 2)
    return binary


def start_lathe(root: Path, extra_args: list[str], port: int | None = None) -> tuple[subprocess.Popen, str, Path]:
    """Starts `lathe serve --listen 127.0.0.1:<port> --data-dir <root>/data <extra_args>` and waits for healthz.
    The server keeps the caller's original HOME (the model cache lives there)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = root / f"serve-{port}.log"
    env = dict(_ORIGINAL_ENV)
    env.setdefault("RUST_BACKTRACE", "1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(lathe_binary()), "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(root / "data"),
             *extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )
    try:
        _wait_healthy(url, proc, log_path)
    except BaseException:
        stop_lathe(proc)
        raise
    return proc, url, log_path


def stop_lathe(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


_ORIGINAL_ENV = dict(os.environ)


@pytest.fixture(scope="session", autouse=True)
def server(tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("lathe")
    home = root / "home"
    home.mkdir()
    # LATHE_SDK_WORKERS picks the topology: unset = `lathe serve`; serve:N = `lathe serve --workers N`;
    # cluster:N = real etcd + `lathe coordinator` + N `lathe worker` processes.
    topology = os.environ.get("LATHE_SDK_WORKERS", "")
    cluster = None
    if topology.startswith("cluster:"):
        from cluster import start_cluster

        env = dict(_ORIGINAL_ENV)
        env.setdefault("RUST_BACKTRACE", "1")
        cluster = start_cluster(str(lathe_binary()), root, int(topology.split(":", 1)[1]), [], env,
                                timeout_s=STARTUP_TIMEOUT_S)
        proc, url, log_path = cluster.coordinator, cluster.url, cluster.log_path
    elif topology.startswith("serve:"):
        proc, url, log_path = start_lathe(root, ["--workers", topology.split(":", 1)[1]])
    else:
        proc, url, log_path = start_lathe(root, [])
    proxy = None
    try:
        proxy = RecordingProxy(int(url.rsplit(":", 1)[1]))
        os.environ.update(
            {
                "TINKER_BASE_URL": proxy.url,
                "TINKER_API_KEY": API_KEY,
                "HOME": str(home),
                "HF_HUB_OFFLINE": "1",
                "TINKER_TELEMETRY": "0",
            }
        )
        yield Server(url=url, proxy=proxy, data_dir=root / "data", log_path=log_path, process=proc)
    finally:
        if proxy is not None:
            proxy.stop()
        if cluster is not None:
            logs = cluster.logs(1500)
            cluster.stop()
            print(f"\nlathe cluster logs (tails):\n{logs}")
        else:
            stop_lathe(proc)
            print(f"\nlathe serve log {log_path} (tail):\n{log_path.read_text(errors='replace')[-2000:]}")


@pytest.fixture(autouse=True)
def _tag_requests(server: Server, request):
    """Tags every proxied request with the test that was running when it arrived."""
    server.recorder.current_test = request.node.name
    yield
    server.recorder.current_test = ""


@pytest.fixture(scope="session")
def sc():
    import tinker

    return tinker.ServiceClient()


@pytest.fixture(scope="session")
def rest():
    import tinker

    return tinker.RestClient()
