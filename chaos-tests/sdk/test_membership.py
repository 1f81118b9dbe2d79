"""Membership over real etcd: one `lathe coordinator`, `lathe worker` processes, leases with TTL 3 s.

- a worker started after the coordinator is adopted (lathe_workers goes up);
- a SIGKILLed worker is counted out of lathe_workers within 2 x the lease TTL, and
  lathe_worker_lease_expirations_total counts it;
- a SIGSTOPped worker's lease expires: the request it held fails with category `server` naming the
  worker, and once it resumes nothing it sends changes that result (its link is closed and it is no
  longer a member; a reconnecting worker would get a new generation).

Skipped (with the reason) when etcd is not installed, unless LATHE_REQUIRE_ETCD=1.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "coordinator" / "tests" / "sdk"))
from cluster import etcd_binary, live_workers, metric, start_cluster, wait_live  # noqa: E402

from chaos_helpers import _ORIGINAL_ENV, free_port, lathe_binary  # noqa: E402

LEASE_TTL_S = 3.0

if etcd_binary() is None:
    if os.environ.get("LATHE_REQUIRE_ETCD") == "1":
        raise RuntimeError("LATHE_REQUIRE_ETCD=1 but etcd is not installed (apt-get install etcd-server)")
    pytest.skip("etcd is not installed (apt-get install etcd-server)", allow_module_level=True)


@pytest.fixture
def cluster(tmp_path):
    env = dict(_ORIGINAL_ENV)
    c = start_cluster(str(lathe_binary()), tmp_path, 1, ["--model", "tiny/llama3"], env, timeout_s=120)
    yield c
    print(c.logs(1500))
    c.stop()


def test_a_late_worker_is_adopted_and_a_killed_one_is_counted_out_within_two_ttls(cluster):
    port = free_port()
    cluster.start_worker("late", ["--metrics-listen", f"127.0.0.1:{port}"])
    took = wait_live(cluster.url, 2, 60)
    print(f"late worker adopted {took:.2f} s after start")
    # The worker's own metrics: serving, under the generation it was welcomed with.
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline and "lathe_worker_serving 1" not in text:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            time.sleep(0.1)
    assert "lathe_worker_serving 1" in text, text
    generation = re.search(r"^lathe_worker_generation (\d+)", text, re.M)
    assert generation and int(generation.group(1)) > 0, text
    before = metric(cluster.url, "lathe_worker_lease_expirations_total")
    victim = cluster.workers["late"]
    victim.send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    victim.wait(timeout=10)
    seen = wait_live(cluster.url, 1, 4 * LEASE_TTL_S)
    print(f"SIGKILLed worker counted out after {seen:.2f} s (lease TTL {LEASE_TTL_S} s)")
    assert time.monotonic() - t0 <= 2 * LEASE_TTL_S + 0.5
    # A killed process's socket is closed by the kernel at once, so the closed connection counts it out
    # before its lease lapses (about a TTL later), and that later expiry is not counted a second time.
    time.sleep(LEASE_TTL_S + 1.0)
    assert live_workers(cluster.url) == 1
    assert metric(cluster.url, "lathe_worker_lease_expirations_total") == before


def test_a_stopped_workers_lease_expires_its_request_fails_naming_it_and_its_late_reply_changes_nothing(
        cluster, sdk_env, monkeypatch):
    import tinker
    from tinker import types

    monkeypatch.setenv("TINKER_BASE_URL", cluster.url)
    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model="tiny/llama3", rank=4)
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
                        loss_fn_inputs={"target_tokens": [2, 3, 4, 5], "weights": [1.0, 1.0, 1.0, 1.0]})
    tc.forward_backward([datum], "cross_entropy").result()
    before = metric(cluster.url, "lathe_worker_lease_expirations_total") or 0
    w0 = cluster.workers["w0"]
    w0.send_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        future = tc.forward_backward([datum], "cross_entropy")
        seen = wait_live(cluster.url, 0, 4 * LEASE_TTL_S)
        print(f"SIGSTOPped worker counted out after {seen:.2f} s")
        assert time.monotonic() - t0 <= 2 * LEASE_TTL_S + 1.0
        assert (metric(cluster.url, "lathe_worker_lease_expirations_total") or 0) == before + 1, \
            "a stopped worker keeps its socket open, so only its lease can count it out"
        with pytest.raises(Exception) as failed:
            future.result(timeout=30)
        assert "w0" in str(failed.value) and "lost" in str(failed.value), str(failed.value)
    finally:
        w0.send_signal(signal.SIGCONT)
    # Resumed, it finds its lease gone or its link closed and exits; it never rejoins as the old member.
    w0.wait(timeout=30)
    assert w0.returncode != 0
    assert live_workers(cluster.url) == 0
    log = cluster.worker_logs["w0"].read_text(errors="replace")
    assert "lease" in log or "connection" in log or "coordinator" in log, log[-2000:]
