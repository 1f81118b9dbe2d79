//! `lathe bench`: end-to-end throughput of the train step (forward_backward + optim_step), a
//! multi-tenant step (many runs' requests in one pass) against the same runs stepped one by one,
//! the forward pass to logprobs, and sampling, as JSON lines shaped like `bench_torch_peft.py`'s so the
//! two can be run side by side and compared line by line.
//!
//! FLOPs are the same analytic "model FLOPs" the PyTorch script uses (base linears + lm_head +
//! causal attention + LoRA; no weight-gradient GEMMs for the frozen base), so `gflops` compares
//! like with like. Each line also reports how much CPU other processes used meanwhile.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use kernels::{Backend, CpuBackend, ReferenceBackend};
use runtime::{Family, LoraConfig, ModelConfig};
use serde_json::{json, Value};
use worker::adapter::lora_sites;
use worker::loss::{LossFn, LossInput, LossInputs};
use worker::model::Model;
use worker::optim::{AdamParams, TrainState};
use worker::rng::Rng;
use worker::sample::{sample, SampleParams};
use worker::tensor::WeightMap;
use worker::train::{step_many, Datum, StepItem};

use super::catalog;
use super::load_monitor::LoadMonitor;

/// Rank of the benchmark adapter: the PyTorch baseline's `LORA_RANK`.
const BENCH_RANK: usize = 32;
const SEED: u64 = 0;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    Train,
    /// 8 training runs × 1 sequence each: one multi-tenant step vs the 8 stepped one by one.
    MultiTenant,
    Forward,
    Sample,
    All,
    /// The coordinator↔worker transport: GB/s of one 64 MiB tensor frame over loopback TCP and the
    /// round trip of an empty control frame (no model involved).
    Transport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendName {
    Cpu,
    Reference,
}

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Models to run: `bench/tiny`, `bench/small` (the dense configs of bench_torch_peft.py),
    /// `tiny/llama3`, `tiny/qwen3`, a catalogue name, an HF directory or a .gguf file.
    #[arg(long = "model", default_values_t = vec!["bench/tiny".to_string()])]
    pub models: Vec<String>,
    #[arg(long, value_enum, default_value_t = Op::All)]
    pub op: Op,
    /// Sequences per step (default: the PyTorch script's plan for the model and op).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per sequence (train/forward), or prompt tokens (sample).
    #[arg(long)]
    pub seq: Option<usize>,
    /// New tokens per sequence when sampling.
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Worker threads (rayon), like the script's `--threads`.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed seconds per measurement after one warm-up call.
    #[arg(long, default_value_t = 2.0)]
    pub min_time_s: f64,
    #[arg(long, default_value_t = 5)]
    pub max_iters: usize,
    #[arg(long, value_enum, default_value_t = BackendName::Cpu)]
    pub backend: BackendName,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .context("configuring the worker thread pool")?;
    emit(json!({"op": "env", "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "threads": args.threads, "backend": format!("{:?}", args.backend).to_lowercase(), "seed": SEED,
        "lora_rank": BENCH_RANK, "lathe": env!("CARGO_PKG_VERSION")}));
    if args.op == Op::Transport {
        return bench_transport(args);
    }
    for name in &args.models {
        let (config, weights) = resolve_model(name)?;
        match args.backend {
            BackendName::Cpu => bench_model(args, name, Model::new(config, weights, CpuBackend)?)?,
            BackendName::Reference => bench_model(args, name, Model::new(config, weights, ReferenceBackend)?)?,
        }
    }
    Ok(())
}

/// Transport figures: bulk frames of 64 MiB (fresh and reused receive buffers) and empty round trips.
fn bench_transport(args: &BenchArgs) -> Result<()> {
    use runtime::transport::bench::{loopback_rtt, loopback_throughput_with, Receive};
    const BODY_BYTES: usize = 64 << 20;
    let reps = args.max_iters.max(3) * 4;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        for (receive, label) in [(Receive::Fresh, "fresh"), (Receive::Reused, "reused")] {
            let r = loopback_throughput_with(BODY_BYTES, reps, receive).await?;
            emit(json!({"op": "transport_frame", "body_bytes": r.body_bytes, "reps": r.reps,
                "receive_buffers": label, "gb_per_s_median": r.gigabytes_per_s_median,
                "gb_per_s_min": r.gigabytes_per_s_min, "gb_per_s_max": r.gigabytes_per_s_max}));
        }
        let r = loopback_rtt(2000).await?;
        emit(json!({"op": "transport_rtt", "reps": r.reps, "rtt_us_median": r.rtt_us_median,
            "rtt_us_p99": r.rtt_us_p99}));
        Ok::<(), anyhow::Error>(())
    })
}

