"""Train-step throughput and equality of plan Single vs DataParallel(2) in real worker processes.

Starts a real etcd, then for each plan a `lathe coordinator --plan P` with its workers (Single: one
worker; dp=2: two), and runs the same SFT loop through the official SDK: STEPS x (forward_backward of
BATCH datums x SEQ tokens + optim_step). Prints one JSON line per plan (tokens/s median over steps,
background load) and one comparing them: whether every step's per-datum logprobs and the final adapter
(the save_state safetensors, byte for byte) are identical.

    python ops/bench/dp_train.py --bin target/release/lathe --model HuggingFaceTB/SmolLM2-135M-Instruct

On a 2-core machine two worker processes share the cores, and a chain runs its parts one after
another (each part waits for the previous gradient total), so DataParallel cannot be faster here:
what this reports is the overhead the gradient hand-offs add.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "coordinator" / "tests" / "sdk"))
from cluster import start_cluster  # noqa: E402


def run_plan(binary: str, root: Path, plan: str, workers: int, args) -> dict:
    env = dict(os.environ)
    c = start_cluster(binary, root, workers, ["--model", args.model, "--plan", plan], env, timeout_s=600)
    try:
        os.environ.update(TINKER_BASE_URL=c.url, TINKER_API_KEY="tml-bench", TINKER_TELEMETRY="0",
                          HF_HUB_OFFLINE="1")
        import tinker
        from tinker import types

        sc = tinker.ServiceClient()
        tc = sc.create_lora_training_client(base_model=args.model, rank=args.rank, seed=1234).result()
        logprobs, times = [], []
        for step in range(args.steps):
            data = []
            for i in range(args.batch):
                toks = [(17 * step + 31 * i + 7 * j) % 1000 + 1 for j in range(args.seq + 1)]
                data.append(types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                                        loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * args.seq}))
            t0 = time.monotonic()
            out = tc.forward_backward(data, "cross_entropy").result()
            tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
            times.append(time.monotonic() - t0)
            logprobs.append([o["logprobs"].data for o in out.loss_fn_outputs])
        saved = tc.save_state("final").result().path
        run, _, name = saved.removeprefix("tinker://").partition("/weights/")
        ckpt = root / "data" / "runs" / run / "weights" / name
        digest = hashlib.sha256()
        for f in sorted(ckpt.rglob("*.safetensors")):  # tensors only: manifests name times and ids
            if f.is_file():
                digest.update(f.relative_to(ckpt).as_posix().encode())
                digest.update(f.read_bytes())
        tokens = args.batch * args.seq
        measured = times[1:] if len(times) > 1 else times
        return {"plan": plan, "workers": workers, "model": args.model, "batch": args.batch, "seq": args.seq,
                "steps": args.steps, "tokens_per_s_median": tokens / statistics.median(measured),
                "step_s_median": statistics.median(measured), "load_avg_1m": os.getloadavg()[0],
                "logprobs": logprobs, "state_sha256": digest.hexdigest()}
    finally:
        c.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/lathe")
    p.add_argument("--model", default="tiny/llama3")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    args = p.parse_args()
    results = []
    for plan, workers in (("single", 1), ("dp=2", 2)):
        with tempfile.TemporaryDirectory(prefix=f"lathe-dp-{plan}-") as d:
            r = run_plan(args.bin, Path(d), plan, workers, args)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "logprobs"}), flush=True)
    single, dp = results
    print(json.dumps({
        "compare": "dp=2 vs single",
        "logprobs_identical": single["logprobs"] == dp["logprobs"],
        "final_state_identical": single["state_sha256"] == dp["state_sha256"],
        "tokens_per_s_ratio_dp_over_single": dp["tokens_per_s_median"] / single["tokens_per_s_median"],
    }))


if __name__ == "__main__":
    main()
