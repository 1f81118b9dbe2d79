//! Memory accounting of one worker: what each training run (adapter, gradients, AdamW's two
//! moments), each sampler (its frozen adapter copy) and each served base model holds, and the
//! admission check against the worker's budget (`--memory-bytes-max`). Every value is f32, so a
//! value costs [`F32_BYTES`]. Figures are derived from the live state on every call rather than
//! kept in counters, so they cannot drift from what is really held.
//!
//! A message that would allocate a run or a sampler asks [`WorkerService::admit`] first, with the
//! bytes the new object will need; beyond the budget it is refused as a user error and nothing is
//! allocated.

use std::fmt;

use runtime::control::{MemoryReport, RunMemory, SamplerMemory};

use super::error::ServiceError;
use super::WorkerService;
use crate::adapter::{LoraSite, LoraWeights};
use crate::optim::TrainState;

/// Bytes of one f32 value.
pub const F32_BYTES: u64 = 4;

const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// The f32 values of one adapter (A and B of every site) at `rank`: `Σ rank · (d_in + d_out)`.
pub fn adapter_values(sites: &[LoraSite], rank: usize) -> u64 {
    sites.iter().map(|s| (rank * (s.d_in + s.d_out)) as u64).sum()
}

/// Bytes held by one set of LoRA pairs (an adapter, its gradients or one Adam moment).
pub fn weights_bytes(w: &LoraWeights) -> u64 {
    w.numel() as u64 * F32_BYTES
}

/// A training run's bytes, by what holds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunBytes {
    pub adapter: u64,
    pub gradients: u64,
    /// AdamW's first and second moments together.
    pub adam: u64,
}

impl RunBytes {
    /// What a run with an adapter of `adapter_values` f32 values holds: the adapter, gradients of
    /// the same shapes, and two moments of the same shapes.
    pub fn for_values(adapter_values: u64) -> Self {
        let adapter = adapter_values * F32_BYTES;
        RunBytes { adapter, gradients: adapter, adam: 2 * adapter }
    }

    /// What `state` holds now.
    pub fn of_state(state: &TrainState) -> Self {
        RunBytes {
            adapter: weights_bytes(&state.params),
            gradients: weights_bytes(&state.grads),
            adam: weights_bytes(&state.adam_m) + weights_bytes(&state.adam_v),
        }
    }

    pub fn total(&self) -> u64 {
        self.adapter + self.gradients + self.adam
    }
}

/// What a refused message would have allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// A training run `run`, created by `action` (`create_model`, `load_state`).
    Run { action: &'static str, run: String, bytes: RunBytes },
    /// Sampler `sampler`'s frozen adapter copy.
    Sampler { sampler: String, adapter_bytes: u64 },
    /// The transient activations of datum `datum` of a forward(_backward), `tokens` tokens (freed
    /// when it ends): requests run in as many passes as they need, but one datum is never split.
    /// `gradient_copy_bytes`: the copy of the run's gradients held while its request runs split.
    Step { run: String, datum: usize, tokens: usize, bytes: u64, gradient_copy_bytes: u64 },
}

impl Need {
    pub fn total(&self) -> u64 {
        match self {
            Need::Run { bytes, .. } => bytes.total(),
            Need::Sampler { adapter_bytes, .. } => *adapter_bytes,
            Need::Step { bytes, gradient_copy_bytes, .. } => bytes + gradient_copy_bytes,
        }
    }
}

/// Why a message was refused for memory: what it needed, what was in use, the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetRefusal {
    pub need: Need,
    pub base_bytes: u64,
    pub runs_bytes: u64,
    pub samplers_bytes: u64,
    pub budget_bytes: u64,
}

impl BudgetRefusal {
    pub fn used_bytes(&self) -> u64 {
        self.base_bytes + self.runs_bytes + self.samplers_bytes
    }
}

/// `bytes` in MiB with two decimals.
pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / BYTES_PER_MIB)
}

