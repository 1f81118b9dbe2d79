//! The worker service on the built-in Qwen3-MoE: load-balance metrics in the step metrics, and a
//! PEFT export whose expert sites are expanded per expert with standard 2-D keys.
#![allow(clippy::unwrap_used)]

mod service_common;

use runtime::control::{FromWorker, SamplerAdapter, ToWorker};
use service_common::{batch, call, create_run, fb, logprobs, request, sample, sampling, served, step};
use worker::service::WorkerService;

const MOE: &str = "tiny/qwen3-moe";

#[test]
fn moe_steps_report_per_layer_load_balance_and_train() {
    let mut svc = WorkerService::new(1, vec![served(MOE, false)]);
    create_run(&mut svc, "r", MOE);
    let first = fb(&mut svc, "r", batch(), "cross_entropy", false);
    // tiny/qwen3-moe: layers 0 and 2 are sparse (4 experts, top-2), layer 1 is dense.
    for layer in [0, 2] {
        let max = first.metrics[&format!("moe_layer{layer}_expert_frac_max:max")];
        let min = first.metrics[&format!("moe_layer{layer}_expert_frac_min:min")];
        assert!((0.25..=1.0).contains(&max) && (0.0..=0.25).contains(&min), "layer {layer}: {min}..{max}");
    }
    assert!(!first.metrics.keys().any(|k| k.starts_with("moe_layer1_")), "layer 1 is a dense MLP");
    assert!(first.metrics.keys().all(|k| k.matches(':').count() == 1));
    step(&mut svc, "r", 1e-2);
    let second = fb(&mut svc, "r", batch(), "cross_entropy", true);
    assert!(second.metrics["loss:sum"] < first.metrics["loss:sum"], "one step on the same batch lowers the loss");
}

#[test]
fn moe_peft_export_expands_experts_into_standard_keys() {
    let mut svc = WorkerService::new(1, vec![served(MOE, false)]);
    create_run(&mut svc, "r", MOE);
    let dir = std::env::temp_dir().join(format!("lathe-moe-export-{}", std::process::id()));
    let reply = call(&mut svc, ToWorker::ExportPeft { run: "r".into(), dir: dir.clone() });
    assert!(matches!(reply, FromWorker::Saved { bytes } if bytes > 0), "{reply:?}");
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    let prefix = "base_model.model.model.layers.0.mlp.experts";
    for e in 0..4 {
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            for f in ["lora_A", "lora_B"] {
                let key = format!("{prefix}.{e}.{proj}.{f}.weight");
                assert!(names.contains(&key), "missing {key}");
            }
        }
        // The shared hidden-side factor of gate_proj is copied into every expert.
        let a0 = st.tensor(&format!("{prefix}.0.gate_proj.lora_A.weight")).unwrap();
        let ae = st.tensor(&format!("{prefix}.{e}.gate_proj.lora_A.weight")).unwrap();
        assert_eq!(a0.data(), ae.data());
        assert_eq!(ae.shape(), &[4, 64]);
    }
    assert!(!names.iter().any(|n| n.contains("experts.gate_proj")), "no stacked (non-PEFT) expert keys");
    assert!(names.contains(&"base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight".to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_moe_peft_export_loads_back_as_a_sampler_with_the_trainers_logprobs() {
    let mut svc = WorkerService::new(1, vec![served(MOE, false)]);
    create_run(&mut svc, "r", MOE);
    fb(&mut svc, "r", batch(), "cross_entropy", false);
    step(&mut svc, "r", 1e-2); // B ≠ 0, so the expert adapters change the output
    let dir = std::env::temp_dir().join(format!("lathe-moe-sampler-{}", std::process::id()));
    let reply = call(&mut svc, ToWorker::ExportPeft { run: "r".into(), dir: dir.clone() });
    assert!(matches!(reply, FromWorker::Saved { .. }), "{reply:?}");
    let create = ToWorker::CreateSampler {
        sampler: "s".into(),
        base_model: MOE.into(),
        adapter: SamplerAdapter::Dir(dir.clone()),
    };
    assert_eq!(call(&mut svc, create), FromWorker::Done);
    let prompt = vec![5, 17, 42, 99];
    let out = sample(&mut svc, request("s", prompt.clone(), 1, sampling(6, 0.0, 0)));
    let seq = &out.sequences[0];
    // The trainer's logprobs of the same tokens must equal the sampler's, bit for bit.
    let mut full = prompt.clone();
    full.extend(&seq.tokens);
    let trained = fb(&mut svc, "r", vec![service_common::ce_datum(&full)], "cross_entropy", true);
    let lp = logprobs(&trained);
    assert_eq!(&lp[prompt.len() - 1..], &seq.logprobs[..], "sampler (from the PEFT export) vs trainer");
    std::fs::remove_dir_all(&dir).unwrap();
}
