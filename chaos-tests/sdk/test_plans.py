"""Plan DataParallel(2) in real worker processes (real etcd, `lathe coordinator --plan dp=2`, two `lathe
worker`s) equals plan Single (one worker) bit for bit: every step's per-datum logprobs, and the final
save_state tensors (adapter and Adam moments, which are functions of every step's gradients). The same
loop as ops/bench/dp_train.py, small: 3 steps of 8 datums x 16 tokens, dense and MoE.
Gradient buffers themselves are compared in worker/tests/dp_chain.rs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "coordinator" / "tests" / "sdk"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ops" / "bench"))
from cluster import etcd_binary  # noqa: E402
from dp_train import run_plan  # noqa: E402

from chaos_helpers import lathe_binary  # noqa: E402

if etcd_binary() is None:
    if os.environ.get("LATHE_REQUIRE_ETCD") == "1":
        raise RuntimeError("LATHE_REQUIRE_ETCD=1 but etcd is not installed (apt-get install etcd-server)")
    pytest.skip("etcd is not installed (apt-get install etcd-server)", allow_module_level=True)


@pytest.mark.parametrize("model", ["tiny/llama3", "tiny/qwen3-moe"])
def test_data_parallel_over_two_worker_processes_equals_one_worker_bit_for_bit(model, tmp_path, sdk_env):
    args = SimpleNamespace(model=model, batch=8, seq=16, steps=3, rank=4)
    (tmp_path / "single").mkdir()
    (tmp_path / "dp").mkdir()
    single = run_plan(str(lathe_binary()), tmp_path / "single", "single", 1, args)
    dp = run_plan(str(lathe_binary()), tmp_path / "dp", "dp=2", 2, args)
    assert len(single["logprobs"]) == 3 and all(len(step) == 8 for step in single["logprobs"])
    for step, (a, b) in enumerate(zip(single["logprobs"], dp["logprobs"])):
        assert a == b, f"step {step}: logprobs differ"
    assert single["state_sha256"] == dp["state_sha256"], "final adapter and optimizer state differ"