impl fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let needed = self.need.total();
        match &self.need {
            Need::Run { action, run, bytes } => write!(
                f,
                "{action} for training run `{run}` needs {} (adapter {}, gradients {}, Adam state {})",
                mib(needed),
                mib(bytes.adapter),
                mib(bytes.gradients),
                mib(bytes.adam)
            )?,
            Need::Sampler { sampler, .. } => {
                write!(f, "sampler `{sampler}` needs {} for its adapter copy", mib(needed))?;
            }
            Need::Step { run, datum, tokens, bytes, gradient_copy_bytes } => {
                write!(
                    f,
                    "datum {datum} of a forward_backward of training run `{run}` has {tokens} tokens and needs about \
                     {} for its activations while it runs",
                    mib(*bytes)
                )?;
                if *gradient_copy_bytes > 0 {
                    write!(
                        f,
                        ", plus {} for a copy of the run's gradients held while the request runs in several \
                         passes, {} in all",
                        mib(*gradient_copy_bytes),
                        mib(needed)
                    )?;
                }
            }
        }
        let used = self.used_bytes();
        write!(
            f,
            ", but this worker has {} in use (base models {}, training runs {}, samplers {}) of its {} budget, \
             leaving {}. To make room, end sessions or unload training runs and samplers you no longer use",
            mib(used),
            mib(self.base_bytes),
            mib(self.runs_bytes),
            mib(self.samplers_bytes),
            mib(self.budget_bytes),
            mib(self.budget_bytes.saturating_sub(used)),
        )?;
        if matches!(self.need, Need::Step { .. }) {
            // Say why splitting the request is not the fix: the worker already splits it.
            write!(
                f,
                "; or shorten the datum (a request too big for one pass runs in several, but a datum is never split)"
            )?;
        }
        if matches!(self.need, Need::Run { .. }) {
            write!(f, "; or use a smaller rank or train fewer modules (train_mlp, train_attn, train_unembed)")?;
        }
        write!(f, "; or restart the worker with a larger --memory-bytes-max")
    }
}

impl WorkerService {
    /// Sets the memory budget in bytes (`None`: no limit). Base models count against it; runs
    /// and samplers that would exceed it are refused.
    pub fn with_memory_budget(mut self, bytes: Option<u64>) -> Self {
        self.memory_budget_bytes = bytes;
        self
    }

    /// What this worker holds, by owner, with totals and the budget.
    pub fn memory_report(&self) -> MemoryReport {
        let base_models: std::collections::BTreeMap<String, u64> =
            self.models.iter().map(|(name, m)| (name.clone(), m.model.weight_bytes())).collect();
        let runs: std::collections::BTreeMap<String, RunMemory> = self
            .runs
            .iter()
            .map(|(id, r)| {
                let b = RunBytes::of_state(&r.state);
                let mem = RunMemory {
                    base_model: r.base_model.clone(),
                    adapter_bytes: b.adapter,
                    gradient_bytes: b.gradients,
                    adam_bytes: b.adam,
                    total_bytes: b.total(),
                };
                (id.clone(), mem)
            })
            .collect();
        let samplers: std::collections::BTreeMap<String, SamplerMemory> = self
            .samplers
            .iter()
            .map(|(id, s)| {
                let adapter_bytes = s.adapter.as_ref().map_or(0, |(_, w)| weights_bytes(w));
                (id.clone(), SamplerMemory { base_model: s.base_model.clone(), adapter_bytes })
            })
            .collect();
        let base_bytes = base_models.values().sum();
        let runs_bytes = runs.values().map(|r| r.total_bytes).sum();
        let samplers_bytes = samplers.values().map(|s| s.adapter_bytes).sum();
        let used_bytes = base_bytes + runs_bytes + samplers_bytes;
        MemoryReport {
            base_models,
            runs,
            samplers,
            base_bytes,
            runs_bytes,
            samplers_bytes,
            used_bytes,
            budget_bytes: self.memory_budget_bytes,
            free_bytes: self.memory_budget_bytes.map(|b| b.saturating_sub(used_bytes)),
        }
    }

    /// Refuses `need` when what is in use plus `need` exceeds the budget.
    ///
    /// # Errors
    /// `ServiceError::MemoryBudget` giving the figures and what to do.
    pub(super) fn admit(&self, need: Need) -> Result<(), ServiceError> {
        let Some(budget_bytes) = self.memory_budget_bytes else {
            return Ok(());
        };
        let r = self.memory_report();
        if r.used_bytes.saturating_add(need.total()) <= budget_bytes {
            return Ok(());
        }
        Err(refusal(need, budget_bytes, &r))
    }
}

