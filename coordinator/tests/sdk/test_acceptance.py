"""Protocol §9, steps 1–13, with the unmodified tinker 0.38.0 SDK against `lathe serve`.

Steps run on the built-in `tiny/llama3` for speed. Shared state (the training client, its saved
checkpoints) comes from module-scoped fixtures, so each test also runs alone.
"""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest
import tinker
from tinker import types

from conftest import TINY
from helpers import MODEL_ID, logprobs_of, rl_datum, sft_datum, tiny_sft_batch, weighted_nll, TINY_SEQS

PROMPT = [1, 17, 42, 99, 123]
RANK = 8


@pytest.fixture(scope="module")
def tc(sc):
    return sc.create_lora_training_client(base_model=TINY, rank=RANK, seed=0).result()


@pytest.fixture(scope="module")
def trained(tc):
    """`tc` after a few SFT steps, so its adapter is non-zero (B starts at zero)."""
    data = tiny_sft_batch()
    for _ in range(3):
        tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    return tc


@pytest.fixture(scope="module")
def saved_state(trained):
    return trained.save_state("acc-1").result().path


@pytest.fixture(scope="module")
def saved_sampler(trained):
    return trained.save_weights_for_sampler("acc-s").result().path


def forward_logprobs(client, data):
    return logprobs_of(client.forward(data, "cross_entropy").result())


def test_step01_capabilities_list_the_tiny_model_after_client_config(server, rest):
    caps = rest.get_server_capabilities().result()
    names = [m.model_name for m in caps.supported_models]
    assert TINY in names, names
    paths = [e.path for e in server.recorder.snapshot()]
    assert "/api/v1/client/config" in paths
    assert paths.index("/api/v1/client/config") < paths.index("/api/v1/get_server_capabilities"), paths


def test_step02_lora_training_client_has_the_session_model_id_and_info(sc, tc):
    m = MODEL_ID.match(tc.model_id)
    assert m, tc.model_id
    assert m["session"] == sc.holder.get_session_id()
    info = tc.get_info()
    assert info.model_data.model_name == TINY
    assert info.lora_rank == RANK
    assert info.model_id == tc.model_id


def test_step03_forward_backward_returns_per_datum_logprobs_and_training_lowers_the_loss(sc):
    tc = sc.create_lora_training_client(base_model=TINY, rank=RANK, seed=1).result()
    data = tiny_sft_batch()
    f = tc.forward_backward(data, "cross_entropy")
    o = tc.optim_step(types.AdamParams(learning_rate=1e-4))
    r = f.result()
    assert len(r.loss_fn_outputs) == 2
    for out, d in zip(r.loss_fn_outputs, data):
        lp = out["logprobs"]
        assert lp.dtype == "float32"
        n = len(d.loss_fn_inputs["target_tokens"].tolist())
        assert list(lp.to_numpy().shape) == [n]
        assert (lp.to_numpy() <= 0).all()
    assert r.metrics["loss:sum"] == pytest.approx(weighted_nll(r, data), rel=1e-4, abs=1e-4)
    assert r.metrics["loss:sum"] > 0
    o.result()
    losses = [r.metrics["loss:sum"]]
    for _ in range(5):
        f = tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
        losses.append(f.result().metrics["loss:sum"])
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_step04_forward_only_accumulates_no_gradient(sc):
    fresh = sc.create_lora_training_client(base_model=TINY, rank=RANK, seed=2).result()
    data = tiny_sft_batch()
    first, second = forward_logprobs(fresh, data), forward_logprobs(fresh, data)
    assert [len(x) for x in first] == [len(d.loss_fn_inputs["target_tokens"].tolist()) for d in data]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # Adam on zero gradients and zero moments moves nothing; a gradient left behind by forward would.
    fresh.optim_step(types.AdamParams(learning_rate=1e-1)).result()
    for a, b in zip(first, forward_logprobs(fresh, data)):
        np.testing.assert_array_equal(a, b)
    # Sanity: a real forward_backward followed by the same step does move them.
    fresh.forward_backward(data, "cross_entropy").result()
    fresh.optim_step(types.AdamParams(learning_rate=1e-1)).result()
    moved = forward_logprobs(fresh, data)
    assert any(not np.array_equal(a, b) for a, b in zip(first, moved))


