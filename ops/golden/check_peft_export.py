#!/usr/bin/env python3
"""Checks a PEFT adapter exported by lathe against HF transformers + PEFT.

Given a base model directory (HF `config.json` + safetensors), the PEFT directory lathe exported
(`adapter_config.json` + `adapter_model.safetensors`) and a JSON case with token ids, targets and
lathe's logprobs of those targets, loads the base with transformers, applies the adapter with
`PeftModel.from_pretrained`, computes the same logprobs in float32 on the CPU, and reports the
largest absolute difference. Exits 1 when it exceeds --tol (the issue's contract: 1e-3).

Case JSON: {"sequences": [{"tokens": [int], "targets": [int], "logprobs": [float]}, ...]},
as written by `cargo run -p worker --example peft_export_case -- OUT_DIR`.

Usage (golden venv: torch 2.15, transformers 5.23, peft 0.21.2):
    /work/golden-venv/bin/python ops/golden/check_peft_export.py \
        --base OUT/tiny-llama3/base --peft OUT/tiny-llama3/peft --case OUT/tiny-llama3/case.json
    # or every case under a directory written by the example:
    /work/golden-venv/bin/python ops/golden/check_peft_export.py --cases OUT
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


def check(base: Path, peft_dir: Path, case_path: Path) -> dict:
    case = json.loads(case_path.read_text())
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, peft_dir)
    model.eval()
    adapter = json.loads((peft_dir / "adapter_config.json").read_text())
    max_diff = 0.0
    n_tokens = 0
    with torch.no_grad():
        for seq in case["sequences"]:
            tokens = torch.tensor([seq["tokens"]], dtype=torch.long)
            targets = torch.tensor(seq["targets"], dtype=torch.long)
            logits = model(input_ids=tokens).logits[0].float()  # (n, vocab)
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
            lathe = torch.tensor(seq["logprobs"], dtype=torch.float32)
            if lathe.shape != logprobs.shape:
                raise SystemExit(f"{case_path}: lathe has {lathe.shape} logprobs, transformers {logprobs.shape}")
            max_diff = max(max_diff, (logprobs - lathe).abs().max().item())
            n_tokens += len(seq["targets"])
    # The adapter must actually change the model, or the comparison proves nothing about it.
    with torch.no_grad(), model.disable_adapter():
        seq = case["sequences"][0]
        base_logits = model(input_ids=torch.tensor([seq["tokens"]], dtype=torch.long)).logits[0]
        base_lp = torch.log_softmax(base_logits, -1).gather(1, torch.tensor(seq["targets"])[:, None])[:, 0]
        adapter_effect = (base_lp - torch.tensor(seq["logprobs"])).abs().max().item()
    return {
        "case": str(case_path),
        "target_modules": adapter["target_modules"],
        "r": adapter["r"],
        "lora_alpha": adapter["lora_alpha"],
        "tokens": n_tokens,
        "max_abs_diff": max_diff,
        "adapter_effect_max_abs": adapter_effect,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, help="HF base model directory")
    p.add_argument("--peft", type=Path, help="PEFT adapter directory exported by lathe")
    p.add_argument("--case", type=Path, help="case JSON with tokens, targets and lathe's logprobs")
    p.add_argument("--cases", type=Path, help="a directory of <model>/{base,peft,case.json} (the example's OUT_DIR)")
    p.add_argument("--tol", type=float, default=1e-3, help="largest allowed |lathe - transformers| (default 1e-3)")
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    if args.cases:
        runs = [(d / "base", d / "peft", d / "case.json") for d in sorted(args.cases.iterdir()) if (d / "case.json").is_file()]
    elif args.base and args.peft and args.case:
        runs = [(args.base, args.peft, args.case)]
    else:
        p.error("give --base, --peft and --case, or --cases")
    if not runs:
        p.error("no cases found")
    ok = True
    for base, peft_dir, case in runs:
        result = check(base, peft_dir, case)
        result["pass"] = result["max_abs_diff"] <= args.tol and result["adapter_effect_max_abs"] > 10 * args.tol
        ok &= result["pass"]
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
