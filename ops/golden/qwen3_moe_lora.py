"""A hand-written torch forward of Qwen3MoeForCausalLM with lathe's LoRA, including the shared-outer expert LoRA.

PEFT has no LoRA for Qwen3-MoE experts in lathe's layout, so generate.py computes the tiny-qwen3-moe reference
with this module instead. It reads the base weights by their HF hub names (per-expert
`model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight`, router `mlp.gate.weight`) and the adapter by lathe's
keys (see ADAPTER KEYS below), and follows transformers 5.23's modeling_qwen3_moe.py step by step: eager
attention, f32 router softmax -> top-k -> renormalisation when `norm_topk_prob`, and a combine that visits the
experts in index order, as HF's eager experts loop does. generate.py checks that with the LoRA scale at zero the
logits equal HF's, and that with the LoRA they equal HF's model with every LoRA delta merged into its weights.

LoRA (scale s = alpha / r) on every site: y = x @ W.T + s * (x @ A.T) @ B.T.
  - attention q, k, v, o; the dense MLP's gate/up/down (layers in `mlp_only_layers`); lm_head: A (r, in), B (out, r).
  - MoE layers, shared-outer layout: gate_e(x) = x @ Wg_e.T + s * (x @ Ag.T) @ Bg_e.T with Ag (r, H) shared by all
    experts and Bg_e (I_moe, r) per expert (up_proj the same); down_e(h) = h @ Wd_e.T + s * (h @ Ad_e.T) @ Bd.T with
    Ad_e (r, I_moe) per expert and Bd (H, r) shared. The router (`mlp.gate`) has no LoRA.

ADAPTER KEYS (prefix P = base_model.model.model.layers.N):
  standard sites    P.self_attn.{q,k,v,o}_proj.lora_{A,B}.weight, P.mlp.{gate,up,down}_proj.lora_{A,B}.weight,
                    base_model.model.lm_head.lora_{A,B}.weight
  shared factors    P.mlp.experts.{gate,up}_proj.lora_A.weight (r, H), P.mlp.experts.down_proj.lora_B.weight (H, r)
  per-expert        P.mlp.experts.E.{gate,up}_proj.lora_B.weight (I_moe, r), P.mlp.experts.E.down_proj.lora_A.weight
                    (r, I_moe)
"""

import torch

PREFIX = "base_model.model."


def is_moe_layer(config: dict, layer: int) -> bool:
    """transformers' rule: not in mlp_only_layers, experts exist, and (layer + 1) % decoder_sparse_step == 0."""
    return (
        layer not in config["mlp_only_layers"]
        and config["num_experts"] > 0
        and (layer + 1) % config["decoder_sparse_step"] == 0
    )


