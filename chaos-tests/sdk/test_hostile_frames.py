"""Hostile bytes on the control plane never crash either side (real processes, real etcd).

- Coordinator side: connections to its control port that send random bytes, a truncated frame, a frame
  claiming a 1 TiB body, a valid-looking prefix with a garbage header, or a Hello from another build:
  each is closed (or refused with a message naming both versions); the coordinator keeps answering and its
  real worker stays a member and keeps training.
- Worker side: a `lathe worker` whose "coordinator" answers its hello with garbage exits with an error line,
  not a panic.
The frame codec itself is fuzzed in runtime/src/transport/tests (10,000+ random and corrupted buffers).
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "coordinator" / "tests" / "sdk"))
from cluster import etcd_binary, live_workers, start_cluster, start_etcd  # noqa: E402

from chaos_helpers import _ORIGINAL_ENV, free_port, lathe_binary  # noqa: E402

if etcd_binary() is None:
    if os.environ.get("LATHE_REQUIRE_ETCD") == "1":
        raise RuntimeError("LATHE_REQUIRE_ETCD=1 but etcd is not installed (apt-get install etcd-server)")
    pytest.skip("etcd is not installed (apt-get install etcd-server)", allow_module_level=True)

MAGIC = b"LTH1"


def prefix(header_len: int, body_len: int, generation: int = 0, call: int = 0) -> bytes:
    return MAGIC + struct.pack("<IQQQ", header_len, body_len, generation, call)


def control_address(url: str) -> tuple[str, int]:
    with urllib.request.urlopen(f"{url}/lathe/v1/control", timeout=5) as r:
        host, port = json.load(r)["control"].rsplit(":", 1)
    return host, int(port)


def send_and_close(addr: tuple[str, int], payload: bytes, read_s: float = 1.0) -> bytes:
    with socket.create_connection(addr, timeout=5) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return b""
        s.settimeout(read_s)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except OSError:
            pass
        return got


def test_garbage_on_the_control_port_is_closed_and_the_cluster_keeps_working(tmp_path, sdk_env, monkeypatch):
    cluster = start_cluster(str(lathe_binary()), tmp_path, 1, ["--model", "tiny/llama3"], dict(_ORIGINAL_ENV),
                            timeout_s=120)
    try:
        addr = control_address(cluster.url)
        rng = random.Random(20261204)
        payloads = [rng.randbytes(rng.randint(1, 4096)) for _ in range(40)]
        payloads += [
            MAGIC,                                           # truncated prefix
            prefix(10, 0) + b"\x01\x02",                     # truncated header
            prefix(0, 1 << 40),                              # a 1 TiB body
            prefix(0xFFFFFFFF, 0),                           # a 4 GiB header
            prefix(8, 0) + rng.randbytes(8),                 # a header that does not decode as Hello
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",            # the wrong protocol
        ]
        for p in payloads:
            send_and_close(addr, p, read_s=0.3)
        # A connection that opens and says nothing is fine too (it is closed when it goes away).
        socket.create_connection(addr, timeout=5).close()
        with urllib.request.urlopen(f"{cluster.url}/api/v1/healthz", timeout=5) as r:
            assert r.status == 200
        assert cluster.coordinator.poll() is None, cluster.logs()
        assert live_workers(cluster.url) == 1, cluster.logs()

        import tinker
        from tinker import types

        monkeypatch.setenv("TINKER_BASE_URL", cluster.url)
        tc = tinker.ServiceClient().create_lora_training_client(base_model="tiny/llama3", rank=4)
        datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]),
                            loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]})
        assert tc.forward_backward([datum], "cross_entropy").result().metrics["loss:sum"] > 0
        log = cluster.log_path.read_text(errors="replace")
        assert "panicked" not in log, log[-3000:]
    finally:
        cluster.stop()


class _FakeCoordinator(BaseHTTPRequestHandler):
    control = ""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"control": self.control}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_worker_answered_with_garbage_exits_with_an_error_not_a_panic(tmp_path):
    etcd = start_etcd(tmp_path)
    control = socket.socket()
    control.bind(("127.0.0.1", 0))
    control.listen(4)
    _FakeCoordinator.control = f"127.0.0.1:{control.getsockname()[1]}"
    http = HTTPServer(("127.0.0.1", free_port()), _FakeCoordinator)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    def answer_with_garbage():
        conn, _ = control.accept()
        conn.recv(65536)  # its Hello
        conn.sendall(prefix(16, 0) + os.urandom(16))  # a "reply" that is no HelloReply
        time.sleep(0.5)
        conn.close()

    threading.Thread(target=answer_with_garbage, daemon=True).start()
    try:
        out = subprocess.run(
            [str(lathe_binary()), "worker", "--coordinator", f"127.0.0.1:{http.server_port}", "--etcd", etcd.url,
             "--name", "victim"],
            capture_output=True, text=True, timeout=60, env=dict(_ORIGINAL_ENV),
        )
        text = out.stdout + out.stderr
        assert out.returncode == 1, text
        assert "error:" in text and "handshake" in text, text
        assert "panicked" not in text, text
    finally:
        http.shutdown()
        control.close()
        etcd.stop()