def test_step05_rl_losses_match_their_formulas_at_ratio_one(trained):
    tokens = TINY_SEQS[0]
    probe = sft_datum(tokens, 1)
    own = forward_logprobs(trained, [probe])[0]
    adv = [0.5, -1.0, 2.0, 0.25, 1.0, -0.5, 0.75, 1.5, -2.0]
    datum = rl_datum(tokens, own.tolist(), adv)
    adv_np, own64 = np.array(adv, dtype=np.float64), own.astype(np.float64)
    results = {}
    for loss_fn, cfg in [
        ("importance_sampling", None),
        ("ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
        ("cispo", None),
        ("dro", {"beta": 0.05}),
    ]:
        r = trained.forward([datum], loss_fn, loss_fn_config=cfg).result()
        assert "loss:sum" in r.metrics, (loss_fn, r.metrics)
        assert all(k.count(":") == 1 for k in r.metrics), r.metrics
        np.testing.assert_allclose(logprobs_of(r)[0], own, atol=1e-6)
        results[loss_fn] = r.metrics["loss:sum"]
    assert results["importance_sampling"] == pytest.approx(-adv_np.sum(), abs=1e-4)
    assert results["ppo"] == pytest.approx(-adv_np.sum(), abs=1e-4)
    assert results["cispo"] == pytest.approx(-(own64 * adv_np).sum(), rel=1e-4, abs=1e-4)
    # At q = lp the DRO penalty vanishes: −Σ lp·A.
    assert results["dro"] == pytest.approx(-(own64 * adv_np).sum(), rel=1e-4, abs=1e-4)


def test_step06_save_state_and_resume_with_and_without_optimizer(sc, trained, saved_state):
    assert saved_state == f"tinker://{trained.model_id}/weights/acc-1"
    data = tiny_sft_batch()
    at_save = forward_logprobs(trained, data)
    tc2 = sc.create_training_client_from_state_with_optimizer(saved_state).result()
    m1, m2 = MODEL_ID.match(trained.model_id), MODEL_ID.match(tc2.model_id)
    assert m2 and m2["session"] == m1["session"] and int(m2["n"]) > int(m1["n"]), (trained.model_id, tc2.model_id)
    assert tc2.get_info().lora_rank == RANK
    for a, b in zip(at_save, forward_logprobs(tc2, data)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Legacy load_state on the original client succeeds and changes nothing.
    trained.load_state(saved_state).result()
    for a, b in zip(at_save, forward_logprobs(trained, data)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # With the optimizer restored, one more identical step lands on identical weights. (The legacy
    # load_state above loaded weights only, so restore `trained`'s Adam moments too.)
    trained.load_state_with_optimizer(saved_state).result()
    tc_no_opt = sc.create_training_client_from_state(saved_state).result()
    for client in (trained, tc2, tc_no_opt):
        client.forward_backward(data, "cross_entropy")
        client.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    after_orig, after_resumed, after_fresh_opt = (forward_logprobs(c, data) for c in (trained, tc2, tc_no_opt))
    for a, b in zip(after_orig, after_resumed):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Without the Adam moments the step differs (bias correction restarts at step 1).
    assert any(np.abs(a - c).max() > 1e-4 for a, c in zip(after_orig, after_fresh_opt))
    # Put `trained` back where the later steps expect it.
    trained.load_state_with_optimizer(saved_state).result()


def test_step07_sampler_weights_and_sampling(server, sc, trained, saved_sampler):
    assert saved_sampler == f"tinker://{trained.model_id}/sampler_weights/acc-s"
    before = len(server.recorder.snapshot())
    s = sc.create_sampling_client(model_path=saved_sampler).result()
    seen = [(e.method, e.path) for e in server.recorder.snapshot()[before:]]
    creates = [i for i, (m, p) in enumerate(seen) if p == "/api/v1/create_sampling_session"]
    gets = [i for i, (m, p) in enumerate(seen) if m == "GET" and p.startswith("/api/v1/samplers/")]
    assert creates and gets and creates[0] < gets[0], seen

    params = types.SamplingParams(max_tokens=8, temperature=0.7, top_p=0.9, top_k=50, seed=1)
    prompt = types.ModelInput.from_ints(PROMPT)
    res = s.sample(prompt, num_samples=2, sampling_params=params, include_prompt_logprobs=True,
                   topk_sample_logprobs=2).result()
    assert len(res.sequences) == 2
    for seq in res.sequences:
        assert 1 <= len(seq.tokens) <= 8
        assert len(seq.logprobs) == len(seq.tokens)
        assert all(lp <= 0 for lp in seq.logprobs)
        assert seq.stop_reason in ("stop", "length")
        assert all(0 <= t < 512 for t in seq.tokens)
        assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens)
        for row in seq.topk_logprobs:
            assert row is not None and 1 <= len(row) <= 2
    ids = [seq.sequence_id for seq in res.sequences]
    assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 2
    assert len(res.prompt_logprobs) == len(PROMPT) and res.prompt_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in res.prompt_logprobs[1:])

    again = s.sample(prompt, num_samples=2, sampling_params=params).result()
    assert [q.tokens for q in again.sequences] == [q.tokens for q in res.sequences]

    no_stop = s.sample(prompt, 1, types.SamplingParams(max_tokens=6, stop=[], seed=3)).result().sequences[0]
    assert len(no_stop.tokens) == 6 and no_stop.stop_reason == "length"
    stop_at = no_stop.tokens[2]
    first = no_stop.tokens.index(stop_at)
    stopped = s.sample(prompt, 1, types.SamplingParams(max_tokens=6, stop=[stop_at], seed=3)).result().sequences[0]
    assert stopped.stop_reason == "stop"
    assert stopped.tokens == no_stop.tokens[: first + 1]


def test_step08_compute_logprobs_matches_forward_and_other_sampler_paths(sc, trained):
    seq = TINY_SEQS[0]
    path = trained.save_weights_for_sampler("acc-s8").result().path
    s = sc.create_sampling_client(model_path=path).result()
    lp = s.compute_logprobs(types.ModelInput.from_ints(seq)).result()
    assert len(lp) == len(seq) and lp[0] is None
    fwd = forward_logprobs(trained, [sft_datum(seq, 1)])[0]
    np.testing.assert_allclose(np.array(lp[1:], dtype=np.float64), fwd, atol=1e-4)

    last3 = s.compute_logprobs(types.ModelInput.from_ints(seq), prompt_logprobs_last_n=3).result()
    assert last3[:-3] == [None] * (len(seq) - 3)
    np.testing.assert_allclose(np.array(last3[-3:], dtype=np.float64), fwd[-3:], atol=1e-4)

    res = s.sample(types.ModelInput.from_ints(seq), 1, types.SamplingParams(max_tokens=1), include_prompt_logprobs=True,
                   topk_prompt_logprobs=3).result()
    rows = res.topk_prompt_logprobs
    assert len(rows) == len(seq) and rows[0] is None
    for i in range(1, len(seq)):
        assert 1 <= len(rows[i]) <= 3
        assert rows[i][0][1] >= res.prompt_logprobs[i] - 1e-5  # the best alternative is at least the actual token

    eph = trained.save_weights_and_get_sampling_client().result()
    out = eph.sample(types.ModelInput.from_ints(PROMPT), 1, types.SamplingParams(max_tokens=4, seed=5)).result()
    assert 1 <= len(out.sequences[0].tokens) <= 4
    eph_lp = eph.compute_logprobs(types.ModelInput.from_ints(seq)).result()
    np.testing.assert_allclose(np.array(eph_lp[1:], dtype=np.float64), fwd, atol=1e-4)

    base = sc.create_sampling_client(base_model=TINY).result()
    base_out = base.sample(types.ModelInput.from_ints(PROMPT), 2, types.SamplingParams(max_tokens=3, seed=5)).result()
    assert len(base_out.sequences) == 2
    base_lp = base.compute_logprobs(types.ModelInput.from_ints(seq)).result()
    assert np.abs(np.array(base_lp[1:], dtype=np.float64) - fwd).max() > 1e-4  # trained adapter ≠ base model


def _torch():
    try:
        import torch  # noqa: F401

        return torch
    except ImportError:
        return None


@pytest.mark.skipif(_torch() is None, reason="torch is not installed (forward_backward_custom runs the loss client-side)")
def test_step09_dpo_through_forward_backward_custom(server, sc):
    torch = _torch()
    tc = sc.create_lora_training_client(base_model=TINY, rank=RANK, seed=3).result()
    chosen, rejected = sft_datum(TINY_SEQS[0], 4), sft_datum([1, 17, 42, 99, 5, 400, 3, 88, 19, 64], 4)
    ref = [torch.tensor(x) for x in forward_logprobs(tc, [chosen, rejected])]
    beta = 0.1

    def dpo(data, logprobs_list):
        w = [torch.tensor(d.loss_fn_inputs["weights"].to_numpy()) for d in data]
        margin = beta * (((logprobs_list[0] - ref[0]) * w[0]).sum() - ((logprobs_list[1] - ref[1]) * w[1]).sum())
        loss = -torch.nn.functional.logsigmoid(margin)
        return loss, {"dpo_margin:mean": float(margin)}

    before = len(server.recorder.snapshot())
    margins = []
    for _ in range(4):
        r = tc.forward_backward_custom([chosen, rejected], dpo).result()
        tc.optim_step(types.AdamParams(learning_rate=5e-3)).result()
        assert {"loss:sum", "surrogate_loss:sum", "dpo_margin:mean"} <= set(r.metrics), r.metrics
        margins.append(r.metrics["dpo_margin:mean"])
    assert margins[-1] > margins[0], margins
    fb = [e.fwdbwd for e in server.recorder.snapshot()[before:] if e.fwdbwd is not None]
    assert fb[0]["forward_only"] and not fb[1]["forward_only"], fb[:2]
    assert fb[1]["loss_fn"] == "cross_entropy"
    assert any(w < 0 for ws in fb[1]["weights"] for w in ws), fb[1]  # real-valued gradient weights


def test_step10_rest_lists_runs_and_checkpoints(rest, trained, saved_state, saved_sampler):
    runs = rest.list_training_runs(limit=100).result()
    ids = [r.training_run_id for r in runs.training_runs]
    assert trained.model_id in ids
    assert runs.cursor.total_count >= len(ids) >= 1
    run = rest.get_training_run(trained.model_id).result()
    assert run.training_run_id == trained.model_id
    assert run.base_model == TINY and run.is_lora and run.lora_rank == RANK

    cks = rest.list_checkpoints(trained.model_id).result().checkpoints
    by_id = {c.checkpoint_id: c for c in cks}
    assert by_id["weights/acc-1"].checkpoint_type == "training"
    assert by_id["weights/acc-1"].tinker_path == saved_state
    assert by_id["sampler_weights/acc-s"].checkpoint_type == "sampler"
    assert by_id["sampler_weights/acc-s"].tinker_path == saved_sampler
    mine = rest.list_user_checkpoints().result().checkpoints
    assert {saved_state, saved_sampler} <= {c.tinker_path for c in mine}

    info = rest.get_weights_info_by_tinker_path(saved_state).result()
    assert info.base_model == TINY and info.is_lora and info.lora_rank == RANK


def test_step11_external_weights_download_ttl_and_delete(rest, trained):
    from safetensors.numpy import load as load_safetensors

    e = trained.save_weights_external("acc-x").result().path
    assert e == f"tinker://{trained.model_id}/external_weights/acc-x"
    urls = rest.get_external_weights_urls(e).result().urls
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(urls), urls
    files = {}
    for name, url in urls.items():
        with urllib.request.urlopen(urllib.request.Request(url), timeout=30) as r:  # no X-API-Key
            assert r.status == 200
            files[name] = r.read()
    config = json.loads(files["adapter_config.json"])
    assert config["r"] == RANK
    assert config.get("base_model_name_or_path")
    tensors = load_safetensors(files["adapter_model.safetensors"])
    assert tensors and all(k.startswith("base_model.model.") for k in tensors), list(tensors)[:4]
    a_keys = [k for k in tensors if "lora_A" in k]
    assert a_keys and all(RANK in tensors[k].shape for k in a_keys)
    assert any(np.abs(v).max() > 0 for k, v in tensors.items() if "lora_B" in k)  # trained, not the init

    rest.set_checkpoint_ttl_from_tinker_path(e, 3600).result()
    listed = {c.checkpoint_id: c for c in rest.list_checkpoints(trained.model_id).result().checkpoints}
    assert listed["external_weights/acc-x"].checkpoint_type == "external"
    assert listed["external_weights/acc-x"].expires_at is not None
    rest.set_checkpoint_ttl_from_tinker_path(e, None).result()
    listed = {c.checkpoint_id: c for c in rest.list_checkpoints(trained.model_id).result().checkpoints}
    assert listed["external_weights/acc-x"].expires_at is None
    rest.delete_checkpoint_from_tinker_path(e).result()
    listed = {c.checkpoint_id for c in rest.list_checkpoints(trained.model_id).result().checkpoints}
    assert "external_weights/acc-x" not in listed and "weights/acc-1" in listed


def test_step12_idle_client_heartbeats(server):
    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model=TINY, rank=4, seed=4).result()
    session = MODEL_ID.match(tc.model_id)["session"]
    time.sleep(27)  # heartbeats come at 10 s and 20 s after creation; 2 s of slack for a loaded machine
    beats = [e for e in server.recorder.snapshot()
             if e.path == "/api/v1/session_heartbeat" and (e.request_json or {}).get("session_id") == session]
    assert len(beats) >= 2, len(beats)
    assert all(e.status == 200 for e in beats), [e.status for e in beats]
    sc.close("success").result()


