//! RoPE frequency tables, including Llama-3 `rope_scaling`, computed as transformers does in f32.

/// Llama-3 frequency scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: u32,
}

/// `cos`/`sin` tables `(positions_max, head_dim / 2)` for [`crate::RopeOps`].
#[derive(Clone, Debug)]
pub struct RopeTable {
    pub head_dim: usize,
    pub positions_max: usize,
    pub cos: Vec<f32>, // (positions_max, head_dim / 2)
    pub sin: Vec<f32>, // (positions_max, head_dim / 2)
}
