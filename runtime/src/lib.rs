//! lathe's shared vocabulary: every type that the coordinator and the worker must agree on.
//! No math lives here, and no I/O beyond parsing except membership (`lease`, which talks to etcd)
//! and the coordinator↔worker byte transport (`transport`).

pub mod clock;
pub mod control;
pub mod error;
pub mod lease;
pub mod lora;
pub mod model_config;
pub mod plan;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;
pub mod wire;

pub use error::ConfigError;
pub use lora::LoraConfig;
pub use model_config::{Family, ModelConfig, MoeConfig, RopeScaling};
