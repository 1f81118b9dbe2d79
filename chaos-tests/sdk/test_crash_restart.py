"""Crash-restart chaos through the official SDK (reliability.md §6.1 R4, at process level).

1. `test_sft_loop_survives_three_sigkills`: a 40-step SFT loop on tiny/qwen3 (forward_backward with
   cross_entropy + optim_step each step, fixed data, LoRA rank 8, fixed seed) while a chaos thread
   SIGKILLs `lathe serve` 3 times at seeded random points inside chosen steps and a watchdog thread
   restarts it on the same port and --data-dir. The client loop must see no exception, every step's
   loss and the final adapter's logprobs on a fixed probe must equal a fault-free twin run's (fresh
   data dir, same test) bit for bit.
2. `test_a_pending_forward_backward_future_survives_a_sigkill`: kill -9 while a forward_backward
   future's long poll is outstanding, restart; the SDK's own future resolves, the same request id is
   retrievable over plain HTTP afterwards, and both equal the fault-free result bit for bit.

Both print their figures (restarts, SDK retries by cause, recovery times) and write them as JSON
next to the server logs. LATHE_CHAOS_TESTS=0 skips them; LATHE_CHAOS_SEED picks the kill schedule.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pytest
import tinker
from tinker import types

from chaos_helpers import API_KEY, LatheServer, RetryCounter, Watchdog

MODEL = "tiny/qwen3"
RANK = 8
LORA_SEED = 7
STEPS = 40
# LATHE_CHAOS_KILLS=0 turns both tests into a harness self-check (same comparisons, no kill).
KILLS = int(os.environ.get("LATHE_CHAOS_KILLS", "3"))
LEARNING_RATE = 1e-2
SEED = int(os.environ.get("LATHE_CHAOS_SEED", "20261204"))
# One step may take at most this long, restarts included; the SDK's own retry window is 300 s.
STEP_TIMEOUT_S = float(os.environ.get("LATHE_CHAOS_STEP_TIMEOUT_S", "90"))
STARTUP_TIMEOUT = 120.0
RESTART_DELAY_MAX_S = float(os.environ.get("LATHE_CHAOS_RESTART_DELAY_MAX_S", "1.5"))


# -- fixed data -------------------------------------------------------------------------------------


def sft_datum(tokens: list[int], prompt_len: int) -> types.Datum:
    targets = tokens[1:]
    weights = [0.0 if i + 1 < prompt_len else 1.0 for i in range(len(targets))]
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": targets, "weights": weights},
    )


def fixed_batch(n: int, lo: int, hi: int, seed: int) -> list[types.Datum]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(lo, hi + 1))
        tokens = [1] + [int(t) for t in rng.integers(2, 512, size=length - 1)]
        out.append(sft_datum(tokens, prompt_len=max(1, length // 4)))
    return out


TRAIN_BATCH = fixed_batch(4, 12, 32, seed=1)
PROBE = fixed_batch(1, 48, 48, seed=2)[0]


def logprobs(out: types.ForwardBackwardOutput) -> list[np.ndarray]:
    return [o["logprobs"].to_numpy() for o in out.loss_fn_outputs]


def service_client(url: str) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=url, api_key=API_KEY)


def close_quietly(sc: tinker.ServiceClient) -> None:
    try:
        sc.close("success").result(timeout=10)
    except Exception:  # noqa: BLE001 - the result under test is already in hand
        pass


def report(tmp_path, name: str, figures: dict[str, Any]) -> None:
    text = json.dumps(figures, indent=2, default=str)
    (tmp_path / f"{name}.json").write_text(text)
    print(f"\n=== {name} ===\n{text}\n(written to {tmp_path / (name + '.json')})")


# -- the SFT loop ----------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the client loop has done, for the chaos thread and the figures."""

    started: int = -1  # index of the step whose requests are being submitted / awaited
    phase: str = "init"
    done_at: list[float] = field(default_factory=list)  # monotonic time each step completed
    step_s: list[float] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def set(self, step: int, phase: str) -> None:
        with self.cond:
            self.started, self.phase = step, phase
            self.cond.notify_all()

    def wait_started(self, step: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.started >= step or self.phase == "finished", timeout)