/// A model's config and weights by benchmark name, catalogue name or path.
fn resolve_model(name: &str) -> Result<(ModelConfig, WeightMap)> {
    if let Some(config) = bench_config(name) {
        return Ok((config.clone(), worker::tiny::dense_weights(&config, SEED)));
    }
    if name.starts_with("tiny/") {
        return Ok(worker::tiny::tiny_model(name, SEED)?);
    }
    if let Some(entry) = catalog::find(name) {
        let path = super::fetch::fetch(entry)?;
        return load_path(&path);
    }
    let path = Path::new(name);
    if path.exists() {
        return load_path(path);
    }
    bail!("unknown model `{name}`: not a benchmark config (bench/tiny, bench/small), a tiny model, a catalogue name (`lathe models`), or an existing path")
}

fn load_path(path: &Path) -> Result<(ModelConfig, WeightMap)> {
    eprintln!("loading {} ...", path.display());
    if path.extension().is_some_and(|e| e == "gguf") {
        let m = worker::load::load_gguf(path)?;
        Ok((m.config, m.weights))
    } else {
        Ok(worker::load::load_model_dir(path)?)
    }
}

/// The dense configs of `bench_torch_peft.py` (Qwen3 family, untied, θ = 1e6).
fn bench_config(name: &str) -> Option<ModelConfig> {
    let (hidden, layers, heads, kv, inter, vocab) = match name {
        "bench/tiny" => (256, 4, 4, 2, 768, 4096),
        "bench/small" => (1024, 8, 16, 8, 3072, 32000),
        _ => return None,
    };
    Some(ModelConfig {
        family: Family::Qwen3,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: 64,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        rope_scaling: None,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
        moe: None,
    })
}

fn bench_model<B: Backend>(args: &BenchArgs, name: &str, model: Model<B>) -> Result<()> {
    let lora = LoraConfig::new(BENCH_RANK, 32.0, SEED, true, true, false)?;
    let small = name == "bench/small";
    let ops: &[Op] = match args.op {
        Op::All => &[Op::Train, Op::MultiTenant, Op::Forward, Op::Sample],
        Op::Train => &[Op::Train],
        Op::MultiTenant => &[Op::MultiTenant],
        Op::Forward => &[Op::Forward],
        Op::Sample => &[Op::Sample],
        Op::Transport => &[],
    };
    for &op in ops {
        // The PyTorch script's plan: train 8×512 (small: 4×256), forward 8×512, sample 8 × (64 + 128).
        // Multi-tenant: 8 runs of one 128-token sequence each (short requests are where sharing
        // a pass pays).
        let (batch_default, seq_default) = match op {
            Op::Train if small => (4, 256),
            Op::MultiTenant => (8, 128),
            Op::Sample => (8, 64),
            _ => (8, 512),
        };
        let batch = args.batch.unwrap_or(batch_default);
        let seq = args.seq.unwrap_or(seq_default).min(model.config().max_position_embeddings.saturating_sub(1));
        let line = match op {
            Op::Train => bench_train(args, &model, &lora, batch, seq)?,
            Op::MultiTenant => bench_multi_tenant(args, &model, &lora, batch, seq)?,
            Op::Forward => bench_forward(args, &model, &lora, batch, seq)?,
            Op::Sample => bench_sample(args, &model, &lora, batch, seq)?,
            Op::All | Op::Transport => unreachable!("expanded above"),
        };
        let mut line = line;
        if let Some(obj) = line.as_object_mut() {
            obj.insert("model".into(), name.into());
            obj.insert("threads".into(), args.threads.into());
            obj.insert("dtype".into(), "fp32".into());
        }
        emit(line);
    }
    Ok(())
}

/// `batch` random sequences of `seq` tokens (+1 for the shifted targets), weights 1.
fn make_data(config: &ModelConfig, batch: usize, seq: usize, salt: u64) -> Vec<Datum> {
    let mut rng = Rng::new(SEED + salt);
    let vocab = config.vocab_size as u64;
    (0..batch)
        .map(|_| {
            let ids: Vec<u32> = (0..=seq).map(|_| (3 + rng.next_u64() % (vocab - 3)) as u32).collect();
            let mut inputs: LossInputs = BTreeMap::new();
            inputs.insert("target_tokens".into(), LossInput::vector_i64(ids[1..].iter().map(|&t| t as i64).collect()));
            inputs.insert("weights".into(), LossInput::vector_f32(vec![1.0; seq]));
            Datum { tokens: ids[..seq].to_vec(), loss_fn_inputs: inputs }
        })
        .collect()
}

