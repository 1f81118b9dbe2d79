//! `ServiceError`: every way a control message can fail in the worker service, and whose fault it
//! is (Tinker's `user` / `server` categories). Messages name the run, sampler, field, datum or file
//! that was wrong and say what to do; they travel to the client unchanged.

use std::path::PathBuf;

use runtime::control::{ErrorCategory, FromWorker};
use runtime::ConfigError;
use thiserror::Error;

use super::memory::BudgetRefusal;
use crate::load::LoadError;
use crate::loss::{LossConfigError, TensorShapeError};
use crate::model::ModelError;
use crate::optim::OptimError;
use crate::train::TrainError;

/// A control message the service could not carry out.
#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("stale generation {got}: this worker already serves generation {current}; re-place the request")]
    StaleGeneration { got: u64, current: u64 },
    #[error("unknown training run `{run}`; create it (create_model) or load it from a checkpoint first")]
    UnknownRun { run: String },
    #[error("training run `{run}` already exists; drop it first or use another id")]
    RunExists { run: String },
    #[error("unknown sampler `{sampler}`; create a sampling session first")]
    UnknownSampler { sampler: String },
    #[error("sampler `{sampler}` already exists; drop it first or use another id")]
    SamplerExists { sampler: String },
    #[error("base model `{name}` is not served here (served: {served})")]
    UnknownBaseModel { name: String, served: String },
    #[error("datum {datum}: loss_fn_inputs[`{key}`]: {source}")]
    TensorShape { datum: usize, key: String, source: TensorShapeError },
    #[error(transparent)]
    Lora(#[from] ConfigError),
    #[error(transparent)]
    LossConfig(#[from] LossConfigError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("sampling: {field} is invalid: {why}")]
    Sampling { field: &'static str, why: String },
    #[error("checkpoint {}: {why}", dir.display())]
    Checkpoint { dir: PathBuf, why: String },
    #[error("checkpoint {}: {source}", dir.display())]
    CheckpointFile { dir: PathBuf, source: LoadError },
    #[error("cannot {action} {}: {source}; check the data directory's permissions and free space", path.display())]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot serialise {what}: {why}")]
    Encode { what: &'static str, why: String },
    #[error("the tokenizer of `{model}` cannot decode sampled tokens to check stop strings: {why}")]
    Decode { model: String, why: String },
    #[error("training run `{run}` appears twice in one batched step; this is a lathe bug, please report it")]
    RunTwiceInStep { run: String },
    /// A data-parallel hand-off carried a buffer of another run's shape: the coordinator built
    /// the chain wrong (its replicas come from one `CreateRun`), so it is lathe's fault.
    #[error(
        "set_grads for training run `{run}`: the buffer holds {got} values but the run's gradients hold {want}; \
         the replicas of a data-parallel run must be created with the same base model and LoRA config \
         (nothing was changed)"
    )]
    GradBufferLength { run: String, got: usize, want: usize },
    /// A run or sampler would exceed the worker's memory budget; nothing was allocated.
    #[error("{0}")]
    MemoryBudget(BudgetRefusal),
}

impl ServiceError {
    /// Who is at fault: the caller (retrying the same request fails the same way) or lathe.
    pub fn category(&self) -> ErrorCategory {
        use ErrorCategory::{Server, User};
        match self {
            ServiceError::StaleGeneration { .. }
            | ServiceError::Io { .. }
            | ServiceError::Encode { .. }
            | ServiceError::Decode { .. }
            | ServiceError::RunTwiceInStep { .. }
            | ServiceError::GradBufferLength { .. } => Server,
            ServiceError::Train(TrainError::Model(e)) | ServiceError::Model(e) => model_error_category(e),
            _ => User,
        }
    }

    /// The reply that reports this error.
    pub fn into_reply(self) -> FromWorker {
        FromWorker::Failed { category: self.category(), message: self.to_string() }
    }

    pub(super) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServiceError::Io { action, path: path.into(), source }
    }

    pub(super) fn checkpoint(dir: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        ServiceError::Checkpoint { dir: dir.into(), why: why.into() }
    }
}

/// Errors about the request's tokens, lengths or parameters are the caller's; a mismatch between
/// an adapter the service built itself and its model, or a broken forward/backward pairing, is
/// lathe's. (Adapters read from a directory are checked before use and fail as `Checkpoint`.)
fn model_error_category(e: &ModelError) -> ErrorCategory {
    match e {
        ModelError::LoraMismatch { .. }
        | ModelError::GradientLength { .. }
        | ModelError::ForwardMismatch { .. }
        | ModelError::ForwardWithoutLora
        | ModelError::Tenants { .. }
        | ModelError::TenantMismatch { .. }
        | ModelError::Config(_)
        | ModelError::Weight(_)
        | ModelError::UnsupportedFamily { .. }
        | ModelError::UnknownTinyModel { .. } => ErrorCategory::Server,
        _ => ErrorCategory::User,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_mistakes_are_user_errors_and_lathe_faults_are_server_errors() {
        assert_eq!(ServiceError::UnknownRun { run: "r".into() }.category(), ErrorCategory::User);
        let oov = ModelError::TokenOutOfVocab { index: 0, token: 9, vocab: 4 };
        assert_eq!(ServiceError::Train(TrainError::Model(oov)).category(), ErrorCategory::User);
        let mismatch = ModelError::LoraMismatch { why: "x".into() };
        assert_eq!(ServiceError::Model(mismatch).category(), ErrorCategory::Server);
        let io = ServiceError::io("write", "/x", std::io::Error::other("disk full"));
        assert_eq!(io.category(), ErrorCategory::Server);
        assert!(io.to_string().contains("/x") && io.to_string().contains("disk full"));
    }

    #[test]
    fn a_stale_generation_reply_is_a_server_failure_that_says_so() {
        let FromWorker::Failed { category, message } =
            ServiceError::StaleGeneration { got: 1, current: 2 }.into_reply()
        else {
            panic!("not a failure");
        };
        assert_eq!(category, ErrorCategory::Server);
        assert!(message.starts_with("stale generation"), "{message}");
    }
}
