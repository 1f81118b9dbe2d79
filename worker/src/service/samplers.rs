//! Sampler messages: create a sampler (base model alone, an adapter read from a checkpoint or PEFT
//! directory, or a snapshot of a live run's adapter) and sample from it, with stop token ids, stop
//! strings, EOS, prompt logprobs and top-k alternatives.

use std::path::{Path, PathBuf};

use runtime::control::{
    FromWorker, SampleRequest, SampleResult, SampledSequence, SamplerAdapter, StopReason as WireStop,
};
use runtime::LoraConfig;

use super::checkpoint::{is_state_dir, read_header, read_state, StateFile};
use super::error::ServiceError;
use super::memory::{adapter_values, weights_bytes, Need, F32_BYTES};
use super::peft::{parse_adapter_config, read_tensors, weights_from_tensors, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use super::prompt::score_prompt;
use super::stop::StopStrings;
use super::{served, Sampler, ServedModel, WorkerService};
use crate::adapter::{lora_sites, LoraWeights};
use crate::sample::{sample_with, SampleParams, StopReason};

impl WorkerService {
    pub(super) fn create_sampler(
        &mut self,
        sampler: String,
        base_model: &str,
        adapter: SamplerAdapter,
    ) -> Result<FromWorker, ServiceError> {
        let served = served(&self.models, base_model)?;
        if self.samplers.contains_key(&sampler) {
            return Err(ServiceError::SamplerExists { sampler });
        }
        // Everything is checked and the adapter's size known before anything is read or copied.
        let (source, adapter_bytes) = match adapter {
            SamplerAdapter::None => (Source::None, 0),
            SamplerAdapter::Dir(dir) => {
                let found = inspect_adapter_dir(&dir, served)?;
                let lora = found.lora();
                let values = adapter_values(&lora_sites(served.model.config(), lora), lora.rank);
                (Source::Dir(dir, found), values * F32_BYTES)
            }
            SamplerAdapter::LiveRun(run) => {
                let r = self.runs.get(&run).ok_or(ServiceError::UnknownRun { run: run.clone() })?;
                if r.base_model != base_model {
                    return Err(ServiceError::Sampling {
                        field: "base_model",
                        why: format!("training run `{run}` is on `{}`, not `{base_model}`", r.base_model),
                    });
                }
                let bytes = weights_bytes(&r.state.params);
                (Source::LiveRun(run), bytes)
            }
        };
        self.admit(Need::Sampler { sampler: sampler.clone(), adapter_bytes })?;
        let adapter = match source {
            Source::None => None,
            Source::Dir(dir, found) => Some(read_adapter_dir(&dir, served, found)?),
            Source::LiveRun(run) => {
                let r = self.runs.get(&run).ok_or(ServiceError::UnknownRun { run: run.clone() })?;
                Some((r.state.lora.clone(), r.state.params.clone()))
            }
        };
        self.samplers.insert(sampler, Sampler { base_model: base_model.to_string(), adapter });
        Ok(FromWorker::Done)
    }

    pub(super) fn sample(&self, req: &SampleRequest) -> Result<FromWorker, ServiceError> {
        let s = self.samplers.get(&req.sampler).ok_or(ServiceError::UnknownSampler { sampler: req.sampler.clone() })?;
        let served = served(&self.models, &s.base_model)?;
        let model = &served.model;
        check_request(req, served)?;
        let lora = s.adapter.as_ref().map(|(c, w)| (c, w));
        let p = &req.params;
        let mut stop_token_ids = p.stop.token_ids.clone();
        if p.stop.eos {
            stop_token_ids.extend(&model.config().eos_token_ids);
        }
        let params = SampleParams {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_k: p.top_k,
            top_p: p.top_p,
            seed: p.seed,
            stop_token_ids,
        };
        let sequences = match &served.tokenizer {
            Some(tok) if !p.stop.strings.is_empty() => {
                let mut rule = StopStrings::new(tok, &p.stop.strings);
                let out =
                    sample_with(model, lora, &req.prompt, &params, req.num_samples, req.topk_sample_logprobs, |t| {
                        rule.hit(t)
                    })?;
                if let Some(why) = rule.decode_error {
                    return Err(ServiceError::Decode { model: s.base_model.clone(), why });
                }
                out
            }
            _ => sample_with(model, lora, &req.prompt, &params, req.num_samples, req.topk_sample_logprobs, |_| false)?,
        };
        let scores = if req.prompt_logprobs || req.topk_prompt_logprobs > 0 {
            Some(score_prompt(model, lora, &req.prompt, req.prompt_logprobs_last_n, req.topk_prompt_logprobs)?)
        } else {
            None
        };
        let sequences = sequences
            .into_iter()
            .map(|q| SampledSequence {
                tokens: q.tokens,
                logprobs: q.logprobs,
                stop_reason: match q.stop_reason {
                    StopReason::Stop => WireStop::Stop,
                    StopReason::Length => WireStop::Length,
                },
                topk_logprobs: (req.topk_sample_logprobs > 0).then_some(q.topk_logprobs),
            })
            .collect();
        let (prompt_logprobs, topk_prompt_logprobs) = match scores {
            Some(sc) => (req.prompt_logprobs.then_some(sc.logprobs), (req.topk_prompt_logprobs > 0).then_some(sc.topk)),
            None => (None, None),
        };
        Ok(FromWorker::Sampled(SampleResult { sequences, prompt_logprobs, topk_prompt_logprobs }))
    }
}

/// The checks a sample request needs beyond `SampleParams::validate`, as user errors naming the field.
fn check_request(req: &SampleRequest, served: &ServedModel) -> Result<(), ServiceError> {
    let bad = |field, why: String| Err(ServiceError::Sampling { field, why });
    if req.num_samples == 0 {
        return bad("num_samples", "is 0; ask for at least one sample".into());
    }
    if req.prompt.is_empty() {
        return bad("prompt", "is empty; send at least one token".into());
    }
    let context = served.info.max_context_length.min(served.model.config().max_position_embeddings);
    if req.prompt.len() + req.params.max_tokens > context {
        return bad(
            "max_tokens",
            format!(
                "the prompt's {} tokens plus max_tokens {} exceed `{}`'s context length {context}; lower max_tokens \
                 or shorten the prompt",
                req.prompt.len(),
                req.params.max_tokens,
                served.info.name
            ),
        );
    }
    let strings = &req.params.stop.strings;
    if strings.iter().any(String::is_empty) {
        return bad("stop", "contains an empty stop string, which would end every sample at once; remove it".into());
    }
    if !strings.is_empty() && served.tokenizer.is_none() {
        return bad(
            "stop",
            format!(
                "stop strings need a tokenizer to decode samples, and `{}` has none; use stop token ids instead",
                served.info.name
            ),
        );
    }
    Ok(())
}

/// Where a new sampler's adapter comes from, once checked.
enum Source {
    None,
    Dir(PathBuf, AdapterDir),
    LiveRun(String),
}

/// An adapter directory as its small config file describes it.
enum AdapterDir {
    /// A training checkpoint (`state.json`).
    State(StateFile),
    /// A PEFT adapter (`adapter_config.json`).
    Peft(LoraConfig),
}

impl AdapterDir {
    fn lora(&self) -> &LoraConfig {
        match self {
            AdapterDir::State(header) => &header.lora,
            AdapterDir::Peft(lora) => lora,
        }
    }
}

/// Reads and checks the config of a training checkpoint or a PEFT directory for `served`,
/// without reading its tensors.
fn inspect_adapter_dir(dir: &Path, served: &ServedModel) -> Result<AdapterDir, ServiceError> {
    let name = &served.info.name;
    if is_state_dir(dir) {
        let header = read_header(dir)?;
        if &header.base_model != name {
            return Err(ServiceError::checkpoint(
                dir,
                format!("it was saved from base model `{}`, not `{name}`", header.base_model),
            ));
        }
        return Ok(AdapterDir::State(header));
    }
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ServiceError::checkpoint(dir, format!("cannot read {ADAPTER_CONFIG} ({e}); is this a saved adapter directory?"))
    })?;
    let peft = parse_adapter_config(dir, &text)?;
    if let Some(base) = peft.base_model.as_ref().filter(|b| *b != name) {
        return Err(ServiceError::checkpoint(dir, format!("the adapter is for base model `{base}`, not `{name}`")));
    }
    Ok(AdapterDir::Peft(peft.lora))
}

/// Reads the adapter tensors of `dir`, which [`inspect_adapter_dir`] described as `found`.
fn read_adapter_dir(
    dir: &Path,
    served: &ServedModel,
    found: AdapterDir,
) -> Result<(LoraConfig, LoraWeights), ServiceError> {
    let config = served.model.config();
    let lora = match found {
        AdapterDir::State(header) => {
            let state = read_state(dir, &header, config, false)?;
            return Ok((state.lora, state.params));
        }
        AdapterDir::Peft(lora) => lora,
    };
    let mut tensors = read_tensors(dir, ADAPTER_WEIGHTS)?;
    let sites = lora_sites(config, &lora);
    // A PEFT export lists MoE experts one by one; lathe stores each expert site stacked.
    crate::adapter::stack_peft_experts(config, &sites, lora.rank, &mut tensors)
        .map_err(|why| ServiceError::checkpoint(dir, format!("{ADAPTER_WEIGHTS}: {why}")))?;
    let weights = weights_from_tensors(&mut tensors, "", &sites, lora.rank, dir, ADAPTER_WEIGHTS)?;
    Ok((lora, weights))
}