fn bench_train<B: Backend>(
    args: &BenchArgs,
    model: &Model<B>,
    lora: &LoraConfig,
    batch: usize,
    seq: usize,
) -> Result<Value> {
    let config = model.config();
    let mut state = TrainState::new(&lora_sites(config, lora), lora);
    let data = make_data(config, batch, seq, 1);
    let adam = AdamParams::tinker_defaults();
    let loss = LossFn::CrossEntropy;
    let mut step = || -> Result<()> {
        state.forward_backward(model, &data, &loss)?;
        state.optim_step(model.backend(), &adam)?;
        Ok(())
    };
    let t = timed(args, &mut step)?;
    let tokens = (batch * seq) as f64;
    let f = flops_per_token(config, seq);
    Ok(json!({"op": "train_step", "batch": batch, "seq": seq, "tokens_per_s": round1(tokens / t.median_s),
        "gflops": round1(f.train * tokens / t.median_s / 1e9), "step_s": round3(t.median_s), "iters": t.iters,
        "other_procs_cores": t.other_cores, "params_lora": state.params.numel()}))
}

/// `runs` training runs (own adapters, seeds differ) with one `seq`-token sequence each: the time
/// of one multi-tenant step (`step_many` + each run's optim_step) against the same requests
/// stepped one run after another. `speedup` = sequential / batched.
fn bench_multi_tenant<B: Backend>(
    args: &BenchArgs,
    model: &Model<B>,
    lora: &LoraConfig,
    runs: usize,
    seq: usize,
) -> Result<Value> {
    let config = model.config();
    let loras: Vec<LoraConfig> = (0..runs as u64)
        .map(|r| LoraConfig::new(lora.rank, lora.alpha, SEED + r, lora.train_attn, lora.train_mlp, lora.train_unembed))
        .collect::<Result<_, _>>()?;
    let mut states: Vec<TrainState> = loras.iter().map(|l| TrainState::new(&lora_sites(config, l), l)).collect();
    let data: Vec<Vec<Datum>> = (0..runs as u64).map(|r| make_data(config, 1, seq, 10 + r)).collect();
    let adam = AdamParams::tinker_defaults();
    let loss = LossFn::CrossEntropy;
    let mut batched = || -> Result<()> {
        let mut items: Vec<StepItem<'_>> = states
            .iter_mut()
            .zip(&data)
            .map(|(state, d)| StepItem { state, data: d, loss: &loss, backward: true })
            .collect();
        for r in step_many(model, &mut items) {
            r?;
        }
        for state in &mut states {
            state.optim_step(model.backend(), &adam)?;
        }
        Ok(())
    };
    let tb = timed(args, &mut batched)?;
    let mut sequential = || -> Result<()> {
        for (state, d) in states.iter_mut().zip(&data) {
            state.forward_backward(model, d, &loss)?;
            state.optim_step(model.backend(), &adam)?;
        }
        Ok(())
    };
    let ts = timed(args, &mut sequential)?;
    let tokens = (runs * seq) as f64;
    let other = match (tb.other_cores, ts.other_cores) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    Ok(json!({"op": "multi_tenant_step", "runs": runs, "batch": 1, "seq": seq,
        "batched_step_s": round3(tb.median_s), "sequential_s": round3(ts.median_s),
        "speedup": round3(ts.median_s / tb.median_s),
        "tokens_per_s": round1(tokens / tb.median_s), "sequential_tokens_per_s": round1(tokens / ts.median_s),
        "iters": tb.iters.min(ts.iters), "other_procs_cores": other}))
}

fn bench_forward<B: Backend>(
    args: &BenchArgs,
    model: &Model<B>,
    lora: &LoraConfig,
    batch: usize,
    seq: usize,
) -> Result<Value> {
    let config = model.config();
    let state = TrainState::new(&lora_sites(config, lora), lora);
    let data = make_data(config, batch, seq, 2);
    let loss = LossFn::CrossEntropy;
    let mut fwd = || -> Result<()> {
        state.forward(model, &data, &loss)?;
        Ok(())
    };
    let t = timed(args, &mut fwd)?;
    let tokens = (batch * seq) as f64;
    let f = flops_per_token(config, seq);
    Ok(json!({"op": "forward_logprobs", "batch": batch, "seq": seq, "tokens_per_s": round1(tokens / t.median_s),
        "gflops": round1(f.fwd * tokens / t.median_s / 1e9), "step_s": round3(t.median_s), "iters": t.iters,
        "other_procs_cores": t.other_cores}))
}

