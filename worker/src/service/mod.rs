//! `WorkerService`: one device's executor of control messages (`runtime::control`). It owns the
//! served base models, the training runs (one LoRA `TrainState` each) and the samplers (a base
//! model plus an optional frozen adapter), and answers every `Envelope` with exactly one
//! `FromWorker`. Errors never escape as panics: they become `Failed { category, message }`.
//!
//! Data-parallel hand-offs: `GetGrads` / `SetGrads` read and replace a run's accumulated
//! gradients as one flat buffer (see `grads`).
//!
//! Memory: with a budget (`with_memory_budget`), a run or sampler that would not fit is refused
//! before anything is allocated (see `memory`); `ToWorker::Memory` reports what is held.
//!
//! Generations: an envelope older than the newest generation seen is refused as
//! `Failed { Server, "stale generation …" }`; a newer one is adopted. Files are written only into
//! the directories the coordinator names (see `fsio` for how), never elsewhere.

mod checkpoint;
mod convert;
mod error;
mod fsio;
mod grads;
mod memory;
mod peft;
mod prompt;
mod runs;
mod samplers;
mod step;
mod stop;

use std::collections::BTreeMap;

use kernels::CpuBackend;
use runtime::control::{BaseModelInfo, Envelope, FbRequest, FromWorker, ToWorker};
use runtime::LoraConfig;
use tokenizers::Tokenizer;

pub use error::ServiceError;
pub use memory::{BudgetRefusal, Need, RunBytes};

use crate::adapter::LoraWeights;
use crate::model::Model;
use crate::optim::TrainState;

/// A base model this worker serves: what the coordinator advertises, the model, and its tokenizer
/// (needed only for stop strings).
pub struct ServedModel {
    pub info: BaseModelInfo,
    pub model: Model<CpuBackend>,
    pub tokenizer: Option<Tokenizer>,
}

/// One training run's in-memory state.
struct Run {
    base_model: String,
    state: TrainState,
}

/// One sampler: a base model and, unless it samples the base model alone, a frozen adapter.
struct Sampler {
    base_model: String,
    adapter: Option<(LoraConfig, LoraWeights)>,
}

/// Executes control messages on the models of one device.
pub struct WorkerService {
    generation: u64,
    models: BTreeMap<String, ServedModel>,
    runs: BTreeMap<String, Run>,
    samplers: BTreeMap<String, Sampler>,
    /// Counts directory writes, naming their temporary siblings uniquely.
    writes: u64,
    /// Base models, runs and samplers together may hold at most this many bytes (`None`: no limit).
    memory_budget_bytes: Option<u64>,
}

impl WorkerService {
    /// A service at `generation` serving `models`.
    ///
    /// # Panics
    /// When two models share a name (the caller built the catalogue wrong).
    pub fn new(generation: u64, models: Vec<ServedModel>) -> Self {
        let mut by_name = BTreeMap::new();
        for m in models {
            let name = m.info.name.clone();
            assert!(by_name.insert(name.clone(), m).is_none(), "base model `{name}` is served twice");
        }
        WorkerService {
            generation,
            models: by_name,
            runs: BTreeMap::new(),
            samplers: BTreeMap::new(),
            writes: 0,
            memory_budget_bytes: None,
        }
    }

    /// The newest generation seen.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Training run `run`'s state (adapter, accumulated gradients, Adam moments), read only: for
    /// tests and tools that check what requests did to it.
    pub fn train_state(&self, run: &str) -> Option<&TrainState> {
        self.runs.get(run).map(|r| &r.state)
    }

    /// What the coordinator advertises for each served model, in name order.
    pub fn model_infos(&self) -> Vec<BaseModelInfo> {
        self.models.values().map(|m| m.info.clone()).collect()
    }

    /// Carries out one control message.
    pub fn handle(&mut self, env: Envelope) -> FromWorker {
        if env.generation < self.generation {
            return ServiceError::StaleGeneration { got: env.generation, current: self.generation }.into_reply();
        }
        self.generation = env.generation;
        self.dispatch(env.body).unwrap_or_else(ServiceError::into_reply)
    }

    fn dispatch(&mut self, body: ToWorker) -> Result<FromWorker, ServiceError> {
        match body {
            ToWorker::CreateRun { run, base_model, lora } => self.create_run(run, &base_model, lora),
            ToWorker::DropRun { run } => {
                self.runs.remove(&run);
                Ok(FromWorker::Done)
            }
            ToWorker::ForwardBackward { run, data, loss_fn, loss_config, forward_only } => {
                Ok(self.forward_backward_one(FbRequest { run, data, loss_fn, loss_config, forward_only }))
            }
            ToWorker::OptimStep { run, adam } => self.optim_step(&run, &adam),
            ToWorker::SaveState { run, dir, optimizer } => self.save_state(&run, &dir, optimizer),
            ToWorker::LoadState { run, dir, optimizer } => self.load_state(run, &dir, optimizer),
            ToWorker::ExportPeft { run, dir } => self.export_peft(&run, &dir),
            ToWorker::CreateSampler { sampler, base_model, adapter } => {
                self.create_sampler(sampler, &base_model, adapter)
            }
            ToWorker::DropSampler { sampler } => {
                self.samplers.remove(&sampler);
                Ok(FromWorker::Done)
            }
            ToWorker::Sample(req) => self.sample(&req),
            ToWorker::Memory => Ok(FromWorker::Memory(self.memory_report())),
            ToWorker::ForwardBackwardMany { items } => Ok(self.forward_backward_many(items)),
            ToWorker::GetGrads { run } => self.get_grads(&run),
            ToWorker::SetGrads { run, grads } => self.set_grads(&run, &grads),
        }
    }

    /// The next unique number for a directory write.
    fn next_write(&mut self) -> u64 {
        self.writes += 1;
        self.writes
    }
}

/// The served model called `name`.
fn served<'a>(models: &'a BTreeMap<String, ServedModel>, name: &str) -> Result<&'a ServedModel, ServiceError> {
    models.get(name).ok_or_else(|| ServiceError::UnknownBaseModel {
        name: name.to_string(),
        served: models.keys().cloned().collect::<Vec<_>>().join(", "),
    })
}
