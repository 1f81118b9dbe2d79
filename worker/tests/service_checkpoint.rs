//! Checkpoints through `WorkerService::handle`: save_state → load_state reproduces forward
//! logprobs bit for bit; with the optimizer, one more step after loading equals continuing the
//! original; without it Adam starts fresh; a PEFT export is a standard adapter that a sampler
//! loads back to the trainer's exact logprobs; foreign and corrupt directories are user errors.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns may unwrap too (house rule 5)

mod service_common;

use std::path::Path;

use runtime::control::{ErrorCategory, FromWorker, SamplerAdapter, ToWorker};
use service_common::*;

fn save(svc: &mut worker::service::WorkerService, run: &str, dir: &Path, optimizer: bool) -> u64 {
    match call(svc, ToWorker::SaveState { run: run.into(), dir: dir.into(), optimizer }) {
        FromWorker::Saved { bytes } => bytes,
        other => panic!("save_state failed: {other:?}"),
    }
}

fn load(svc: &mut worker::service::WorkerService, run: &str, dir: &Path, optimizer: bool) -> FromWorker {
    call(svc, ToWorker::LoadState { run: run.into(), dir: dir.into(), optimizer })
}

/// A run trained for two steps on `batch()`.
fn trained(svc: &mut worker::service::WorkerService, run: &str) {
    create_run(svc, run, LLAMA);
    for _ in 0..2 {
        fb(svc, run, batch(), "cross_entropy", false);
        step(svc, run, 1e-2);
    }
}

fn held_out() -> Vec<runtime::control::Datum> {
    (0..2).map(|i| ce_datum(&ids(9, 500 + i))).collect()
}