/// Greedy generation of `args.new_tokens` after each of `batch` different `prompt`-token prompts,
/// one prompt after another (lathe batches decode across samples of one prompt, not across prompts).
fn bench_sample<B: Backend>(
    args: &BenchArgs,
    model: &Model<B>,
    lora: &LoraConfig,
    batch: usize,
    prompt: usize,
) -> Result<Value> {
    let config = model.config();
    let state = TrainState::new(&lora_sites(config, lora), lora);
    let prompts: Vec<Vec<u32>> = make_data(config, batch, prompt, 3).into_iter().map(|d| d.tokens).collect();
    let new = args.new_tokens;
    let params =
        SampleParams { max_tokens: new, temperature: 0.0, top_k: -1, top_p: 1.0, seed: SEED, stop_token_ids: vec![] };
    let mut generate = || -> Result<()> {
        for p in &prompts {
            let out = sample(model, Some((lora, &state.params)), p, &params, 1)?;
            anyhow::ensure!(out[0].tokens.len() == new, "sampler stopped early ({} tokens)", out[0].tokens.len());
        }
        Ok(())
    };
    let t = timed(args, &mut generate)?;
    let flops = sample_flops(config, batch, prompt, new);
    Ok(json!({"op": "sample", "batch": batch, "seq": prompt + new, "prompt": prompt, "new": new,
        "tokens_per_s": round1((batch * new) as f64 / t.median_s), "gflops": round1(flops / t.median_s / 1e9),
        "step_s": round3(t.median_s), "iters": t.iters, "other_procs_cores": t.other_cores}))
}

struct Timing {
    median_s: f64,
    iters: usize,
    other_cores: Option<f64>,
}

/// One warm-up call, then calls until `min_time_s` or `max_iters`; the median call time.
fn timed(args: &BenchArgs, f: &mut dyn FnMut() -> Result<()>) -> Result<Timing> {
    f()?;
    let window = LoadMonitor::start();
    let mut times = Vec::new();
    loop {
        let call = LoadMonitor::start();
        f()?;
        times.push(call.elapsed_s());
        if times.len() >= args.max_iters || window.elapsed_s() >= args.min_time_s {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(Timing { median_s: times[times.len() / 2], iters: times.len(), other_cores: window.other_cores() })
}

struct Flops {
    fwd: f64,
    train: f64,
    attn_fwd: f64,
}

/// Analytic FLOPs per token, the formula of `bench_torch_peft.py` (dense; LoRA on all 7 projections).
fn flops_per_token(c: &ModelConfig, seq: usize) -> Flops {
    let (h, l, v) = (c.hidden_size as f64, c.num_hidden_layers as f64, c.vocab_size as f64);
    let (nh, nkv, hd) = (c.num_attention_heads as f64, c.num_key_value_heads as f64, c.head_dim as f64);
    let (r, i) = (BENCH_RANK as f64, c.intermediate_size as f64);
    let attn_lin = h * nh * hd + 2.0 * h * nkv * hd + nh * hd * h;
    let lora_attn = r * ((h + nh * hd) + 2.0 * (h + nkv * hd) + (nh * hd + h));
    let mlp_lin = 3.0 * h * i;
    let lora_mlp = r * 3.0 * (h + i);
    let n_lin = l * (attn_lin + mlp_lin);
    let n_lora = l * (lora_attn + lora_mlp);
    let ctx = (seq as f64 + 1.0) / 2.0;
    let attn_fwd = 4.0 * l * nh * hd * ctx;
    let head = h * v;
    Flops {
        fwd: 2.0 * n_lin + 2.0 * head + 2.0 * n_lora + attn_fwd,
        train: 4.0 * n_lin + 4.0 * head + 6.0 * n_lora + 3.0 * attn_fwd,
        attn_fwd,
    }
}

/// Total FLOPs of generating `new` tokens after `prompt` tokens for `batch` prompts (the script's formula).
fn sample_flops(c: &ModelConfig, batch: usize, prompt: usize, new: usize) -> f64 {
    let b = batch as f64;
    let mut total = flops_per_token(c, prompt).fwd * b * prompt as f64;
    let one = flops_per_token(c, 1);
    for step in 0..new.saturating_sub(1) {
        let ctx = (prompt + step + 1) as f64;
        let attn = 4.0 * c.num_hidden_layers as f64 * c.num_attention_heads as f64 * c.head_dim as f64 * ctx;
        total += (one.fwd - one.attn_fwd + attn) * b;
    }
    total
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn emit(v: Value) {
    println!("{v}");
}
