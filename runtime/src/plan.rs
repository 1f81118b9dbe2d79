//! Sharding plans and parameter ownership (design §5). A plan says how one base model (and every
//! training run on it) is spread over a group of workers, its *shards*; ownership — which shards
//! hold a parameter — is a pure function of the parameter's global name, the plan and the model's
//! shape. Checkpoints always use global names, so a run saved under one plan loads under another:
//! each shard reads the names it owns.
//!
//! - `Single`: one shard holds everything.
//! - `DataParallel { replicas }`: every shard holds everything; a batch's datums are split over
//!   the replicas and their LoRA gradients reduced in datum order.
//! - `Pipeline { stages }`: contiguous, balanced layer ranges; the embedding lives on the first
//!   stage, the final norm and the unembedding on the last.
//! - `ExpertParallel { ep }` (mixture-of-experts models): experts in contiguous balanced blocks,
//!   everything else (attention, norms, router, embeddings) on every shard.
//!
//! `Auto` picks `Single` for one worker, `DataParallel` over every worker when the model fits one
//! worker's budget, and otherwise the fewest pipeline stages (experts for an MoE model) that fit.

use std::ops::Range;

use thiserror::Error;

use crate::model_config::ModelConfig;

/// How one base model is spread over its shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Plan {
    Single,
    DataParallel { replicas: usize },
    Pipeline { stages: usize },
    ExpertParallel { ep: usize },
}

/// What `--plan` asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanChoice {
    Auto,
    Forced(Plan),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error("--plan {0:?}: expected auto, single, dp=N, pp=N or ep=N (N >= 2)")]
    Syntax(String),
    #[error("{plan:?} needs {needed} workers; {have} joined (start more workers or choose a smaller plan)")]
    TooFewWorkers { plan: Plan, needed: usize, have: usize },
    #[error("pp={stages} splits {layers} layers; use at most one stage per layer")]
    TooManyStages { stages: usize, layers: usize },
    #[error(
        "ep={ep}: the model has {experts} experts per layer (ep must be 2..={experts}); dense models cannot use ep"
    )]
    BadExpertSplit { ep: usize, experts: usize },
    #[error(
        "the model needs {model_bytes} bytes and no plan over {workers} workers with these budgets holds it; \
         add workers or raise --memory-bytes-max"
    )]
    DoesNotFit { model_bytes: u64, workers: usize },
}

impl PlanChoice {
    /// Parses `auto`, `single`, `dp=N`, `pp=N`, `ep=N`.
    pub fn parse(text: &str) -> Result<PlanChoice, PlanError> {
        let bad = || PlanError::Syntax(text.to_string());
        match text {
            "auto" => return Ok(PlanChoice::Auto),
            "single" => return Ok(PlanChoice::Forced(Plan::Single)),
            _ => {}
        }
        let (kind, n) = text.split_once('=').ok_or_else(bad)?;
        let n: usize = n.parse().map_err(|_| bad())?;
        if n < 2 {
            return Err(bad());
        }
        let plan = match kind {
            "dp" => Plan::DataParallel { replicas: n },
            "pp" => Plan::Pipeline { stages: n },
            "ep" => Plan::ExpertParallel { ep: n },
            _ => return Err(bad()),
        };
        Ok(PlanChoice::Forced(plan))
    }
}

impl Plan {
    /// Shards (workers) the plan needs.
    pub fn shards(self) -> usize {
        match self {
            Plan::Single => 1,
            Plan::DataParallel { replicas } => replicas,
            Plan::Pipeline { stages } => stages,
            Plan::ExpertParallel { ep } => ep,
        }
    }

