//! The control protocol between the coordinator and a worker (design §2: "the worker is driven only
//! by control messages"). Plain data, serde-serialisable, so the same messages travel in-process
//! (`lathe serve`) or over TCP later. Every request carries the placement generation; a worker
//! refuses generations older than the one it serves.
//!
//! Tensors inside `Datum` use Tinker's public dtypes (float32, int64) and shapes, already decoded
//! from the wire (protobuf or JSON) by the coordinator.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::lora::LoraConfig;

/// Values of a loss input tensor, in Tinker's two public dtypes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TensorValues {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A dense tensor: row-major values and their shape (`shape` product == values length).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub values: TensorValues,
}

/// One training example: the model input tokens and the loss function's inputs by name
/// (`target_tokens`, `weights`, `logprobs`, `advantages`, …), and where its tokens came from
/// when the client said so.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Datum {
    pub tokens: Vec<u32>,
    pub loss_fn_inputs: BTreeMap<String, Tensor>,
    /// Absent from JSON written before provenance was kept (the coordinator's journal rows), and
    /// then `None` (serde's rule for a missing `Option`, spelled out by `default`). Always
    /// serialised, `null` included: the transport's bincode is not self-describing, so a field
    /// left out of the encoding would be read from the next field's bytes.
    #[serde(default)]
    pub provenance: Option<Provenance>,
}

/// Where a datum's positions came from (the SDK's `Datum.with_provenance`, sent by
/// tinker-cookbook's RL loops): consecutive runs that tile the model input and the rows of
/// `target_tokens`, each naming a sequence the client sampled. The two lists come as a pair.
/// `wire::spans` checks the tiling; that the named sequences are this tenant's is the
/// coordinator's check. No loss of lathe reads them (stable_reinforce would).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Tiles `Datum::tokens`: the lengths sum to its length, and positions follow from order.
    pub model_input: Vec<ProvenanceSpan>,
    /// Tiles the rows of `loss_fn_inputs["target_tokens"]` the same way.
    pub loss_fn_inputs: Vec<ProvenanceSpan>,
}

/// One run of a provenance tiling: `length` consecutive datum positions that are positions
/// `offset..offset + length` of sequence `sequence_id`'s prompt or of its sampled tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenanceSpan {
    pub source: SpanSource,
    /// A `sample_sequence_id` the client got from `asample`.
    pub sequence_id: String,
    pub offset: u64,
    pub length: u64,
}

/// Which tokens of the named sequence a [`ProvenanceSpan`] reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpanSource {
    /// The prompt of the sampling request that produced the sequence.
    Prompt,
    /// The sequence's sampled tokens.
    Sampled,
}

/// `torch.optim.AdamW` hyperparameters as Tinker sends them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub grad_clip_norm: f64,
}

/// What ends generation, besides `max_tokens`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StopConditions {
    /// Token ids that end a sample (the stop token is included in the output).
    pub token_ids: Vec<u32>,
    /// Strings that end a sample once the decoded text contains them.
    pub strings: Vec<String>,
    /// Whether the model's EOS tokens end a sample (`stop: []` in Tinker turns this off).
    pub eos: bool,
}

/// Tinker `SamplingParams`, validated by the coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    pub max_tokens: usize,
    pub temperature: f32,
    /// −1 = off.
    pub top_k: i32,
    pub top_p: f32,
    pub seed: u64,
    pub stop: StopConditions,
}