/// The refusal of `need` against `budget_bytes`, with what `r` says is in use.
pub(super) fn refusal(need: Need, budget_bytes: u64, r: &MemoryReport) -> ServiceError {
    ServiceError::MemoryBudget(BudgetRefusal {
        need,
        base_bytes: r.base_bytes,
        runs_bytes: r.runs_bytes,
        samplers_bytes: r.samplers_bytes,
        budget_bytes,
    })
}

#[cfg(test)]
mod tests {
    use runtime::LoraConfig;

    use super::*;
    use crate::adapter::lora_sites;
    use crate::tiny::tiny_model;

    fn site(path: &str, d_in: usize, d_out: usize) -> LoraSite {
        LoraSite { path: path.into(), d_in, d_out }
    }

    #[test]
    fn a_run_of_two_known_sites_needs_the_hand_counted_bytes() {
        // q_proj 64 -> 64 and down_proj 128 -> 64 at rank 8:
        // values = 8·(64+64) + 8·(128+64) = 1024 + 1536 = 2560; adapter 2560·4 = 10240 bytes,
        // gradients 10240, Adam m+v 20480, total 40960.
        let sites = [site("model.layers.0.self_attn.q_proj", 64, 64), site("model.layers.0.mlp.down_proj", 128, 64)];
        assert_eq!(adapter_values(&sites, 8), 2560);
        let b = RunBytes::for_values(adapter_values(&sites, 8));
        assert_eq!(b, RunBytes { adapter: 10_240, gradients: 10_240, adam: 20_480 });
        assert_eq!(b.total(), 40_960);
    }

    #[test]
    fn the_predicted_bytes_of_a_fresh_run_equal_what_its_train_state_holds() {
        // The MoE model's expert sites are stacked; the prediction must count them as stored.
        for name in ["tiny/llama3", "tiny/qwen3-moe"] {
            let (config, _) = tiny_model(name, 7).unwrap();
            for lora in [
                LoraConfig::new(4, 8.0, 1, true, true, true).unwrap(),
                LoraConfig::new(2, 8.0, 1, false, true, false).unwrap(),
            ] {
                let sites = lora_sites(&config, &lora);
                let state = TrainState::new(&sites, &lora);
                let predicted = RunBytes::for_values(adapter_values(&sites, lora.rank));
                assert_eq!(predicted, RunBytes::of_state(&state), "{name} {lora:?}");
                assert_eq!(predicted.total(), 4 * 4 * state.params.numel() as u64);
            }
        }
    }

    #[test]
    fn a_refusal_gives_needed_in_use_and_budget_in_mib_and_says_what_to_do() {
        let refusal = BudgetRefusal {
            need: Need::Run {
                action: "create_model",
                run: "r1".into(),
                bytes: RunBytes { adapter: 1 << 20, gradients: 1 << 20, adam: 2 << 20 },
            },
            base_bytes: 10 << 20,
            runs_bytes: 3 << 20,
            samplers_bytes: 1 << 19,
            budget_bytes: 15 << 20,
        };
        let text = refusal.to_string();
        for want in [
            "create_model for training run `r1` needs 4.00 MiB (adapter 1.00 MiB, gradients 1.00 MiB, Adam state 2.00 MiB)",
            "13.50 MiB in use (base models 10.00 MiB, training runs 3.00 MiB, samplers 0.50 MiB) of its 15.00 MiB budget",
            "leaving 1.50 MiB",
            "end sessions or unload",
            "smaller rank",
            "--memory-bytes-max",
        ] {
            assert!(text.contains(want), "missing {want:?} in {text}");
        }
        let sampler = BudgetRefusal { need: Need::Sampler { sampler: "s".into(), adapter_bytes: 1 << 20 }, ..refusal };
        let text = sampler.to_string();
        assert!(text.starts_with("sampler `s` needs 1.00 MiB for its adapter copy"), "{text}");
        assert!(!text.contains("smaller rank") && text.contains("--memory-bytes-max"), "{text}");
    }
}
