"""Backpressure the SDK understands: a base model flooded past its queue limit answers 429 with
`retry-after`; the SDK backs off and retries, and every request still completes, none lost and none
run twice (each run's results equal the same run stepped by itself, without contention)."""

from __future__ import annotations

import threading

import numpy as np
import tinker
from tinker import types

from conftest import TINY, start_lathe, stop_lathe
from helpers import logprobs_of, tiny_sft_batch

CLIENTS = 4
STEPS = 3
CHUNKS = 4  # forward_backward submissions in flight per client per step


def _train(sc: tinker.ServiceClient, seed: int, data: list[types.Datum]) -> dict:
    """STEPS steps of CHUNKS forward_backward calls submitted together, then optim_step; returns
    every loss seen and the final logprobs."""
    tc = sc.create_lora_training_client(base_model=TINY, rank=4, seed=seed).result()
    losses = []
    for _ in range(STEPS):
        futures = [tc.forward_backward(data, "cross_entropy") for _ in range(CHUNKS)]
        losses.append([f.result().metrics["loss:sum"] for f in futures])
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    final = logprobs_of(tc.forward(data, "cross_entropy").result())
    return {"losses": losses, "final": final}


def test_a_flooded_base_model_answers_429_and_every_request_completes_exactly_once(tmp_path):
    data = tiny_sft_batch()
    proc, url, log_path = start_lathe(tmp_path, ["--model", TINY, "--queue-limit", "2"])
    try:
        results: dict[int, dict] = {}
        errors: list[BaseException] = []

        def client(i: int) -> None:
            try:
                sc = tinker.ServiceClient(base_url=url, api_key="tml-flood")
                results[i] = _train(sc, 100 + i, data)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        assert len(results) == CLIENTS

        # The same runs, one at a time: nothing queues, nothing is refused.
        sc = tinker.ServiceClient(base_url=url, api_key="tml-alone")
        for i in range(CLIENTS):
            alone = _train(sc, 100 + i, data)
            assert results[i]["losses"] == alone["losses"], (i, results[i]["losses"], alone["losses"])
            for a, b in zip(results[i]["final"], alone["final"], strict=True):
                np.testing.assert_array_equal(a, b)
    finally:
        stop_lathe(proc)
    log = log_path.read_text(errors="replace")
    refused = log.count("unfinished requests queued")
    print(f"429 answers during the flood: {refused}")
    assert refused > 0, "the flood never reached the queue limit; the test proves nothing"
