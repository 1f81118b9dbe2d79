//! The model families (Llama 3, Qwen2, Qwen3, Qwen3-MoE): forward over packed sequences to logits and
//! logprobs, backward to LoRA gradients (base frozen), and the prefill/decode steps the sampler
//! drives. The same code runs on every `kernels::Backend`; only the ops differ.
//!
//! Math: HF transformers in f32, per `reference/sharding-and-formats.md` §1.1–1.4.

mod acts;
mod backward;
mod batch;
mod decode;
mod dense;
mod error;
mod layer;
mod lora;
mod moe;
mod moe_backward;
mod moe_shared;
mod tenants;
mod weights;

pub use acts::Forward;
pub use batch::PackedBatch;
pub use decode::KvCache;
pub use dense::Model;
pub use error::ModelError;
pub(crate) use moe::expert_fractions;
pub use tenants::Tenant;