def test_step12_a_retried_submit_runs_once(server, sc):
    data = tiny_sft_batch()
    probe, reference = (sc.create_lora_training_client(base_model=TINY, rank=RANK, seed=5).result() for _ in range(2))
    for client in (probe, reference):
        client.forward_backward(data, "cross_entropy").result()
    before = len(server.recorder.snapshot())
    server.recorder.fail_next("POST", "/api/v1/optim_step")
    probe.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    reference.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    sent = [e for e in server.recorder.snapshot()[before:]
            if e.path == "/api/v1/optim_step" and (e.request_json or {}).get("model_id") == probe.model_id]
    assert len(sent) == 2 and sent[0].injected and not sent[1].injected, [(e.status, e.injected) for e in sent]
    assert sent[0].headers["x-idempotency-key"] == sent[1].headers["x-idempotency-key"]
    assert sent[0].response_json["request_id"] == sent[1].response_json["request_id"]
    # An optim_step applied twice would move the probe's weights further than the reference's.
    for a, b in zip(forward_logprobs(probe, data), forward_logprobs(reference, data)):
        np.testing.assert_array_equal(a, b)


def test_step12_chunked_forward_backward_keeps_datum_order_and_sums_the_loss(server):
    data = tiny_sft_batch() + [sft_datum(TINY_SEQS[0][:6], 2)]
    whole = tinker.ServiceClient().create_lora_training_client(base_model=TINY, rank=RANK, seed=6).result()
    expected = whole.forward_backward(data, "cross_entropy").result()
    server.recorder.client_config_overrides = {"fwdbwd_max_chunk_len": 1}
    try:
        sc_chunked = tinker.ServiceClient()
        chunked_tc = sc_chunked.create_lora_training_client(base_model=TINY, rank=RANK, seed=6).result()
    finally:
        server.recorder.client_config_overrides = {}
    before = len(server.recorder.snapshot())
    got = chunked_tc.forward_backward(data, "cross_entropy").result()
    chunks = [e.fwdbwd for e in server.recorder.snapshot()[before:]
              if e.fwdbwd is not None and e.fwdbwd["model_id"] == chunked_tc.model_id]
    assert len(chunks) == 3 and all(c["num_datums"] == 1 for c in chunks), chunks
    assert len(got.loss_fn_outputs) == 3
    for a, b in zip(logprobs_of(got), logprobs_of(expected)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert got.metrics["loss:sum"] == pytest.approx(expected.metrics["loss:sum"], rel=1e-5)
    # The accumulated gradient is the same too: one identical step keeps the two runs together.
    whole.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    chunked_tc.optim_step(types.AdamParams(learning_rate=1e-2)).result()
    for a, b in zip(forward_logprobs(whole, data), forward_logprobs(chunked_tc, data)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_step12_a_bad_request_fails_with_a_user_error(sc):
    tc = sc.create_lora_training_client(base_model=TINY, rank=RANK, seed=7).result()
    bad = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4, 5, 6], "weights": [1.0] * 5},
    )
    with pytest.raises(tinker.RequestFailedError) as err:
        tc.forward_backward([bad], "cross_entropy").result(timeout=120)
    assert err.value.category == "user", err.value
    # The client is still usable afterwards.
    ok = tc.forward_backward(tiny_sft_batch(), "cross_entropy").result(timeout=120)
    assert ok.metrics["loss:sum"] > 0