/// Requests the coordinator sends a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Creates a training run's LoRA adapter (A from `lora.seed`, B zero) and optimizer state.
    CreateRun {
        run: String,
        base_model: String,
        lora: LoraConfig,
    },
    /// Frees a run's in-memory state (its checkpoints on disk are untouched).
    DropRun {
        run: String,
    },
    /// Adds gradients (unless `forward_only`) and returns per-datum outputs and metrics.
    ForwardBackward {
        run: String,
        data: Vec<Datum>,
        loss_fn: String,
        loss_config: BTreeMap<String, f64>,
        forward_only: bool,
    },
    /// Applies and zeroes the accumulated gradients.
    OptimStep {
        run: String,
        adam: AdamConfig,
    },
    /// Writes the run's adapter (and, with `optimizer`, Adam moments and step) into `dir`.
    SaveState {
        run: String,
        dir: PathBuf,
        optimizer: bool,
    },
    /// Creates or replaces `run` from a `SaveState` directory; optimizer state too when asked.
    LoadState {
        run: String,
        dir: PathBuf,
        optimizer: bool,
    },
    /// Writes a standard PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`) into `dir`.
    ExportPeft {
        run: String,
        dir: PathBuf,
    },
    /// Makes a sampler: the base model alone, or with the adapter saved in `adapter_dir`
    /// (a `SaveState` or `ExportPeft` directory), or with a copy of a live run's current adapter.
    CreateSampler {
        sampler: String,
        base_model: String,
        adapter: SamplerAdapter,
    },
    DropSampler {
        sampler: String,
    },
    Sample(SampleRequest),
    /// Reports the worker's memory: base models, each run and sampler, totals and the budget.
    Memory,
    /// Several runs' forward(_backward) requests as one multi-tenant step: the items on one base
    /// model share a packed pass (each run through its own adapter). Answered by
    /// `FromWorker::Each`, one reply per item in order, each exactly what `ForwardBackward` alone
    /// would answer. A run appears at most once (the coordinator never has two of a run's
    /// requests in flight).
    ForwardBackwardMany {
        items: Vec<FbRequest>,
    },
    /// Reads a run's accumulated gradients (answered by `FromWorker::Grads`), so that the next
    /// replica of a data-parallel chain can continue the same running total.
    GetGrads {
        run: String,
    },
    /// Replaces a run's accumulated gradients with `grads` (answered by `FromWorker::Done`): the
    /// hand-off into the next replica of a chain, or the chain's final total back to every replica.
    /// Refused, changing nothing, when `grads` does not hold exactly the run's number of values.
    SetGrads {
        run: String,
        grads: GradBuffer,
    },
}

/// One run's accumulated LoRA gradients as one flat buffer, in a layout fixed by the run's LoRA
/// config and base model alone, so that replicas created by the same `CreateRun` read and write
/// each other's buffers value for value: every LoRA site in ascending order of its HF module path
/// (the order the worker keeps its sites in), and for each site its `A (rank, d_in)` then its
/// `B (d_out, rank)`, each row-major. A MoE expert site is one stacked site here, as in lathe's
/// own checkpoints. Values are the exact f32 bits, so a copy round-trips bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradBuffer {
    pub values: Vec<f32>,
}

impl GradBuffer {
    /// The values as little-endian bytes, 4 per value (a frame's raw body).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// The inverse of [`GradBuffer::to_le_bytes`]; None when the length is not a multiple of 4.
    pub fn from_le_bytes(bytes: &[u8]) -> Option<GradBuffer> {
        if !bytes.len().is_multiple_of(4) {
            return None;
        }
        let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Some(GradBuffer { values })
    }
}

/// Gradient buffers can be larger than a frame header may be (a SmolLM2 rank-32 adapter's are
/// ~137 MB), so over TCP they travel as the frame's raw body: `take_body` moves a message's buffer
/// out (leaving it empty in the header), `put_body` moves it back in after decoding. Messages
/// without a buffer have an empty body.
fn grads_of_to_worker(body: &mut ToWorker) -> Option<&mut GradBuffer> {
    match body {
        ToWorker::SetGrads { grads, .. } => Some(grads),
        _ => None,
    }
}

impl Envelope {
    pub fn take_body(&mut self) -> Vec<u8> {
        grads_of_to_worker(&mut self.body)
            .map(|g| std::mem::take(&mut g.values))
            .map_or_else(Vec::new, |values| GradBuffer { values }.to_le_bytes())
    }

    /// # Errors
    /// A non-empty body on a message that carries none, or one that is not whole f32s.
    pub fn put_body(&mut self, body: &[u8]) -> Result<(), String> {
        put_grads(grads_of_to_worker(&mut self.body), body)
    }
}

impl FromWorker {
    pub fn take_body(&mut self) -> Vec<u8> {
        match self {
            FromWorker::Grads(g) => GradBuffer { values: std::mem::take(&mut g.values) }.to_le_bytes(),
            _ => Vec::new(),
        }
    }

    /// # Errors
    /// As [`Envelope::put_body`].
    pub fn put_body(&mut self, body: &[u8]) -> Result<(), String> {
        let slot = match self {
            FromWorker::Grads(g) => Some(g),
            _ => None,
        };
        put_grads(slot, body)
    }
}

