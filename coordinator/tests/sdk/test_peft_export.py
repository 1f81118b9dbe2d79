"""An adapter exported by lathe (`save_weights_external`, downloaded through the signed URLs) and
loaded with HF PEFT onto the same SmolLM2 GGUF reproduces lathe's own logprobs within 1e-3.

Needs torch, transformers, peft and gguf in the test process (see LATHE_TORCH_SITE in conftest.py);
skipped with the reason when they are absent, as in CI, which does not install torch.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tinker import types

from conftest import SMOL
from helpers import logprobs_of, sft_datum

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Resolved at import, before the suite points HOME at a temporary directory.
GGUF = Path(
    os.environ.get("LATHE_SMOLLM2_GGUF")
    or Path(os.environ.get("LATHE_CACHE", Path.home() / ".cache" / "lathe")) / "models" / GGUF_NAME
)


def _missing() -> str | None:
    for module in ("torch", "peft", "transformers", "gguf"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (set LATHE_TORCH_SITE to a site-packages with torch, peft and gguf)"
    if not GGUF.is_file():
        return f"{GGUF} not found (ops/fetch-models.sh)"
    return None


@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
def test_exported_adapter_under_peft_reproduces_lathe_logprobs(sc, rest, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tc = sc.create_lora_training_client(base_model=SMOL, rank=8, seed=0).result()
    tokenizer = tc.get_tokenizer()
    text = "The quick brown fox jumps over the lazy dog, and then it rests in the warm afternoon sun."
    tokens = [int(t) for t in tokenizer.encode(text)]
    data = [sft_datum(tokens, 4)]
    for _ in range(3):  # move every adapter matrix off its initial value
        tc.forward_backward(data, "cross_entropy")
        tc.optim_step(types.AdamParams(learning_rate=5e-3)).result()
    lathe_lp = logprobs_of(tc.forward(data, "cross_entropy").result())[0].astype(np.float64)

    path = tc.save_weights_external("peft-check").result().path
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir()
    for name, url in rest.get_external_weights_urls(path).result().urls.items():
        with urllib.request.urlopen(url, timeout=60) as r:
            (adapter_dir / name).write_bytes(r.read())

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    ids = torch.tensor([tokens])  # (1, len)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0]  # (len, vocab)
        peft_lp = torch.log_softmax(logits[:-1].double(), dim=-1).gather(1, ids[0, 1:, None])[:, 0].numpy()
    diff = float(np.abs(peft_lp - lathe_lp).max())
    print(f"max |PEFT − lathe| logprob difference: {diff:.2e}")
    assert diff <= 1e-3, diff
    # The adapter matters: without it the logprobs are measurably different.
    with model.disable_adapter(), torch.no_grad():
        plain = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0][:-1].double(), dim=-1)
        plain_lp = plain.gather(1, ids[0, 1:, None])[:, 0].numpy()
    assert float(np.abs(plain_lp - lathe_lp).max()) > 1e-2