def adapter_shapes(config: dict, rank: int) -> dict:
    """Every adapter key of lathe's layout -> its shape, for this config."""
    h, i_dense, i_moe = config["hidden_size"], config["intermediate_size"], config["moe_intermediate_size"]
    q_out = config["num_attention_heads"] * config["head_dim"]
    kv_out = config["num_key_value_heads"] * config["head_dim"]
    shapes = {}

    def site(module: str, d_in: int, d_out: int) -> None:
        shapes[f"{PREFIX}{module}.lora_A.weight"] = (rank, d_in)
        shapes[f"{PREFIX}{module}.lora_B.weight"] = (d_out, rank)

    for n in range(config["num_hidden_layers"]):
        layer = f"model.layers.{n}"
        site(f"{layer}.self_attn.q_proj", h, q_out)
        site(f"{layer}.self_attn.k_proj", h, kv_out)
        site(f"{layer}.self_attn.v_proj", h, kv_out)
        site(f"{layer}.self_attn.o_proj", q_out, h)
        if not is_moe_layer(config, n):
            site(f"{layer}.mlp.gate_proj", h, i_dense)
            site(f"{layer}.mlp.up_proj", h, i_dense)
            site(f"{layer}.mlp.down_proj", i_dense, h)
            continue
        experts = f"{PREFIX}{layer}.mlp.experts"
        shapes[f"{experts}.gate_proj.lora_A.weight"] = (rank, h)
        shapes[f"{experts}.up_proj.lora_A.weight"] = (rank, h)
        shapes[f"{experts}.down_proj.lora_B.weight"] = (h, rank)
        for e in range(config["num_experts"]):
            shapes[f"{experts}.{e}.gate_proj.lora_B.weight"] = (i_moe, rank)
            shapes[f"{experts}.{e}.up_proj.lora_B.weight"] = (i_moe, rank)
            shapes[f"{experts}.{e}.down_proj.lora_A.weight"] = (rank, i_moe)
    site("lm_head", h, config["vocab_size"])
    return shapes


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3MoeRMSNorm in f32: weight * x / sqrt(mean(x^2) + eps) over the last axis."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Qwen3MoeLora:
    """Base weights (frozen) + LoRA tensors (leaves; give them requires_grad to train) -> logits for one sequence."""

    def __init__(self, config: dict, base: dict, lora: dict, rank: int, alpha: float):
        self.config = config
        self.base = base
        self.lora = lora
        self.scale = alpha / rank
        self.routing = []  # filled by forward: one dict per MoE layer (layer, top_k_index, top_k_weight, probs)

    def w(self, name: str) -> torch.Tensor:
        return self.base[name]

    def linear(self, x: torch.Tensor, module: str) -> torch.Tensor:
        """x @ W.T (+ s * (x @ A.T) @ B.T when the adapter has this module)."""
        y = x @ self.w(f"{module}.weight").T
        key_a = f"{PREFIX}{module}.lora_A.weight"
        if key_a in self.lora:
            y = y + self.scale * ((x @ self.lora[key_a].T) @ self.lora[f"{PREFIX}{module}.lora_B.weight"].T)
        return y

    def attention(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """Eager GQA attention with q_norm/k_norm before RoPE. x (T, H) -> (T, H)."""
        c = self.config
        t, hd = x.shape[0], c["head_dim"]
        n_heads, n_kv = c["num_attention_heads"], c["num_key_value_heads"]
        eps = c["rms_norm_eps"]
        q = rms_norm(
            self.linear(x, f"{layer}.self_attn.q_proj").view(t, n_heads, hd),
            self.w(f"{layer}.self_attn.q_norm.weight"),
            eps,
        )
        k = rms_norm(
            self.linear(x, f"{layer}.self_attn.k_proj").view(t, n_kv, hd),
            self.w(f"{layer}.self_attn.k_norm.weight"),
            eps,
        )
        v = self.linear(x, f"{layer}.self_attn.v_proj").view(t, n_kv, hd)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # (heads, T, hd)
        theta = c["rope_parameters"]["rope_theta"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).to(torch.float) / hd))  # (hd/2,)
        freqs = torch.arange(t, dtype=torch.float)[:, None] * inv_freq[None, :]  # (T, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
        cos, sin = emb.cos(), emb.sin()
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = n_heads // n_kv
        k = k.repeat_interleave(group, dim=0)  # (heads, T, hd)
        v = v.repeat_interleave(group, dim=0)
        scores = (q @ k.transpose(1, 2)) * hd**-0.5  # (heads, T, T)
        causal = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)  # (T, T)
        probs = torch.softmax(scores + causal, dim=-1)
        out = (probs @ v).transpose(0, 1).reshape(t, n_heads * hd)  # (T, heads * hd)
        return self.linear(out, f"{layer}.self_attn.o_proj")

    def dense_mlp(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        gate = self.linear(x, f"{layer}.mlp.gate_proj")
        up = self.linear(x, f"{layer}.mlp.up_proj")
        return self.linear(torch.nn.functional.silu(gate) * up, f"{layer}.mlp.down_proj")

    def expert_lora(self, name: str) -> torch.Tensor | None:
        return self.lora.get(f"{PREFIX}{name}")

    def moe(self, x: torch.Tensor, layer: str, n: int) -> torch.Tensor:
        """Router (f32 softmax, top-k, renormalise) then dropless dispatch; combine in expert order. x (T, H)."""
        c = self.config
        router_logits = x @ self.w(f"{layer}.mlp.gate.weight").T  # (T, E)
        probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)  # (T, E)
        top_w, top_i = torch.topk(probs, c["num_experts_per_tok"], dim=-1)  # (T, k)
        if c["norm_topk_prob"]:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        self.routing.append({"layer": n, "top_k_index": top_i, "top_k_weight": top_w.detach(), "probs": probs.detach()})
        s = self.scale
        shared_ag = self.expert_lora(f"{layer}.mlp.experts.gate_proj.lora_A.weight")  # (r, H)
        shared_au = self.expert_lora(f"{layer}.mlp.experts.up_proj.lora_A.weight")  # (r, H)
        shared_bd = self.expert_lora(f"{layer}.mlp.experts.down_proj.lora_B.weight")  # (H, r)
        out = torch.zeros_like(x)  # (T, H)
        for e in range(c["num_experts"]):
            token_idx, slot = torch.where(top_i == e)
            if token_idx.numel() == 0:
                continue
            xe = x[token_idx]  # (T_e, H)
            expert = f"{layer}.mlp.experts.{e}"
            gate = xe @ self.w(f"{expert}.gate_proj.weight").T  # (T_e, I_moe)
            up = xe @ self.w(f"{expert}.up_proj.weight").T  # (T_e, I_moe)
            if shared_ag is not None:
                gate = gate + s * ((xe @ shared_ag.T) @ self.expert_lora(f"{expert}.gate_proj.lora_B.weight").T)
                up = up + s * ((xe @ shared_au.T) @ self.expert_lora(f"{expert}.up_proj.lora_B.weight").T)
            act = torch.nn.functional.silu(gate) * up  # (T_e, I_moe)
            down = act @ self.w(f"{expert}.down_proj.weight").T  # (T_e, H)
            if shared_bd is not None:
                down = down + s * ((act @ self.expert_lora(f"{expert}.down_proj.lora_A.weight").T) @ shared_bd.T)
            out = out.index_add(0, token_idx, down * top_w[token_idx, slot, None])
        return out

    def forward(self, tokens: list) -> torch.Tensor:
        """tokens (T,) -> logits (T, vocab)."""
        c = self.config
        eps = c["rms_norm_eps"]
        self.routing = []
        h = self.w("model.embed_tokens.weight")[torch.tensor(tokens, dtype=torch.long)]  # (T, H)
        for n in range(c["num_hidden_layers"]):
            layer = f"model.layers.{n}"
            h = h + self.attention(rms_norm(h, self.w(f"{layer}.input_layernorm.weight"), eps), layer)
            x = rms_norm(h, self.w(f"{layer}.post_attention_layernorm.weight"), eps)
            h = h + (self.moe(x, layer, n) if is_moe_layer(c, n) else self.dense_mlp(x, layer))
        h = rms_norm(h, self.w("model.norm.weight"), eps)
        return self.linear(h, "lm_head")
