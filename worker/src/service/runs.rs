//! Training-run messages: create, optimizer step, save / load a training checkpoint, export a
//! PEFT adapter (forward(_backward) is in `step`). Each validates fully before touching a run, so a refused
//! request leaves the run exactly as it was.

use std::path::Path;

use runtime::control::{AdamConfig, FromWorker};
use runtime::LoraConfig;

use super::checkpoint::{read_header, read_state, state_files};
use super::error::ServiceError;
use super::fsio::{safetensors_bytes, write_dir};
use super::memory::{adapter_values, Need, RunBytes};
use super::peft::{adapter_config, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use super::{convert, served, Run, WorkerService};
use crate::adapter::lora_sites;
use crate::optim::TrainState;

impl WorkerService {
    pub(super) fn create_run(
        &mut self,
        run: String,
        base_model: &str,
        lora: LoraConfig,
    ) -> Result<FromWorker, ServiceError> {
        let served = served(&self.models, base_model)?;
        let lora =
            LoraConfig::new(lora.rank, lora.alpha, lora.seed, lora.train_attn, lora.train_mlp, lora.train_unembed)?;
        if self.runs.contains_key(&run) {
            return Err(ServiceError::RunExists { run });
        }
        let sites = lora_sites(served.model.config(), &lora);
        let bytes = RunBytes::for_values(adapter_values(&sites, lora.rank));
        self.admit(Need::Run { action: "create_model", run: run.clone(), bytes })?;
        let state = TrainState::new(&sites, &lora);
        self.runs.insert(run, Run { base_model: base_model.to_string(), state });
        Ok(FromWorker::Done)
    }

    pub(super) fn optim_step(&mut self, run: &str, adam: &AdamConfig) -> Result<FromWorker, ServiceError> {
        let r = self.runs.get_mut(run).ok_or_else(|| ServiceError::UnknownRun { run: run.to_string() })?;
        let model = &served(&self.models, &r.base_model)?.model;
        let params = convert::adam(adam)?;
        let metrics = r.state.optim_step(model.backend(), &params)?;
        Ok(FromWorker::Optim { metrics: metrics.to_map() })
    }

    pub(super) fn save_state(&mut self, run: &str, dir: &Path, optimizer: bool) -> Result<FromWorker, ServiceError> {
        let r = self.runs.get(run).ok_or_else(|| ServiceError::UnknownRun { run: run.to_string() })?;
        let files = state_files(&r.base_model, &r.state, optimizer)?;
        let bytes = write_dir(dir, self.next_write(), &files)?;
        Ok(FromWorker::Saved { bytes })
    }

    /// Creates `run` from a checkpoint, or replaces the state of an existing `run` (which must be
    /// on the same base model with the same LoRA shape, so its size does not change). A new run
    /// must fit the memory budget.
    pub(super) fn load_state(&mut self, run: String, dir: &Path, optimizer: bool) -> Result<FromWorker, ServiceError> {
        let header = read_header(dir)?;
        let served = self.models.get(&header.base_model).ok_or_else(|| {
            ServiceError::checkpoint(
                dir,
                format!(
                    "it was saved from base model `{}`, which this server does not serve (served: {})",
                    header.base_model,
                    self.models.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )
        })?;
        if let Some(existing) = self.runs.get(&run) {
            if existing.base_model != header.base_model {
                return Err(ServiceError::checkpoint(
                    dir,
                    format!(
                        "it was saved from base model `{}`, but training run `{run}` is on `{}`",
                        header.base_model, existing.base_model
                    ),
                ));
            }
            let (have, want) = (&existing.state.lora, &header.lora);
            let shape = |l: &LoraConfig| (l.rank, l.alpha.to_bits(), l.train_attn, l.train_mlp, l.train_unembed);
            if shape(have) != shape(want) {
                return Err(ServiceError::checkpoint(
                    dir,
                    format!("its LoRA config {want:?} differs from training run `{run}`'s {have:?}"),
                ));
            }
        } else {
            let sites = lora_sites(served.model.config(), &header.lora);
            let bytes = RunBytes::for_values(adapter_values(&sites, header.lora.rank));
            self.admit(Need::Run { action: "load_state", run: run.clone(), bytes })?;
        }
        let state = read_state(dir, &header, served.model.config(), optimizer)?;
        self.runs.insert(run, Run { base_model: header.base_model, state });
        Ok(FromWorker::Done)
    }

    pub(super) fn export_peft(&mut self, run: &str, dir: &Path) -> Result<FromWorker, ServiceError> {
        let r = self.runs.get(run).ok_or_else(|| ServiceError::UnknownRun { run: run.to_string() })?;
        let model_config = served(&self.models, &r.base_model)?.model.config();
        let config = serde_json::to_vec_pretty(&adapter_config(&r.base_model, &r.state.lora))
            .map_err(|e| ServiceError::Encode { what: ADAPTER_CONFIG, why: e.to_string() })?;
        // Standard PEFT keys; MoE expert sites are expanded per expert (shared factor copied into each).
        let tensors = crate::adapter::peft_tensors(model_config, &r.state.params);
        let files = [(ADAPTER_CONFIG, config), (ADAPTER_WEIGHTS, safetensors_bytes(&tensors)?)];
        let bytes = write_dir(dir, self.next_write(), &files)?;
        Ok(FromWorker::Saved { bytes })
    }
}
