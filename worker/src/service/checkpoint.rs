//! lathe's training-checkpoint directory (`SaveState` / `LoadState`): the PEFT adapter files
//! (`adapter_config.json`, `adapter_model.safetensors`), `optimizer.safetensors` with both Adam
//! moments under `m.<peft key>` / `v.<peft key>` (only when saved with the optimizer), and
//! `state.json` (format version, base model name, `LoraConfig`, step, whether the optimizer was
//! saved). Values are f32 as held in memory, so a save/load round trip is bit-exact.

use std::path::Path;

use runtime::{LoraConfig, ModelConfig};
use serde::{Deserialize, Serialize};

use super::error::ServiceError;
use super::fsio::safetensors_bytes;
use super::peft::{
    adapter_config, adapter_tensors, read_tensors, weights_from_tensors, ADAPTER_CONFIG, ADAPTER_WEIGHTS,
};
use crate::adapter::lora_sites;
use crate::optim::TrainState;

pub(super) const STATE_JSON: &str = "state.json";
pub(super) const OPTIMIZER: &str = "optimizer.safetensors";
/// Bumped whenever the layout changes incompatibly; older versions are refused by name.
pub(super) const FORMAT_VERSION: u32 = 1;

/// `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct StateFile {
    pub format_version: u32,
    pub base_model: String,
    pub lora: LoraConfig,
    /// Optimizer steps taken when saved.
    pub step: u64,
    /// Whether `optimizer.safetensors` was written.
    pub optimizer: bool,
}

/// Whether `dir` is a lathe training checkpoint (rather than a bare PEFT adapter).
pub(super) fn is_state_dir(dir: &Path) -> bool {
    dir.join(STATE_JSON).is_file()
}

/// The files of a checkpoint of `state` on `base_model`, with Adam moments when `optimizer`.
///
/// # Errors
/// `ServiceError::Encode` when a file cannot be serialised.
pub(super) fn state_files(
    base_model: &str,
    state: &TrainState,
    optimizer: bool,
) -> Result<Vec<(&'static str, Vec<u8>)>, ServiceError> {
    let header = StateFile {
        format_version: FORMAT_VERSION,
        base_model: base_model.to_string(),
        lora: state.lora.clone(),
        step: state.step,
        optimizer,
    };
    let mut files = vec![
        (ADAPTER_CONFIG, pretty(ADAPTER_CONFIG, &adapter_config(base_model, &state.lora))?),
        (ADAPTER_WEIGHTS, safetensors_bytes(&adapter_tensors(&state.params, ""))?),
    ];
    if optimizer {
        let mut moments = adapter_tensors(&state.adam_m, "m.");
        moments.tensors.extend(adapter_tensors(&state.adam_v, "v.").tensors);
        files.push((OPTIMIZER, safetensors_bytes(&moments)?));
    }
    files.push((STATE_JSON, pretty(STATE_JSON, &header)?));
    Ok(files)
}

/// Reads and checks `dir/state.json`.
///
/// # Errors
/// `ServiceError::Checkpoint` when it is missing, malformed, of another format version, or holds
/// an invalid LoRA config.
pub(super) fn read_header(dir: &Path) -> Result<StateFile, ServiceError> {
    let path = dir.join(STATE_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ServiceError::checkpoint(dir, format!("cannot read {STATE_JSON} ({e}); is this a save_state checkpoint?"))
    })?;
    let header: StateFile = serde_json::from_str(&text)
        .map_err(|e| ServiceError::checkpoint(dir, format!("{STATE_JSON} is malformed: {e}")))?;
    if header.format_version != FORMAT_VERSION {
        return Err(ServiceError::checkpoint(
            dir,
            format!(
                "{STATE_JSON} has format_version {}, this lathe reads version {FORMAT_VERSION}",
                header.format_version
            ),
        ));
    }
    let l = &header.lora;
    LoraConfig::new(l.rank, l.alpha, l.seed, l.train_attn, l.train_mlp, l.train_unembed)
        .map_err(|e| ServiceError::checkpoint(dir, format!("{STATE_JSON}: {e}")))?;
    Ok(header)
}

/// Loads the training state described by `header` from `dir` for a model of `config`. With
/// `optimizer` the Adam moments and step come from the checkpoint; without, they start fresh
/// (zero moments, step 0). Gradients always start at zero.
///
/// # Errors
/// `ServiceError::Checkpoint` / `CheckpointFile` for missing, corrupt or mismatched files, or when
/// `optimizer` is asked of a checkpoint saved without it.
pub(super) fn read_state(
    dir: &Path,
    header: &StateFile,
    config: &ModelConfig,
    optimizer: bool,
) -> Result<TrainState, ServiceError> {
    let sites = lora_sites(config, &header.lora);
    let rank = header.lora.rank;
    let mut adapter = read_tensors(dir, ADAPTER_WEIGHTS)?;
    let params = weights_from_tensors(&mut adapter, "", &sites, rank, dir, ADAPTER_WEIGHTS)?;
    let zeros = params.zeros_like();
    let (adam_m, adam_v, step) = if optimizer {
        if !header.optimizer {
            return Err(ServiceError::checkpoint(
                dir,
                "it was saved without optimizer state; load it without the optimizer, or save with it",
            ));
        }
        let mut moments = read_tensors(dir, OPTIMIZER)?;
        let m = weights_from_tensors(&mut moments, "m.", &sites, rank, dir, OPTIMIZER)?;
        let v = weights_from_tensors(&mut moments, "v.", &sites, rank, dir, OPTIMIZER)?;
        if let Some(stray) = moments.tensors.keys().next() {
            return Err(ServiceError::checkpoint(dir, format!("{OPTIMIZER} has an unexpected tensor `{stray}`")));
        }
        (m, v, header.step)
    } else {
        (zeros.clone(), zeros.clone(), 0)
    };
    Ok(TrainState { lora: header.lora.clone(), params, grads: zeros, adam_m, adam_v, step })
}

/// `v` as pretty-printed JSON.
fn pretty<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec_pretty(v).map_err(|e| ServiceError::Encode { what, why: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_through_json_and_other_versions_are_refused() {
        let header = StateFile {
            format_version: FORMAT_VERSION,
            base_model: "tiny/llama3".into(),
            lora: LoraConfig::new(4, 32.0, 9, true, false, true).unwrap(),
            step: 7,
            optimizer: true,
        };
        let text = serde_json::to_string(&header).unwrap();
        assert_eq!(serde_json::from_str::<StateFile>(&text).unwrap(), header);
        let dir = std::env::temp_dir().join(format!("lathe-ckpt-header-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_JSON), &text).unwrap();
        assert_eq!(read_header(&dir).unwrap(), header);
        let v2 = StateFile { format_version: FORMAT_VERSION + 1, ..header };
        std::fs::write(dir.join(STATE_JSON), serde_json::to_string(&v2).unwrap()).unwrap();
        assert!(read_header(&dir).unwrap_err().to_string().contains("format_version"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
