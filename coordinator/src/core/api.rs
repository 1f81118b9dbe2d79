//! What the HTTP layer hands the core and what it gets back. Handlers only parse (JSON, protobuf,
//! path segments) into an [`ApiRequest`]; every decision that needs state — does the run exist,
//! is the session active, is this a retry — is the core's. The answer is a [`Reply`]: a JSON
//! body, a finished future's outcome (encoded by the handler), or a synchronous error.

use runtime::control::{AdamConfig, MemoryReport};
use runtime::wire::FbRequest as WireFbRequest;
use serde_json::Value;

use super::futures::Outcome;
use super::ids::{CheckpointKind, RequestId, RunId, SamplerId, SessionId, TinkerPath};
use super::sampling::SampleRequestJson;
use crate::error::CoordinatorError;

/// The LoRA settings of a create_model request, before defaults (the seed may be absent: the
/// core then draws one from its id source and records it, so replay stays exact).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraRequest {
    pub rank: usize,
    pub seed: Option<u64>,
    pub alpha: Option<f32>,
    pub train_unembed: Option<bool>,
    pub train_mlp: Option<bool>,
    pub train_attn: Option<bool>,
}

/// A save request's fields (save_weights, save_weights_for_sampler, save_weights_external).
#[derive(Clone, Debug, PartialEq)]
pub struct SaveRequest {
    pub path: Option<String>,
    pub overwrite: bool,
    pub ttl_seconds: Option<i64>,
    pub user_metadata: Option<Value>,
    pub sampling_session_seq_id: Option<u64>,
    /// The sampler kind the SDK asked for (`snapshot`, the default, or `inflight`).
    pub kind: Option<String>,
    /// Whether the client asked for the export to be age-encrypted (non-empty recipients).
    pub age_encryption_recipients: bool,
}

/// The body of a request ordered by the run's `seq_id`. A part that failed to parse is carried
/// as its error: it still consumes its `seq_id` and fails its future as a user error.
#[derive(Clone, Debug, PartialEq)]
pub enum SequencedBody {
    ForwardBackward(Result<WireFbRequest, CoordinatorError>),
    Optim(Result<AdamConfig, CoordinatorError>),
    SaveState(SaveRequest),
    SaveForSampler(SaveRequest),
    SaveExternal(SaveRequest),
    Load { path: String, optimizer: bool },
}

/// One API call, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiRequest {
    CreateSession,
    Heartbeat {
        session: String,
    },
    FinishSession {
        session: String,
    },
    CreateModel {
        session: String,
        model_seq_id: u64,
        base_model: String,
        lora: Option<LoraRequest>,
        user_metadata: Option<Value>,
        idempotency_key: Option<String>,
    },
    /// load_weights addressed by session + model_seq_id: a new run from a checkpoint.
    CreateFromState {
        session: String,
        model_seq_id: u64,
        path: String,
        optimizer: bool,
        base_model: Option<String>,
        user_metadata: Option<Value>,
        idempotency_key: Option<String>,
    },
    GetInfo {
        model_id: String,
    },
    Sequenced {
        model_id: String,
        seq_id: i64,
        idempotency_key: Option<String>,
        body: SequencedBody,
    },
    RetrieveFuture {
        request_id: String,
    },
    CreateSampler {
        session: String,
        sampling_session_seq_id: u64,
        model_path: Option<String>,
        base_model: Option<String>,
    },
    GetSampler {
        sampler: String,
    },
    Sample {
        request: Box<SampleRequestJson>,
        idempotency_key: Option<String>,
    },
    ListRuns {
        limit: Option<usize>,
        offset: Option<usize>,
    },
    GetRun {
        run: String,
    },
    ListRunCheckpoints {
        run: String,
    },
    ListCheckpoints {
        limit: Option<usize>,
        offset: Option<usize>,
    },
    WeightsInfo {
        tinker_path: String,
    },
    DeleteCheckpoint {
        run: String,
        kind: String,
        name: String,
    },
    SetTtl {
        run: String,
        kind: String,
        name: String,
        ttl_seconds: Option<i64>,
    },
    /// The export's directory, for the handler to list and sign (file listing is I/O).
    ExternalWeights {
        run: String,
        kind: String,
        name: String,
    },
    Memory,
}

impl ApiRequest {
    /// The session, run, sampler and request ids this request names (as given; for log lines).
    pub fn named_ids(&self) -> (Option<&str>, Option<&str>, Option<&str>, Option<&str>) {
        match self {
            ApiRequest::Heartbeat { session } | ApiRequest::FinishSession { session } => {
                (Some(session), None, None, None)
            }
            ApiRequest::CreateModel { session, .. } | ApiRequest::CreateFromState { session, .. } => {
                (Some(session), None, None, None)
            }
            ApiRequest::CreateSampler { session, .. } => (Some(session), None, None, None),
            ApiRequest::GetInfo { model_id } | ApiRequest::Sequenced { model_id, .. } => {
                (None, Some(model_id), None, None)
            }
            ApiRequest::GetRun { run } | ApiRequest::ListRunCheckpoints { run } => (None, Some(run), None, None),
            ApiRequest::DeleteCheckpoint { run, .. }
            | ApiRequest::SetTtl { run, .. }
            | ApiRequest::ExternalWeights { run, .. } => (None, Some(run), None, None),
            ApiRequest::RetrieveFuture { request_id } => (None, None, None, Some(request_id)),
            ApiRequest::GetSampler { sampler } => (None, None, Some(sampler), None),
            ApiRequest::Sample { request, .. } => (None, None, request.sampling_session_id.as_deref(), None),
            _ => (None, None, None, None),
        }
    }
}

/// What a pending future is waiting on, as `retrieve_future`'s `queue_state` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueState {
    Active,
    /// Its run is being rebuilt (restart or lost worker): it will run, later.
    PausedCapacity,
    /// Queued behind its base model's limit.
    PausedRateLimit,
}

impl QueueState {
    pub fn wire(self) -> &'static str {
        match self {
            QueueState::Active => "active",
            QueueState::PausedCapacity => "paused_capacity",
            QueueState::PausedRateLimit => "paused_rate_limit",
        }
    }
}

/// The answer to one [`ApiRequest`].
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Json(Value),
    /// A finished future, for `retrieve_future` to encode.
    Outcome(Outcome),
    /// `retrieve_future` of a pending future after the long poll: `try_again`.
    TryAgain {
        request_id: RequestId,
        queue_state: QueueState,
    },
    Memory(MemoryReport),
    /// A checkpoint directory to list and sign download URLs for.
    ExportDir {
        path: TinkerPath,
        dir: std::path::PathBuf,
    },
}

pub type Reply = Result<Answer, CoordinatorError>;

/// Who asked: an opaque token the shell maps back to the waiting handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyTo(pub u64);

/// Typed views of the ids a request names, for log lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ids {
    pub session: Option<SessionId>,
    pub run: Option<RunId>,
    pub sampler: Option<SamplerId>,
    pub request: Option<RequestId>,
}

impl CheckpointKind {
    /// The kind of a save request.
    pub fn of_save(body: &SequencedBody) -> Option<CheckpointKind> {
        match body {
            SequencedBody::SaveState(_) => Some(CheckpointKind::Weights),
            SequencedBody::SaveForSampler(r) if r.path.is_some() => Some(CheckpointKind::SamplerWeights),
            SequencedBody::SaveExternal(_) => Some(CheckpointKind::ExternalWeights),
            _ => None,
        }
    }
}