def sft_run(url: str, progress: Progress) -> dict[str, Any]:
    sc = service_client(url)
    try:
        tc = sc.create_lora_training_client(base_model=MODEL, rank=RANK, seed=LORA_SEED).result(timeout=STEP_TIMEOUT_S)
        losses: list[float] = []
        for step in range(STEPS):
            t0 = time.monotonic()
            progress.set(step, "submit forward_backward")
            fb = tc.forward_backward(TRAIN_BATCH, "cross_entropy")
            progress.set(step, "submit optim_step")
            opt = tc.optim_step(types.AdamParams(learning_rate=LEARNING_RATE))
            progress.set(step, "await forward_backward")
            losses.append(fb.result(timeout=STEP_TIMEOUT_S).metrics["loss:sum"])
            progress.set(step, "await optim_step")
            opt.result(timeout=STEP_TIMEOUT_S)
            now = time.monotonic()
            progress.done_at.append(now)
            progress.step_s.append(now - t0)
        progress.set(STEPS, "final forward")
        final = logprobs(tc.forward([PROBE], "cross_entropy").result(timeout=STEP_TIMEOUT_S))[0]
        progress.set(STEPS, "finished")
        return {"losses": losses, "final": final, "model_id": tc.model_id}
    finally:
        close_quietly(sc)


def kill_schedule(rng: random.Random) -> list[int]:
    """KILLS distinct steps in [3, STEPS-3), at least 4 apart, so each restart completes before the next kill."""
    if KILLS == 0:
        return []
    while True:
        steps = sorted(rng.sample(range(3, STEPS - 3), KILLS))
        if all(b - a >= 4 for a, b in zip(steps, steps[1:])):
            return steps


def test_sft_loop_survives_three_sigkills(tmp_path, sdk_env, servers, retries: RetryCounter):
    t_test = time.monotonic()
    # Fault-free twin first: its per-step time scales the kill delays.
    twin_server: LatheServer = servers("twin")
    twin_server.start()
    twin_progress = Progress()
    twin = sft_run(twin_server.url, twin_progress)
    twin_server.stop()
    twin_retries = retries.summary()
    twin_wall = time.monotonic() - t_test
    assert twin_retries["total_retries"] == 0, f"the fault-free run needed retries: {twin_retries}"

    rng = random.Random(SEED)
    steps = kill_schedule(rng)
    step_s = float(np.median(twin_progress.step_s))
    # A kill lands a random fraction into its step (mid-request, since a step is nothing but requests).
    delays = [rng.uniform(0.0, 1.0) * max(step_s, 0.01) for _ in steps]
    # The watchdog waits a little before each restart, so the SDK meets refused connections too.
    restart_delays = [round(rng.uniform(0.0, RESTART_DELAY_MAX_S), 3) for _ in steps]

    server: LatheServer = servers("chaos")
    server.start()
    retries_before = retries.summary()
    watchdog = Watchdog(server, delays_s=tuple(restart_delays))
    watchdog.start()
    progress = Progress()
    kills: list[dict[str, Any]] = []
    chaos_error: list[str] = []

    def chaos() -> None:
        try:
            for step, delay in zip(steps, delays):
                if not progress.wait_started(step, timeout=STEP_TIMEOUT_S * (STEPS + 2)):
                    chaos_error.append(f"step {step} never started")
                    return
                if progress.phase in ("finished",) or progress.started >= STEPS:
                    return
                time.sleep(delay)
                # The previous restart must be complete (the schedule spaces kills 4 steps apart).
                watchdog.idle.wait(timeout=STARTUP_TIMEOUT)
                phase = f"step {progress.started}: {progress.phase}"
                r = watchdog.kill()
                kills.append({"planned_step": step, "delay_s": round(delay, 4), "in_flight": phase, "restart": r})
        except Exception as e:  # noqa: BLE001
            chaos_error.append(f"{type(e).__name__}: {e}")

    chaos_thread = threading.Thread(target=chaos, name="chaos", daemon=True)
    chaos_thread.start()
    client_error: Optional[BaseException] = None
    result: dict[str, Any] = {}
    t_chaos = time.monotonic()
    try:
        result = sft_run(server.url, progress)
    except BaseException as e:  # noqa: BLE001 - reported below with the figures
        client_error = e
    failed_at = f"step {progress.started} ({progress.phase})"
    chaos_wall = time.monotonic() - t_chaos
    progress.set(STEPS, "finished")
    chaos_thread.join(timeout=30)
    watchdog.idle.wait(timeout=STARTUP_TIMEOUT)
    watchdog.stop()

    per_restart = []
    for k in kills:
        r = k["restart"]
        next_done = next((t for t in progress.done_at if t > r.killed_at), None)
        per_restart.append({
            "planned_step": k["planned_step"],
            "kill_delay_s": k["delay_s"],
            "restart_delay_s": r.delay_s,
            "in_flight_at_kill": k["in_flight"],
            "kill_to_healthz_s": round(r.healthy_at - r.killed_at, 3) if r.healthy_at else None,
            "spawn_to_healthz_s": round(r.healthy_at - r.dead_seen_at - r.delay_s, 3) if r.healthy_at else None,
            "kill_to_next_step_done_s": round(next_done - r.killed_at, 3) if next_done else None,
            "restart_error": r.error or None,
        })
    after = retries.summary()
    figures = {
        "seed": SEED,
        "kill_steps": steps,
        "restarts_done": sum(1 for r in watchdog.restarts if r.healthy_at),
        "restarts": per_restart,
        "client_retries": {k: v for k, v in after.items()},
        "client_retries_before_chaos": retries_before,
        "steps_completed": len(progress.done_at),
        "twin_wall_s": round(twin_wall, 2),
        "chaos_wall_s": round(chaos_wall, 2),
        "twin_median_step_s": round(step_s, 4),
        "client_error": None if client_error is None else f"{type(client_error).__name__}: {client_error}",
        "client_error_at": None if client_error is None else failed_at,
        "client_error_cause": None if client_error is None or client_error.__cause__ is None
        else f"{type(client_error.__cause__).__name__}: {client_error.__cause__}",
        "chaos_error": chaos_error or None,
    }
    report(tmp_path, "sft_three_sigkills", figures)

    assert not chaos_error, chaos_error
    assert client_error is None, (
        f"the client saw an exception at {failed_at} after "
        f"{figures['restarts_done']} restart(s): {figures['client_error']}\ncause: {figures['client_error_cause']}\n"
        f"lathe logs:\n{server.all_logs()}"
    )
    assert len(kills) == KILLS and figures["restarts_done"] == KILLS, figures
    assert result["losses"] == twin["losses"], [
        (i, a, b) for i, (a, b) in enumerate(zip(result["losses"], twin["losses"])) if a != b
    ]
    assert result["final"].tobytes() == twin["final"].tobytes(), (
        f"final logprobs differ: max |Δ| = {np.abs(result['final'] - twin['final']).max()}"
    )