#[test]
fn a_saved_state_loads_into_a_new_run_with_identical_forward_logprobs() {
    let root = temp_dir("roundtrip");
    let mut svc = service();
    trained(&mut svc, "a");
    let dir = root.join("runs/a/weights/c1");
    let bytes = save(&mut svc, "a", &dir, true);
    let on_disk: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert_eq!(bytes, on_disk);
    for file in ["adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors", "state.json"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    assert_eq!(load(&mut svc, "b", &dir, false), FromWorker::Done);
    let a = fb(&mut svc, "a", held_out(), "cross_entropy", true);
    let b = fb(&mut svc, "b", held_out(), "cross_entropy", true);
    assert_eq!(bits(&logprobs(&a)), bits(&logprobs(&b)));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn loading_with_the_optimizer_then_stepping_equals_continuing_the_original_bit_for_bit() {
    let root = temp_dir("resume");
    let mut svc = service();
    trained(&mut svc, "orig");
    let dir = root.join("ckpt");
    save(&mut svc, "orig", &dir, true);
    assert_eq!(load(&mut svc, "resumed", &dir, true), FromWorker::Done);
    assert_eq!(load(&mut svc, "fresh", &dir, false), FromWorker::Done);
    let mut metrics = Vec::new();
    for run in ["orig", "resumed", "fresh"] {
        let loss = fb(&mut svc, run, batch(), "cross_entropy", false).metrics["loss:sum"];
        metrics.push((loss, step(&mut svc, run, 1e-2)));
    }
    assert_eq!(metrics[0], metrics[1], "same loss, gradient norm and step count");
    assert_eq!(metrics[0].1["step:max"], 3.0);
    assert_eq!(metrics[2].1["step:max"], 1.0, "without the optimizer the step count restarts");
    let orig = logprobs(&fb(&mut svc, "orig", held_out(), "cross_entropy", true));
    let resumed = logprobs(&fb(&mut svc, "resumed", held_out(), "cross_entropy", true));
    let fresh = logprobs(&fb(&mut svc, "fresh", held_out(), "cross_entropy", true));
    assert_eq!(bits(&orig), bits(&resumed));
    assert_ne!(bits(&orig), bits(&fresh), "fresh Adam moments take a different step");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn load_state_replaces_an_existing_run_and_saving_again_overwrites_the_directory() {
    let root = temp_dir("replace");
    let mut svc = service();
    trained(&mut svc, "a");
    let dir = root.join("ckpt");
    save(&mut svc, "a", &dir, false);
    let saved = logprobs(&fb(&mut svc, "a", held_out(), "cross_entropy", true));
    fb(&mut svc, "a", batch(), "cross_entropy", false);
    step(&mut svc, "a", 1e-2);
    assert_eq!(load(&mut svc, "a", &dir, false), FromWorker::Done);
    assert_eq!(bits(&logprobs(&fb(&mut svc, "a", held_out(), "cross_entropy", true))), bits(&saved));
    assert!(!dir.join("optimizer.safetensors").exists(), "saved without the optimizer");
    save(&mut svc, "a", &dir, true);
    assert!(dir.join("optimizer.safetensors").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("ckpt")]);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_peft_export_is_a_standard_adapter_that_samples_with_the_trainers_logprobs() {
    let root = temp_dir("peft");
    let mut svc = service();
    trained(&mut svc, "a");
    let dir = root.join("export");
    let reply = call(&mut svc, ToWorker::ExportPeft { run: "a".into(), dir: dir.clone() });
    assert!(matches!(reply, FromWorker::Saved { bytes } if bytes > 0), "{reply:?}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["base_model_name_or_path"], LLAMA);
    assert_eq!(config["bias"], "none");
    assert_eq!(config["lora_dropout"], 0.0);
    assert_eq!(config["fan_in_fan_out"], false);
    let targets =
        serde_json::json!(["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj", "v_proj"]);
    assert_eq!(config["target_modules"], targets);
    let tensors = worker::load::load_safetensors_file(&dir.join("adapter_model.safetensors")).unwrap();
    let a = &tensors.tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"];
    assert_eq!(a.shape, vec![4, 128], "A is (rank, d_in)");
    assert_eq!(tensors.tensors["base_model.model.lm_head.lora_B.weight"].shape, vec![512, 4], "B is (d_out, rank)");
    assert_eq!(tensors.tensors.len(), 2 * (2 * 7 + 1));

    let create =
        ToWorker::CreateSampler { sampler: "s".into(), base_model: LLAMA.into(), adapter: SamplerAdapter::Dir(dir) };
    assert_eq!(call(&mut svc, create), FromWorker::Done);
    let prompt = ids(6, 77);
    let out = sample(&mut svc, request("s", prompt.clone(), 2, sampling(10, 1.0, 5)));
    for seq in &out.sequences {
        let full: Vec<u32> = prompt.iter().chain(&seq.tokens).copied().collect();
        let trainer = logprobs(&fb(&mut svc, "a", vec![ce_datum(&full)], "cross_entropy", true));
        assert_eq!(bits(&seq.logprobs), bits(&trainer[prompt.len() - 1..]), "sampler vs trainer logprobs");
    }
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn foreign_corrupt_or_incomplete_checkpoints_are_user_errors_naming_the_problem() {
    let root = temp_dir("bad");
    let mut svc = service();
    trained(&mut svc, "llama");
    create_run(&mut svc, "qwen", QWEN);
    let qwen_dir = root.join("qwen");
    save(&mut svc, "qwen", &qwen_dir, false);

    let (cat, msg) = failure(load(&mut svc, "llama", &qwen_dir, false));
    assert_eq!(cat, ErrorCategory::User);
    assert!(msg.contains(QWEN) && msg.contains(LLAMA), "{msg}");
    let (cat, msg) = failure(load(&mut svc, "new", &qwen_dir, true));
    assert_eq!(cat, ErrorCategory::User);
    assert!(msg.contains("without optimizer state"), "{msg}");
    let as_llama_sampler = ToWorker::CreateSampler {
        sampler: "s".into(),
        base_model: LLAMA.into(),
        adapter: SamplerAdapter::Dir(qwen_dir.clone()),
    };
    let (cat, msg) = failure(call(&mut svc, as_llama_sampler));
    assert_eq!(cat, ErrorCategory::User);
    assert!(msg.contains(QWEN), "{msg}");

    let llama_dir = root.join("llama");
    save(&mut svc, "llama", &llama_dir, true);
    let weights = llama_dir.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&weights, bytes).unwrap();
    let (cat, msg) = failure(load(&mut svc, "new", &llama_dir, false));
    assert_eq!(cat, ErrorCategory::User);
    assert!(msg.contains(llama_dir.to_str().unwrap()), "{msg}");

    let (cat, msg) = failure(load(&mut svc, "new", &root.join("missing"), false));
    assert_eq!(cat, ErrorCategory::User);
    assert!(msg.contains("state.json"), "{msg}");
    std::fs::remove_dir_all(root).unwrap();
}
