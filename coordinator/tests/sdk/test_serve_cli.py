"""`lathe serve` itself: it refuses to expose a keyless server beyond loopback, a restart on the same
--data-dir keeps runs and checkpoints, and with --api-keys every lookup is tenant-scoped. Each test
starts its own server (tiny model only, so start-up takes seconds) and stops it at the end.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import tinker
from tinker import types

from conftest import TINY, _ORIGINAL_ENV, lathe_binary, start_lathe, stop_lathe
from helpers import logprobs_of, tiny_sft_batch
from recording_proxy import free_port

TINY_ONLY = ["--model", TINY]


def test_a_keyless_server_refuses_a_non_loopback_address(tmp_path):
    done = subprocess.run(
        [str(lathe_binary()), "serve", "--listen", f"0.0.0.0:{free_port()}", "--data-dir", str(tmp_path), *TINY_ONLY],
        capture_output=True, text=True, timeout=60, env=_ORIGINAL_ENV,
    )
    assert done.returncode != 0
    assert "--api-keys" in done.stderr and "loopback" in done.stderr, done.stderr


def test_a_restart_on_the_same_data_dir_keeps_runs_and_checkpoints(tmp_path):
    data = tiny_sft_batch()
    proc, url, _ = start_lathe(tmp_path, TINY_ONLY)
    try:
        sc = tinker.ServiceClient(base_url=url, api_key="tml-restart")
        tc = sc.create_lora_training_client(base_model=TINY, rank=4, seed=11).result()
        tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
        path = tc.save_state("keep").result().path
        before = logprobs_of(tc.forward(data, "cross_entropy").result())
        run_id = tc.model_id
        sc.close("success").result()
    finally:
        stop_lathe(proc)

    proc, url, _ = start_lathe(tmp_path, TINY_ONLY)
    try:
        rest = tinker.RestClient(base_url=url, api_key="tml-restart")
        runs = [r.training_run_id for r in rest.list_training_runs(limit=100).result().training_runs]
        assert run_id in runs, runs
        ids = {c.checkpoint_id: c.tinker_path for c in rest.list_checkpoints(run_id).result().checkpoints}
        assert ids.get("weights/keep") == path, ids
        sc = tinker.ServiceClient(base_url=url, api_key="tml-restart")
        resumed = sc.create_training_client_from_state(path).result()
        after = logprobs_of(resumed.forward(data, "cross_entropy").result())
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
        sc.close("success").result()
    finally:
        stop_lathe(proc)


def test_with_api_keys_each_tenant_sees_only_its_own_runs(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# test tenants\ntml-alice-key alice\ntml-bob-key bob\n")
    proc, url, _ = start_lathe(tmp_path, [*TINY_ONLY, "--api-keys", str(keys)])
    try:
        alice = tinker.ServiceClient(base_url=url, api_key="tml-alice-key")
        tc = alice.create_lora_training_client(base_model=TINY, rank=4, seed=12).result()
        path = tc.save_state("mine").result().path

        alice_rest = tinker.RestClient(base_url=url, api_key="tml-alice-key")
        assert alice_rest.get_training_run(tc.model_id).result().training_run_id == tc.model_id
        bob_rest = tinker.RestClient(base_url=url, api_key="tml-bob-key")
        with pytest.raises(tinker.NotFoundError):
            bob_rest.get_training_run(tc.model_id).result()
        with pytest.raises(tinker.NotFoundError):
            bob_rest.list_checkpoints(tc.model_id).result()
        assert tc.model_id not in [r.training_run_id for r in bob_rest.list_training_runs().result().training_runs]
        assert path not in [c.tinker_path for c in bob_rest.list_user_checkpoints().result().checkpoints]

        with pytest.raises(tinker.APIStatusError) as err:
            tinker.RestClient(base_url=url, api_key="tml-mallory").list_training_runs().result()
        assert err.value.status_code in (401, 403), err.value
        alice.close("success").result()
    finally:
        stop_lathe(proc)