fn put_grads(slot: Option<&mut GradBuffer>, body: &[u8]) -> Result<(), String> {
    match slot {
        _ if body.is_empty() => Ok(()),
        None => Err(format!("a {}-byte body on a message that carries none", body.len())),
        Some(g) => {
            let from_body = GradBuffer::from_le_bytes(body)
                .ok_or_else(|| format!("a gradient body of {} bytes is not whole f32 values", body.len()))?;
            if !g.values.is_empty() {
                return Err("a gradient buffer both in the header and in the body".into());
            }
            *g = from_body;
            Ok(())
        }
    }
}

/// One run's request inside `ToWorker::ForwardBackwardMany`: the fields of `ToWorker::ForwardBackward`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FbRequest {
    pub run: String,
    pub data: Vec<Datum>,
    pub loss_fn: String,
    pub loss_config: BTreeMap<String, f64>,
    pub forward_only: bool,
}

/// Where a sampler's adapter comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SamplerAdapter {
    None,
    Dir(PathBuf),
    LiveRun(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRequest {
    pub sampler: String,
    pub prompt: Vec<u32>,
    pub num_samples: usize,
    pub params: SamplingConfig,
    /// Return the logprob of every prompt token (NaN at position 0 and before `last_n`).
    pub prompt_logprobs: bool,
    /// Only the last N prompt positions are scored when set.
    pub prompt_logprobs_last_n: Option<usize>,
    /// Top-k alternatives per prompt position (0 = off).
    pub topk_prompt_logprobs: usize,
    /// Top-k alternatives per sampled token (0 = off).
    pub topk_sample_logprobs: usize,
}

/// A control message: the body plus the placement generation it belongs to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub generation: u64,
    pub body: ToWorker,
}

/// Who is at fault when a request fails (Tinker's error categories).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCategory {
    /// The caller's input was wrong; retrying the same request fails the same way.
    User,
    /// lathe failed.
    Server,
}

/// One datum's outputs of a forward(_backward).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatumOutput {
    /// Target logprobs, shaped like `target_tokens` (`(N)` or `(N, K)`).
    pub logprobs: Tensor,
    /// Per-token loss `(N)`.
    pub elementwise_loss: Tensor,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardBackwardResult {
    pub outputs: Vec<DatumOutput>,
    /// `name:reduction` → value; always has `loss:sum`.
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    Stop,
    Length,
}

/// Top-k alternatives at one position: `(token id, logprob)` pairs, best first.
pub type TopK = Vec<(u32, f32)>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledSequence {
    pub tokens: Vec<u32>,
    pub logprobs: Vec<f32>,
    pub stop_reason: StopReason,
    /// One row per sampled token when asked for.
    pub topk_logprobs: Option<Vec<TopK>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    pub sequences: Vec<SampledSequence>,
    /// `len(prompt)` values, NaN where not computed (always position 0).
    pub prompt_logprobs: Option<Vec<f32>>,
    /// One row per prompt position (empty row at position 0).
    pub topk_prompt_logprobs: Option<Vec<TopK>>,
}

/// Replies a worker sends back, one per request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    Done,
    ForwardBackward(ForwardBackwardResult),
    Optim {
        metrics: BTreeMap<String, f64>,
    },
    /// A state save or export finished: total bytes written.
    Saved {
        bytes: u64,
    },
    Sampled(SampleResult),
    Failed {
        category: ErrorCategory,
        message: String,
    },
    /// The answer to `ToWorker::Memory`.
    Memory(MemoryReport),
    /// The answers to `ToWorker::ForwardBackwardMany`, one per item in order.
    Each(Vec<FromWorker>),
    /// The answer to `ToWorker::GetGrads`.
    Grads(GradBuffer),
}

impl FromWorker {
    /// The reply's variant name, for messages about a reply that was not the expected one
    /// (without its payload, which may be large).
    pub fn kind(&self) -> &'static str {
        match self {
            FromWorker::Done => "Done",
            FromWorker::ForwardBackward(_) => "ForwardBackward",
            FromWorker::Optim { .. } => "Optim",
            FromWorker::Saved { .. } => "Saved",
            FromWorker::Sampled(_) => "Sampled",
            FromWorker::Failed { .. } => "Failed",
            FromWorker::Memory(_) => "Memory",
            FromWorker::Each(_) => "Each",
            FromWorker::Grads(_) => "Grads",
        }
    }
}

