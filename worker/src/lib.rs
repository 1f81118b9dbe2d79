//! One device, one shard: model families, loaders (safetensors, GGUF), LoRA, losses, the
//! optimizer and the sampler. Driven only by calls from its owner; never reads a clock or an
//! unseeded random source.

pub mod adapter;
pub mod init;
pub mod load;
pub mod loss;
pub mod model;
pub mod optim;
pub mod rng;
pub mod sample;
pub mod service;
pub mod tensor;
pub mod tiny;
pub mod train;
