"""Submit latency of forward_backward under concurrent clients: the time from POSTing a request to
the reply carrying its request id, which now includes making the request durable (journal row +
payload file + fsync, shared across clients by group commit). Run it against one or more `lathe`
binaries and data directories side by side (e.g. the store on tmpfs and on disk, or an older build):

    python ops/bench/submit_latency.py --bin target/release/lathe --data /dev/shm/lathe-b --data /tmp/lathe-b
    python ops/bench/submit_latency.py --bin old/lathe --bin target/release/lathe --data /tmp/lathe-b

Prints one JSON line per (binary, data dir): p50/p99/max in ms, submits, clients. Requires the
`tinker` SDK (the request bytes are made by the SDK's own encoder)."""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import tinker
from tinker import types
from tinker.resources.training import AsyncTrainingResource


class _Capture:
    """Stands in for AsyncTinker: records the bytes AsyncTrainingResource would POST."""

    def __init__(self) -> None:
        self._client_config = SimpleNamespace(proto_compress_fwdbwd=False)
        self.posts: list[bytes] = []
        self.get = self.patch = self.put = self.delete = self.get_api_list = None

    async def post(self, path, *, body, options, cast_to):
        self.posts.append(body)


def fb_body(model_id: str, seq_id: int, data: list[types.Datum]) -> bytes:
    client = _Capture()
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn="cross_entropy"),
        model_id=model_id,
        seq_id=seq_id,
    )
    asyncio.run(AsyncTrainingResource(client).forward_backward(request=request, forward_only=False))
    return client.posts[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(binary: str, data_dir: str, clients: int, submits: int) -> dict:
    shutil.rmtree(data_dir, ignore_errors=True)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir, "--model", "tiny/llama3"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        tokens = list(range(1, 33))
        datum = types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
        )
        models = []
        for i in range(clients):
            sc = tinker.ServiceClient(base_url=url, api_key="tml-bench")
            models.append(sc.create_lora_training_client(base_model="tiny/llama3", rank=8, seed=i).result().model_id)
        bodies = [[fb_body(m, seq, [datum]) for seq in range(1, submits + 1)] for m in models]
        latencies: list[float] = []
        lock = threading.Lock()
        start = threading.Barrier(clients)

        def client(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine = []
            start.wait()
            for body in bodies[i]:
                t0 = time.perf_counter()
                conn.request("POST", "/api/v1/forward_backward", body=body,
                             headers={"Content-Type": "application/x-protobuf", "X-API-Key": "tml-bench"})
                r = conn.getresponse()
                reply = r.read()
                mine.append(time.perf_counter() - t0)
                assert r.status == 200 and b"request_id" in reply, (r.status, reply[:200])
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ms = sorted(x * 1000 for x in latencies)
        return {
            "binary": binary, "data_dir": data_dir, "clients": clients, "submits": len(ms),
            "p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3),
            "max_ms": round(ms[-1], 3),
        }
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", action="append", required=True, help="a lathe binary (repeatable)")
    p.add_argument("--data", action="append", required=True, help="a data directory to use (repeatable; wiped)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--submits", type=int, default=50, help="forward_backward submits per client")
    p.add_argument("--repeat", type=int, default=1, help="rounds over every (binary, data dir) pair")
    a = p.parse_args()
    for _ in range(a.repeat):
        for binary in a.bin:
            for data in a.data:
                print(json.dumps(run_one(str(Path(binary).resolve()), data, a.clients, a.submits)), flush=True)


if __name__ == "__main__":
    main()
