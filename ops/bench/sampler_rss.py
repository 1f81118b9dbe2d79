"""Memory of an RL-style loop that makes a sampler every step: `lathe serve` on SmolLM2, one training
client (rank 8); each step is forward_backward + optim_step + save_weights_and_get_sampling_client + one
sample. Prints the server's RSS at chosen steps; with samplers freed when unused (at most 8 resident),
it stays flat.

    python ops/bench/sampler_rss.py --bin target/release/lathe --steps 300
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time

import tinker
from tinker import types

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    data = tempfile.mkdtemp(prefix="lathe-rss-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([a.bin, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data, "--model", SMOL,
                             "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.2)
        sc = tinker.ServiceClient(base_url=f"http://127.0.0.1:{port}", api_key="tml-rss")
        tc = sc.create_lora_training_client(base_model=SMOL, rank=8, seed=1).result()
        toks = list(range(100, 116))
        datum = types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                            loss_fn_inputs={"target_tokens": toks[1:]})
        marks = {1, 10, 50, 100, 200, 300, a.steps}
        t0 = time.time()
        for step in range(1, a.steps + 1):
            tc.forward_backward([datum], "cross_entropy").result()
            tc.optim_step(types.AdamParams(learning_rate=1e-4)).result()
            sampler = tc.save_weights_and_get_sampling_client().result()
            sampler.sample(types.ModelInput.from_ints(toks[:4]), 1,
                           types.SamplingParams(max_tokens=2, temperature=0.0)).result()
            if step in marks:
                print(f"step {step} rss_mib {rss_mib(proc.pid):.1f} elapsed_s {time.time() - t0:.1f}", flush=True)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