/// One training run's share of worker memory. Every value is f32 (4 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMemory {
    pub base_model: String,
    /// The LoRA factors A and B of every adapted module.
    pub adapter_bytes: u64,
    /// The accumulated gradients (the adapter's shapes).
    pub gradient_bytes: u64,
    /// AdamW's first and second moments together.
    pub adam_bytes: u64,
    /// adapter + gradients + Adam.
    pub total_bytes: u64,
}

/// One sampler's share of worker memory: its frozen adapter copy (0 when it samples the base model alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerMemory {
    pub base_model: String,
    pub adapter_bytes: u64,
}

/// What a worker holds in memory, by owner, against its budget (`--memory-bytes-max`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Served base model name → bytes of its frozen weights.
    pub base_models: BTreeMap<String, u64>,
    /// Training run id → its bytes.
    pub runs: BTreeMap<String, RunMemory>,
    /// Sampler id → its bytes.
    pub samplers: BTreeMap<String, SamplerMemory>,
    /// Sum of `base_models`.
    pub base_bytes: u64,
    /// Sum of the runs' `total_bytes`.
    pub runs_bytes: u64,
    /// Sum of the samplers' `adapter_bytes`.
    pub samplers_bytes: u64,
    /// base + runs + samplers.
    pub used_bytes: u64,
    /// The budget; `None` when the worker runs without one.
    pub budget_bytes: Option<u64>,
    /// budget − used (0 when over), `None` without a budget.
    pub free_bytes: Option<u64>,
}

/// A base model a worker serves, as the coordinator advertises it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseModelInfo {
    /// The name clients use (`HuggingFaceTB/SmolLM2-135M-Instruct`, `tiny/llama3`).
    pub name: String,
    /// HF `model_type` (`llama`, `qwen3`, …).
    pub arch: String,
    pub max_context_length: usize,
    pub vocab_size: usize,
    /// A local HF-style directory with `tokenizer.json` (for the SDK's `get_tokenizer()`), if any.
    pub tokenizer_dir: Option<PathBuf>,
}

/// How the coordinator reaches a worker: one request in, one reply out. The in-process link of
/// `lathe serve` runs the worker on its own thread; a TCP link will frame the same messages.
/// Implementations never block the caller's async executor.
pub trait WorkerLink: Send + Sync + 'static {
    fn call(&self, msg: Envelope) -> std::pin::Pin<Box<dyn std::future::Future<Output = FromWorker> + Send>>;
}

#[cfg(test)]
mod body_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gradient_buffers_move_to_the_body_and_back_bit_for_bit() {
        let values = vec![0.0, -0.0, 1.5e-42, -3.25, f32::MAX, f32::from_bits(0x7fc0_1234)];
        let mut env = Envelope {
            generation: 3,
            body: ToWorker::SetGrads { run: "r".into(), grads: GradBuffer { values: values.clone() } },
        };
        let body = env.take_body();
        assert_eq!(body.len(), values.len() * 4);
        assert!(matches!(&env.body, ToWorker::SetGrads { grads, .. } if grads.values.is_empty()));
        env.put_body(&body).unwrap();
        let ToWorker::SetGrads { grads, .. } = &env.body else { panic!() };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&grads.values), bits(&values));

        let mut reply = FromWorker::Grads(GradBuffer { values: values.clone() });
        let body = reply.take_body();
        reply.put_body(&body).unwrap();
        let FromWorker::Grads(g) = &reply else { panic!() };
        assert_eq!(bits(&g.values), bits(&values));
    }

    #[test]
    fn a_body_where_none_belongs_or_of_broken_length_is_refused() {
        let mut done = FromWorker::Done;
        assert!(done.take_body().is_empty());
        assert!(done.put_body(&[]).is_ok());
        assert!(done.put_body(&[1, 2, 3, 4]).unwrap_err().contains("carries none"));
        let mut g = FromWorker::Grads(GradBuffer { values: vec![] });
        assert!(g.put_body(&[1, 2, 3]).unwrap_err().contains("whole f32"));
    }
}