# -- a pending future across a kill ----------------------------------------------------------------

# Big enough that one forward_backward takes a noticeable time on tiny/qwen3 (see the twin's timing).
SLOW_BATCH = fixed_batch(int(os.environ.get("LATHE_CHAOS_SLOW_DATUMS", "192")), 250, 255, seed=3)


def retrieve_raw(url: str, request_id: str) -> tuple[int, str, bytes]:
    req = urllib.request.Request(
        f"{url}/api/v1/retrieve_future",
        data=json.dumps({"request_id": request_id}).encode(),
        headers={"X-API-Key": API_KEY, "Content-Type": "application/json", "Accept": "application/x-protobuf"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read()


def pending_run(url: str, on_submitted=None) -> dict[str, Any]:
    """Two SFT steps (a non-zero adapter), then one slow forward_backward whose result is the
    subject, then its optim_step and a probe forward (to catch a double application)."""
    sc = service_client(url)
    try:
        tc = sc.create_lora_training_client(base_model=MODEL, rank=RANK, seed=LORA_SEED).result(timeout=STEP_TIMEOUT_S)
        for _ in range(2):
            tc.forward_backward(TRAIN_BATCH, "cross_entropy")
            tc.optim_step(types.AdamParams(learning_rate=LEARNING_RATE)).result(timeout=STEP_TIMEOUT_S)
        t0 = time.monotonic()
        fb = tc.forward_backward(SLOW_BATCH, "cross_entropy")
        if on_submitted is not None:
            on_submitted(fb)
        out = fb.result(timeout=STEP_TIMEOUT_S)
        fb_s = time.monotonic() - t0
        tc.optim_step(types.AdamParams(learning_rate=LEARNING_RATE)).result(timeout=STEP_TIMEOUT_S)
        probe = logprobs(tc.forward([PROBE], "cross_entropy").result(timeout=STEP_TIMEOUT_S))[0]
        return {"fb": out, "fb_s": fb_s, "probe": probe}
    finally:
        close_quietly(sc)


def test_a_pending_forward_backward_future_survives_a_sigkill(tmp_path, sdk_env, servers, retries: RetryCounter):
    from tinker.proto.response_conv import deserialize_proto_response

    twin_server: LatheServer = servers("twin")
    twin_server.start()
    twin = pending_run(twin_server.url)
    twin_server.stop()
    assert twin["fb_s"] >= 0.3, (
        f"the slow forward_backward took only {twin['fb_s']:.3f} s: too fast to kill mid-flight; "
        "raise LATHE_CHAOS_SLOW_DATUMS"
    )

    server: LatheServer = servers("chaos")
    server.start()
    watchdog = Watchdog(server)
    watchdog.start()
    n_futures_before = len(retries.futures)
    polling = threading.Event()
    state: dict[str, Any] = {}

    def on_poll(request_type: str, request_id: str, iteration: int) -> None:
        if request_type == "ForwardBackward" and request_id == state.get("rid"):
            polling.set()

    def on_submitted(fb) -> None:
        # Wait for the slow request's APIFuture (its request id) and its first long poll.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fbs = [rid for typ, rid in retries.futures[n_futures_before:] if typ == "ForwardBackward"]
            if len(fbs) >= 3:  # two warm-up steps, then the slow one
                state["rid"] = fbs[2]
                break
            time.sleep(0.005)
        else:
            raise AssertionError(f"no future for the slow forward_backward: {retries.futures}")
        if any(t == "ForwardBackward" and r == state["rid"] for t, r, _ in retries.poll_started):
            polling.set()
        assert polling.wait(timeout=30), "the SDK never polled the slow forward_backward"
        time.sleep(min(0.3 * twin["fb_s"], 2.0))  # well inside the request's compute time
        state["done_at_kill"] = fb.future().done()
        if KILLS > 0:
            state["restart"] = watchdog.kill()

    retries.on_poll = on_poll
    client_error: Optional[BaseException] = None
    chaos: dict[str, Any] = {}
    try:
        chaos = pending_run(server.url, on_submitted=on_submitted)
    except BaseException as e:  # noqa: BLE001 - reported below
        client_error = e
    retries.on_poll = None
    watchdog.idle.wait(timeout=STARTUP_TIMEOUT)

    raw: tuple[int, str, bytes] = (0, "", b"")
    if "rid" in state and server.alive():
        raw = retrieve_raw(server.url, state["rid"])
    watchdog.stop()

    r = state.get("restart")
    figures = {
        "request_id": state.get("rid"),
        "twin_fb_s": round(twin["fb_s"], 3),
        "future_done_at_kill": state.get("done_at_kill"),
        "kill_to_healthz_s": round(r.healthy_at - r.killed_at, 3) if r and r.healthy_at else None,
        "chaos_fb_s_including_restart": round(chaos["fb_s"], 3) if chaos else None,
        "client_retries": retries.summary(),
        "raw_retrieve_after_restart": {"status": raw[0], "content_type": raw[1],
                                       "body": raw[2][:300].decode("utf-8", "replace") if "json" in raw[1] else f"<{len(raw[2])} bytes>"},
        "client_error": None if client_error is None else f"{type(client_error).__name__}: {client_error}",
        "client_error_cause": None if client_error is None or client_error.__cause__ is None
        else f"{type(client_error.__cause__).__name__}: {client_error.__cause__}",
    }
    report(tmp_path, "pending_future_sigkill", figures)

    assert state.get("done_at_kill") is False, f"the kill did not land while the future was pending: {figures}"
    assert KILLS == 0 or (r is not None and r.healthy_at), f"no restart: {figures}"
    assert client_error is None, (
        f"the client saw an exception: {figures['client_error']}\ncause: {figures['client_error_cause']}\n"
        f"lathe logs:\n{server.all_logs()}"
    )
    for a, b in zip(logprobs(chaos["fb"]), logprobs(twin["fb"]), strict=True):
        assert a.tobytes() == b.tobytes()
    assert chaos["fb"].metrics == twin["fb"].metrics
    assert raw[0] == 200 and "protobuf" in raw[1], figures["raw_retrieve_after_restart"]
    again = deserialize_proto_response(raw[2], types.ForwardBackwardOutput)
    for a, b in zip(logprobs(again), logprobs(twin["fb"]), strict=True):
        assert a.tobytes() == b.tobytes()
    assert chaos["probe"].tobytes() == twin["probe"].tobytes(), "the step after the restart differs (applied twice?)"