def test_step13_close_finishes_the_session(server):
    sc = tinker.ServiceClient()
    tc = sc.create_lora_training_client(base_model=TINY, rank=RANK, seed=8).result()
    session = MODEL_ID.match(tc.model_id)["session"]
    sc.close("success").result()
    finishes = [e for e in server.recorder.snapshot() if e.path == f"/api/v1/sessions/{session}/finish"]
    assert len(finishes) == 1 and finishes[0].status == 200, finishes

    def post(path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"{server.url}{path}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "X-API-Key": "tml-sdk-suite"},
        )
        try:
            with urllib.request.urlopen(req, timeout=40) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            text = e.read()
            assert text, "a 4xx must carry a body"
            return e.code, json.loads(text)

    assert post("/api/v1/session_heartbeat", {"session_id": session, "type": "session_heartbeat"})[0] == 410
    adam = {"learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0, "grad_clip_norm": 0.0}
    status, body = post("/api/v1/optim_step", {"model_id": tc.model_id, "seq_id": 1, "type": "optim_step",
                                               "adam_params": adam})
    if status == 200:  # accepted as a future: it must then fail as the caller's error
        deadline = time.monotonic() + 60
        while True:
            status, body = post("/api/v1/retrieve_future", {"request_id": body["request_id"],
                                                            "allow_metadata_only": False})
            if body.get("type") != "try_again" or time.monotonic() > deadline:
                break
        assert status == 200 and body.get("category") == "user" and body.get("error"), body
    else:
        assert 400 <= status < 500 and status != 409, (status, body)


def test_step13_concurrent_runs_share_steps_and_get_what_they_get_alone(sc):
    """Four runs (two ranks, two losses) submitted at once — the coordinator packs waiting
    requests of different runs into multi-tenant steps — get exactly what the same four runs get
    stepped one at a time: per-datum logprobs, loss, and the adapter after each optim_step."""
    specs = [(RANK, "cross_entropy"), (2 * RANK, "importance_sampling"), (2 * RANK, "cross_entropy"),
             (RANK, "importance_sampling")]

    def request(i: int, loss: str, round_: int) -> list[types.Datum]:
        tokens = [t for t in TINY_SEQS[(i + round_) % 2]][: 6 + i]
        if loss == "cross_entropy":
            return [sft_datum(tokens, 2), sft_datum(TINY_SEQS[1], 1)]
        n = len(tokens) - 1
        return [rl_datum(tokens, [-6.2 + 0.01 * j for j in range(n)], [0.5 - 0.25 * j for j in range(n)])]

    def make():
        return [sc.create_lora_training_client(base_model=TINY, rank=r, seed=40 + i).result()
                for i, (r, _) in enumerate(specs)]

    together, alone = make(), make()
    adam = types.AdamParams(learning_rate=1e-2)
    for round_ in range(3):
        reqs = [request(i, loss, round_) for i, (_, loss) in enumerate(specs)]
        pending = [c.forward_backward(d, loss) for c, d, (_, loss) in zip(together, reqs, specs)]
        got = [f.result() for f in pending]
        want = [c.forward_backward(d, loss).result() for c, d, (_, loss) in zip(alone, reqs, specs)]
        for i, (g, w) in enumerate(zip(got, want)):
            for a, b in zip(logprobs_of(g), logprobs_of(w), strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"round {round_} run {i}")
            assert g.metrics["loss:sum"] == w.metrics["loss:sum"], (round_, i)
        steps = [c.optim_step(adam) for c in together]
        for s in steps:
            s.result()
        for c in alone:
            c.optim_step(adam).result()
    probe = tiny_sft_batch()
    for i, (a, b) in enumerate(zip(together, alone)):
        for x, y in zip(forward_logprobs(a, probe), forward_logprobs(b, probe), strict=True):
            np.testing.assert_array_equal(x, y, err_msg=f"run {i}: adapters differ after the steps")
