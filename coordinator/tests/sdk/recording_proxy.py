"""A recording HTTP/1.1 reverse proxy between the SDK and `lathe serve`.

It lets the suite assert what the *server* saw (protocol §9: "the server log shows ...") without
depending on how lathe logs: every request's method, path, selected headers, decoded
forward_backward fields and the upstream status are recorded. Two test hooks are built in:
`client_config_overrides` rewrites `/api/v1/client/config` replies (e.g. `fwdbwd_max_chunk_len: 1`
to force chunking), and `fail_next` answers one matching request with a 500 *after* lathe has
handled it, so the SDK retries with the same `X-Idempotency-Key`.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
# The proxy must not hold a poll longer than lathe may (≤ 25 s) plus slack.
UPSTREAM_TIMEOUT_S = 60.0


@dataclass
class Entry:
    method: str
    path: str
    status: int
    test: str
    headers: dict[str, str]
    request_json: Optional[Any] = None
    response_json: Optional[Any] = None
    fwdbwd: Optional[dict[str, Any]] = None
    injected: bool = False


@dataclass
class Recorder:
    entries: list[Entry] = field(default_factory=list)
    current_test: str = ""
    client_config_overrides: dict[str, Any] = field(default_factory=dict)
    # (method, path) -> remaining count of injected 500s after the upstream call
    fail_after_upstream: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: Entry) -> None:
        with self.lock:
            self.entries.append(entry)

    def snapshot(self) -> list[Entry]:
        with self.lock:
            return list(self.entries)

    def fail_next(self, method: str, path: str, count: int = 1) -> None:
        with self.lock:
            self.fail_after_upstream[(method, path)] = count

    def take_failure(self, method: str, path: str) -> bool:
        with self.lock:
            left = self.fail_after_upstream.get((method, path), 0)
            if left <= 0:
                return False
            self.fail_after_upstream[(method, path)] = left - 1
            return True


def _decode_fwdbwd(body: bytes) -> Optional[dict[str, Any]]:
    try:
        from tinker.proto import tinker_public_pb2 as pb

        req = pb.ForwardBackwardRequest()
        req.ParseFromString(body)
    except Exception:  # noqa: BLE001 - a body we cannot decode is simply not annotated
        return None
    weights = []
    for d in req.data:
        t = d.loss_fn_inputs.get("weights")
        if t is not None and t.WhichOneof("encoding") == "dense" and t.dtype == pb.DTYPE_FLOAT32:
            import numpy as np

            weights.append(np.frombuffer(t.dense, dtype="<f4").tolist())
    return {
        "model_id": req.model_id,
        "seq_id": req.seq_id,
        "loss_fn": req.loss_fn,
        "forward_only": req.forward_only,
        "num_datums": len(req.data),
        "weights": weights,
    }


def make_handler(upstream_host: str, upstream_port: int, recorder: Recorder):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _proxy(self) -> None:
            body = self._read_body()
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
            headers["Host"] = f"{upstream_host}:{upstream_port}"
            if body or self.command in ("POST", "PUT"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(upstream_host, upstream_port, timeout=UPSTREAM_TIMEOUT_S)
            try:
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                status, reason = resp.status, resp.reason
                resp_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
                resp_body = resp.read()
            except (OSError, http.client.HTTPException) as e:
                status, reason, resp_headers = 502, "Bad Gateway", [("Content-Type", "application/json")]
                resp_body = json.dumps({"detail": f"recording proxy: upstream failed: {e}"}).encode()
            finally:
                conn.close()

            path = self.path.split("?", 1)[0]
            lower = {k.lower(): v for k, v in self.headers.items()}
            ctype = lower.get("content-type", "")
            entry = Entry(
                method=self.command,
                path=path,
                status=status,
                test=recorder.current_test,
                headers={k: lower[k] for k in ("x-idempotency-key", "x-tinker-request-type", "accept") if k in lower},
            )
            if "json" in ctype and body:
                try:
                    entry.request_json = json.loads(body)
                except ValueError:
                    pass
            if "protobuf" in ctype and path.endswith("/forward_backward") and not lower.get("content-encoding"):
                entry.fwdbwd = _decode_fwdbwd(body)
            resp_ctype = next((v for k, v in resp_headers if k.lower() == "content-type"), "")
            resp_enc = next((v for k, v in resp_headers if k.lower() == "content-encoding"), "")
            if "json" in resp_ctype and not resp_enc and resp_body:
                try:
                    entry.response_json = json.loads(resp_body)
                except ValueError:
                    pass
            if path == "/api/v1/client/config" and status == 200 and recorder.client_config_overrides:
                cfg = dict(entry.response_json or {})
                cfg.update(recorder.client_config_overrides)
                resp_body = json.dumps(cfg).encode()
                resp_headers = [(k, v) for k, v in resp_headers if k.lower() not in ("content-length", "content-encoding")]
            if recorder.take_failure(self.command, path):
                entry.injected = True
                status, reason = 500, "Injected By Test Proxy"
                resp_headers = [("Content-Type", "application/json")]
                resp_body = b'{"detail":"injected by the recording proxy after lathe handled the request"}'
            recorder.add(entry)

            self.send_response(status, reason)
            for k, v in resp_headers:
                if k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp_body)))
            self.end_headers()
            self.wfile.write(resp_body)

        do_GET = _proxy
        do_POST = _proxy
        do_PUT = _proxy
        do_DELETE = _proxy

    return Handler


class RecordingProxy:
    """Listens on 127.0.0.1:<free port> and forwards to `upstream_port`; stop() shuts it down."""

    def __init__(self, upstream_port: int) -> None:
        self.recorder = Recorder()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler("127.0.0.1", upstream_port, self.recorder))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="recording-proxy", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
