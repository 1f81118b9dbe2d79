"""Protocol §9's pass criterion, checked on everything the recording proxy saw during the suite:
the SDK called only endpoints of the §2.1 inventory, and nothing answered 4xx/5xx except the
deliberate failures (step 12's bad request, faults the proxy injected) and the optional
`client/dynamic_config` 404. Runs last (file name) so it sees the whole suite's traffic.
"""

from __future__ import annotations

import re

INVENTORY = [
    ("POST", r"/api/v1/client/config"),
    ("POST", r"/api/v1/client/dynamic_config"),
    ("POST", r"/api/v1/create_session"),
    ("POST", r"/api/v1/session_heartbeat"),
    ("POST", r"/api/v1/sessions/[^/]+/finish"),
    ("POST", r"/api/v1/telemetry"),
    ("GET", r"/api/v1/healthz"),
    ("GET", r"/api/v1/get_server_capabilities"),
    ("POST", r"/api/v1/create_model"),
    ("POST", r"/api/v1/get_info"),
    ("POST", r"/api/v1/forward_backward"),
    ("POST", r"/api/v1/optim_step"),
    ("POST", r"/api/v1/retrieve_future"),
    ("POST", r"/api/v1/save_weights"),
    ("POST", r"/api/v1/load_weights"),
    ("POST", r"/api/v1/save_weights_for_sampler"),
    ("POST", r"/api/v1/create_sampling_session"),
    ("GET", r"/api/v1/samplers/[^/]+"),
    ("POST", r"/api/v1/asample"),
    ("GET", r"/api/v1/training_runs"),
    ("GET", r"/api/v1/training_runs/[^/]+"),
    ("GET", r"/api/v1/training_runs/[^/]+/checkpoints"),
    ("GET", r"/api/v1/checkpoints"),
    ("POST", r"/api/v1/save_weights_external"),
    ("GET", r"/api/v1/training_runs/[^/]+/checkpoints/external_weights/[^/]+/external_weights_urls"),
    ("PUT", r"/api/v1/training_runs/[^/]+/checkpoints/[a-z_]+/[^/]+/ttl"),
    ("DELETE", r"/api/v1/training_runs/[^/]+/checkpoints/[a-z_]+/[^/]+"),
    ("POST", r"/api/v1/weights_info"),
]
# Tests whose failures are the point (step 12's bad request is answered as a failed future, so
# it does not show as an HTTP error; listed in case lathe rejects it synchronously instead).
EXPECTED_ERRORS = {"test_step12_a_bad_request_fails_with_a_user_error"}


def _known(method: str, path: str) -> bool:
    return any(m == method and re.fullmatch(p, path) for m, p in INVENTORY)


def test_the_sdk_used_only_inventory_endpoints_and_saw_no_unexpected_errors(server):
    entries = server.recorder.snapshot()
    assert len(entries) > 50, "the suite should have sent many requests through the proxy"
    unknown = sorted({(e.method, e.path) for e in entries if not _known(e.method, e.path)})
    assert not unknown, unknown
    errors = [
        (e.test, e.method, e.path, e.status)
        for e in entries
        if e.status >= 400
        and not e.injected
        and e.test not in EXPECTED_ERRORS
        and not (e.path == "/api/v1/client/dynamic_config" and e.status == 404)
    ]
    assert not errors, errors