    /// Whether the plan can shard `config` at all (stage and expert counts).
    pub fn check(self, config: &ModelConfig) -> Result<(), PlanError> {
        match self {
            Plan::Pipeline { stages } if stages > config.num_hidden_layers => {
                Err(PlanError::TooManyStages { stages, layers: config.num_hidden_layers })
            }
            Plan::ExpertParallel { ep } => {
                let experts = config.moe.as_ref().map_or(0, |m| m.num_experts);
                if ep < 2 || ep > experts {
                    Err(PlanError::BadExpertSplit { ep, experts })
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

/// `n` items split into `parts` contiguous ranges whose sizes differ by at most one (the first
/// `n % parts` ranges get the extra item).
///
/// # Panics
/// When `parts` is 0 or `part >= parts` (a caller bug).
pub fn balanced_range(n: usize, parts: usize, part: usize) -> Range<usize> {
    assert!(parts > 0 && part < parts, "part {part} of {parts}");
    let (base, extra) = (n / parts, n % parts);
    let start = part * base + part.min(extra);
    let len = base + usize::from(part < extra);
    start..start + len
}

/// The shard (stage or expert block) an index falls in under [`balanced_range`].
pub fn balanced_owner(n: usize, parts: usize, index: usize) -> usize {
    assert!(index < n, "index {index} of {n}");
    (0..parts).find(|&p| balanced_range(n, parts, p).contains(&index)).unwrap_or(parts - 1)
}

/// What a global parameter (or LoRA site) name is about, for ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Embedding (`model.embed_tokens`).
    Embedding,
    /// Final norm or unembedding (`model.norm`, `lm_head`).
    Head,
    /// Inside decoder layer `layer`, in routed expert `expert` if any.
    Layer { layer: usize, expert: Option<usize> },
}

fn place_of(name: &str) -> Option<Place> {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    if name.starts_with("model.embed_tokens") {
        return Some(Place::Embedding);
    }
    if name.starts_with("model.norm") || name.starts_with("lm_head") {
        return Some(Place::Head);
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let expert = rest.strip_prefix("mlp.experts.").and_then(|r| r.split('.').next()).and_then(|e| e.parse().ok());
    Some(Place::Layer { layer, expert })
}

/// The shards that hold parameter `name` (a HF weight name or a LoRA site path) under `plan`, in
/// increasing order. A name lathe does not recognise is held by every shard (it is small: no
/// unrecognised name is a layer's weight).
pub fn owners(name: &str, plan: Plan, config: &ModelConfig) -> Vec<usize> {
    let all = || (0..plan.shards()).collect::<Vec<_>>();
    let Some(place) = place_of(name) else { return all() };
    match plan {
        Plan::Single => vec![0],
        Plan::DataParallel { .. } => all(),
        Plan::Pipeline { stages } => match place {
            Place::Embedding => vec![0],
            Place::Head => vec![stages - 1],
            Place::Layer { layer, .. } => vec![balanced_owner(config.num_hidden_layers, stages, layer)],
        },
        Plan::ExpertParallel { ep } => match (place, config.moe.as_ref()) {
            (Place::Layer { expert: Some(e), .. }, Some(moe)) if e < moe.num_experts => {
                vec![balanced_owner(moe.num_experts, ep, e)]
            }
            _ => all(),
        },
    }
}

/// The plan `Auto` picks for a model of `model_bytes` over workers with these budgets (None:
/// unlimited). `Forced` plans are checked against the worker count and the model's shape.
pub fn choose(
    choice: PlanChoice,
    config: &ModelConfig,
    model_bytes: u64,
    budgets_bytes: &[Option<u64>],
) -> Result<Plan, PlanError> {
    let workers = budgets_bytes.len();
    let plan = match choice {
        PlanChoice::Forced(plan) => plan,
        PlanChoice::Auto => {
            let fits = |bytes: u64| budgets_bytes.iter().all(|b| b.is_none_or(|b| bytes <= b));
            if workers <= 1 {
                if fits(model_bytes) || workers == 0 {
                    Plan::Single
                } else {
                    return Err(PlanError::DoesNotFit { model_bytes, workers });
                }
            } else if fits(model_bytes) {
                Plan::DataParallel { replicas: workers }
            } else {
                // The fewest shards whose share fits every worker (weights split evenly is the estimate).
                let split = |n: usize| match &config.moe {
                    Some(m) if n <= m.num_experts => Plan::ExpertParallel { ep: n },
                    _ => Plan::Pipeline { stages: n },
                };
                let n = (2..=workers)
                    .find(|&n| fits(model_bytes.div_ceil(n as u64)) && split(n).check(config).is_ok())
                    .ok_or(PlanError::DoesNotFit { model_bytes, workers })?;
                split(n)
            }
        }
    };
    if plan.shards() > workers.max(1) {
        return Err(PlanError::TooFewWorkers { plan, needed: plan.shards(), have: workers });
    }
    plan.check(config)?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(layers: usize, experts: Option<usize>) -> ModelConfig {
        let moe = experts.map(|n| {
            format!(
                r#", "num_experts": {n}, "num_experts_per_tok": 2, "moe_intermediate_size": 8, "norm_topk_prob": true"#
            )
        });
        let arch = if experts.is_some() { "qwen3_moe" } else { "llama" };
        let text = format!(
            r#"{{"model_type": "{arch}", "vocab_size": 32, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": {layers}, "num_attention_heads": 2, "num_key_value_heads": 1,
                "head_dim": 4, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 64,
                "tie_word_embeddings": false{}}}"#,
            moe.unwrap_or_default()
        );
        ModelConfig::from_json_str(&text).unwrap()
    }

    #[test]
    fn plans_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!(PlanChoice::parse("auto").unwrap(), PlanChoice::Auto);
        assert_eq!(PlanChoice::parse("single").unwrap(), PlanChoice::Forced(Plan::Single));
        assert_eq!(PlanChoice::parse("dp=2").unwrap(), PlanChoice::Forced(Plan::DataParallel { replicas: 2 }));
        assert_eq!(PlanChoice::parse("pp=3").unwrap(), PlanChoice::Forced(Plan::Pipeline { stages: 3 }));
        assert_eq!(PlanChoice::parse("ep=4").unwrap(), PlanChoice::Forced(Plan::ExpertParallel { ep: 4 }));
        for bad in ["dp=1", "dp=0", "tp=2", "dp", "dp=x", ""] {
            let e = PlanChoice::parse(bad).unwrap_err().to_string();
            assert!(e.contains("dp=N"), "{bad}: {e}");
        }
    }

    #[test]
    fn balanced_ranges_tile_without_gaps_and_differ_by_at_most_one() {
        for n in 0..20 {
            for parts in 1..6 {
                let ranges: Vec<_> = (0..parts).map(|p| balanced_range(n, parts, p)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[parts - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                }
                let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1, "{n}/{parts}: {lens:?}");
                for i in 0..n {
                    assert!(ranges[balanced_owner(n, parts, i)].contains(&i));
                }
            }
        }
        assert_eq!(balanced_range(5, 2, 0), 0..3);
        assert_eq!(balanced_range(5, 2, 1), 3..5);
    }

    #[test]
    fn ownership_follows_the_plan_and_every_name_has_an_owner() {
        let dense = config(5, None);
        let names = [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.2.mlp.down_proj",
            "base_model.model.model.layers.4.self_attn.o_proj",
            "model.norm.weight",
            "lm_head.weight",
            "something.else",
        ];
        for name in names {
            assert_eq!(owners(name, Plan::Single, &dense), vec![0], "{name}");
            assert_eq!(owners(name, Plan::DataParallel { replicas: 3 }, &dense), vec![0, 1, 2], "{name}");
        }
        let pp = Plan::Pipeline { stages: 2 };
        assert_eq!(owners("model.embed_tokens.weight", pp, &dense), vec![0]);
        assert_eq!(owners("model.layers.2.mlp.down_proj", pp, &dense), vec![0], "layers 0..3 on stage 0");
        assert_eq!(owners("base_model.model.model.layers.4.self_attn.o_proj", pp, &dense), vec![1]);
        assert_eq!(owners("lm_head.weight", pp, &dense), vec![1]);
        assert_eq!(owners("model.norm.weight", pp, &dense), vec![1]);

        let moe = config(2, Some(8));
        let ep = Plan::ExpertParallel { ep: 4 };
        for e in 0..8 {
            let name = format!("model.layers.1.mlp.experts.{e}.gate_proj.weight");
            assert_eq!(owners(&name, ep, &moe), vec![e / 2], "{name}");
        }
        assert_eq!(owners("model.layers.1.mlp.gate.weight", ep, &moe), vec![0, 1, 2, 3], "the router everywhere");
        assert_eq!(owners("model.layers.0.self_attn.k_proj", ep, &moe), vec![0, 1, 2, 3]);
    }

    #[test]
    fn auto_replicates_what_fits_and_splits_what_does_not() {
        let dense = config(4, None);
        let moe = config(2, Some(8));
        assert_eq!(choose(PlanChoice::Auto, &dense, 100, &[Some(1000)]).unwrap(), Plan::Single);
        assert_eq!(
            choose(PlanChoice::Auto, &dense, 100, &[Some(1000), None]).unwrap(),
            Plan::DataParallel { replicas: 2 }
        );
        assert_eq!(
            choose(PlanChoice::Auto, &dense, 1500, &[Some(1000), Some(1000)]).unwrap(),
            Plan::Pipeline { stages: 2 }
        );
        assert_eq!(choose(PlanChoice::Auto, &moe, 2500, &[Some(1000); 3]).unwrap(), Plan::ExpertParallel { ep: 3 });
        assert!(matches!(
            choose(PlanChoice::Auto, &dense, 5000, &[Some(1000), Some(1000)]),
            Err(PlanError::DoesNotFit { .. })
        ));
        assert!(matches!(
            choose(PlanChoice::Forced(Plan::DataParallel { replicas: 3 }), &dense, 1, &[None, None]),
            Err(PlanError::TooFewWorkers { needed: 3, have: 2, .. })
        ));
        assert!(matches!(
            choose(PlanChoice::Forced(Plan::ExpertParallel { ep: 2 }), &dense, 1, &[None, None]),
            Err(PlanError::BadExpertSplit { .. })
        ));
        assert!(matches!(
            choose(PlanChoice::Forced(Plan::Pipeline { stages: 5 }), &dense, 1, &[None; 5]),
            Err(PlanError::TooManyStages { .. })
        ));
    }
}
