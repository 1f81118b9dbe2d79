"""Runs coordinator/tests/sdk/recording_proxy.py standalone in front of a `lathe serve`, logging every
request to a JSONL file as it completes and, on SIGTERM/SIGINT, writing a summary: request types
with their fields, forward_backward datum fields (decoded from the protobuf body), and every error
lathe answered (HTTP >= 400, or a retrieve_future result with "error"), first one first.

Usage: python record_proxy.py UPSTREAM_PORT PORT_FILE LOG_JSONL SUMMARY_JSON
(PORT_FILE receives the proxy's port once it listens.)
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "coordinator" / "tests" / "sdk"))
import recording_proxy  # noqa: E402


def _fields(msg) -> list[str]:
    return [f.name for f, _ in msg.ListFields()]


def decode_fwdbwd(body: bytes) -> dict[str, Any] | None:
    """A fuller decoder than recording_proxy's: which fields each datum carries. Never raises (a
    decoding failure must not break the proxied request)."""
    body = getattr(_as_sent, "body", None) or body  # the body as the client sent it
    try:
        return _decode_fwdbwd(body)
    except Exception as e:  # noqa: BLE001
        return {"undecodable": f"{type(e).__name__}: {e}"}


def _decode_fwdbwd(body: bytes) -> dict[str, Any]:
    from tinker.proto import tinker_public_pb2 as pb

    req = pb.ForwardBackwardRequest()
    req.ParseFromString(body)
    datum_fields: collections.Counter = collections.Counter()
    input_keys: collections.Counter = collections.Counter()
    chunk_kinds: collections.Counter = collections.Counter()
    tokens = 0
    example_spans: dict[str, str] = {}
    for d in req.data:
        for name in _fields(d):
            datum_fields[name] += 1
            if name.endswith("_spans") and name not in example_spans:
                example_spans[name] = " | ".join(str(x).replace("\n", " ") for x in getattr(d, name))[:400]
        for k in d.loss_fn_inputs:
            input_keys[k] += 1
        for c in d.model_input:  # repeated Chunk
            names = _fields(c)
            chunk_kinds[names[0] if names else "?"] += 1
            if "encoded_text" in names:
                t = c.encoded_text.tokens
                tokens += len(t) // 4 if isinstance(t, bytes) else len(t)  # packed little-endian int32
    top = {f.name: v for f, v in req.ListFields() if f.name != "data"}
    return {
        "top_fields": sorted(top),
        "model_id": req.model_id,
        "seq_id": req.seq_id,
        "loss_fn": str(top.get("loss_fn")),
        "loss_fn_config": {k: str(v) for k, v in top.items() if k.startswith("loss_fn_config")},
        "forward_only": req.forward_only,
        "num_datums": len(req.data),
        "tokens": tokens,
        "datum_fields": dict(datum_fields),
        "loss_fn_input_keys": dict(input_keys),
        "chunk_kinds": dict(chunk_kinds),
        "example_spans": example_spans,
    }


recording_proxy._decode_fwdbwd = decode_fwdbwd

# Diagnostic only (LATHE_COOKBOOK_STRIP_SPANS=1): drop the provenance spans from forward_backward
# datums on their way to lathe, to see what fails after lathe's refusal of them. The recorded
# entry still describes the body as sent (spans included).
_as_sent = threading.local()
STRIP_SPANS = os.environ.get("LATHE_COOKBOOK_STRIP_SPANS") == "1"
stripped = {"requests": 0}


def strip_spans(body: bytes) -> bytes:
    from tinker.proto import tinker_public_pb2 as pb

    req = pb.ForwardBackwardRequest()
    req.ParseFromString(body)
    for d in req.data:
        d.ClearField("model_input_spans")
        d.ClearField("loss_fn_input_spans")
    stripped["requests"] += 1
    return req.SerializeToString()


_orig_make_handler = recording_proxy.make_handler


def _make_handler(upstream_host, upstream_port, recorder):
    base = _orig_make_handler(upstream_host, upstream_port, recorder)

    class Handler(base):
        def _read_body(self) -> bytes:
            body = super()._read_body()
            _as_sent.body = body
            if STRIP_SPANS and self.path.split("?", 1)[0].endswith("/forward_backward") \
                    and not self.headers.get("Content-Encoding"):
                try:
                    new = strip_spans(body)
                except Exception:  # noqa: BLE001 - forward it as it came
                    return body
                # The proxy copies the client's headers and then sets "Content-Length"; a client that
                # sends "content-length" in lower case (pyqwest does) would otherwise reach lathe with
                # two different lengths, which hyper refuses with a bare 400.
                del self.headers["Content-Length"]
                self.headers["Content-Length"] = str(len(new))
                return new
            return body

    return Handler


recording_proxy.make_handler = _make_handler


def _shape(v: Any, depth: int = 0) -> Any:
    """The keys of a JSON value, recursively (lists: the shape of their first element)."""
    if isinstance(v, dict):
        return {k: _shape(x, depth + 1) for k, x in v.items()} if depth < 3 else "{...}"
    if isinstance(v, list):
        return [_shape(v[0], depth + 1)] if v else []
    return type(v).__name__


def summarize(entries: list[dict[str, Any]]) -> dict[str, Any]:
    by_type: dict[str, dict[str, Any]] = {}
    submitted: dict[str, int] = {}  # request_id -> index of the submission
    errors = []
    for i, e in enumerate(entries):
        key = f"{e['method']} {e['path']}"
        t = by_type.setdefault(key, {"count": 0, "statuses": collections.Counter(), "request_fields": {}})
        t["count"] += 1
        t["statuses"][str(e["status"])] += 1
        if isinstance(e.get("request_json"), dict):
            for k, v in e["request_json"].items():
                t["request_fields"].setdefault(k, _shape(v))
        if e.get("fwdbwd"):
            fb = t.setdefault("forward_backward", {"datum_fields": collections.Counter(), "loss_fns": collections.Counter(),
                                                   "loss_fn_input_keys": collections.Counter(), "max_datums": 0,
                                                   "top_fields": set(), "example_spans": {}})
            f = e["fwdbwd"]
            fb["datum_fields"].update(f.get("datum_fields", {}))
            fb["loss_fn_input_keys"].update(f.get("loss_fn_input_keys", {}))
            fb["loss_fns"][str(f.get("loss_fn"))] += 1
            fb["max_datums"] = max(fb["max_datums"], f.get("num_datums", 0))
            fb["top_fields"].update(f.get("top_fields", []))
            for k, v in f.get("example_spans", {}).items():
                fb["example_spans"].setdefault(k, v)
        resp = e.get("response_json")
        if isinstance(resp, dict) and "request_id" in resp and e["path"] != "/api/v1/retrieve_future":
            submitted[resp["request_id"]] = i
        failed = e["status"] >= 400 or (isinstance(resp, dict) and "error" in resp)
        if failed:
            source = e
            origin = None
            if e["path"] == "/api/v1/retrieve_future" and isinstance(e.get("request_json"), dict):
                j = submitted.get(e["request_json"].get("request_id", ""))
                if j is not None:
                    source = entries[j]
                    origin = f"{source['method']} {source['path']} #{j}"
            errors.append({"index": i, "request": key, "status": e["status"], "response": resp,
                           "submitted_by": origin,
                           "request_summary": source.get("fwdbwd") or _shape(source.get("request_json"))})
    for t in by_type.values():
        t["statuses"] = dict(t["statuses"])
        if "forward_backward" in t:
            fb = t["forward_backward"]
            for k in ("datum_fields", "loss_fns", "loss_fn_input_keys"):
                fb[k] = dict(fb[k])
            fb["top_fields"] = sorted(fb["top_fields"])
    return {"requests": len(entries), "strip_spans": STRIP_SPANS, "by_type": by_type, "errors": errors,
            "first_error": errors[0] if errors else None}


def main() -> None:
    upstream_port, port_file, log_path, summary_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    proxy = recording_proxy.RecordingProxy(upstream_port)
    entries: list[dict[str, Any]] = []
    lock = threading.Lock()
    log = open(log_path, "w")
    orig_add = proxy.recorder.add

    def add(entry) -> None:
        orig_add(entry)
        d = asdict(entry)
        d["t"] = time.time()
        with lock:
            entries.append(d)
            log.write(json.dumps(d, default=str) + "\n")
            log.flush()

    proxy.recorder.add = add
    Path(port_file).write_text(str(proxy.port))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    proxy.stop()
    with lock:
        Path(summary_path).write_text(json.dumps(summarize(entries), indent=2, default=str))
    log.close()


if __name__ == "__main__":
    main()
