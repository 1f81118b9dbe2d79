//! Helpers of the in-process HTTP tests: a fake `WorkerLink` that answers every control message
//! with deterministic echo results (and a memory report the test sets) and records what it was sent, a raw HTTP/1.1 client, and a
//! running coordinator on a random loopback port with a `ManualClock`.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::{serve_on, ServeConfig, Tuning};
use prost::Message;
use runtime::clock::ManualClock;
use runtime::control::*;
use runtime::wire::proto;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echo worker: logprob of each target token t is -(t/100), loss:sum is their weighted sum.
#[derive(Default)]
pub struct FakeWorker {
    pub calls: Mutex<Vec<ToWorker>>,
    /// The answer to `ToWorker::Memory`; without one it fails as a server error.
    pub memory: Mutex<Option<MemoryReport>>,
}

impl FakeWorker {
    pub fn answer(&self, body: ToWorker) -> FromWorker {
        self.calls.lock().unwrap().push(body.clone());
        match body {
            ToWorker::ForwardBackward { data, .. } => {
                let mut loss_sum = 0.0;
                let outputs = data
                    .iter()
                    .map(|d| {
                        let (targets, weights) =
                            match (&d.loss_fn_inputs["target_tokens"].values, d.loss_fn_inputs.get("weights")) {
                                (TensorValues::I64(t), Some(Tensor { values: TensorValues::F32(w), .. })) => {
                                    (t.clone(), w.clone())
                                }
                                (TensorValues::I64(t), _) => (t.clone(), vec![1.0; t.len()]),
                                _ => panic!("target_tokens must be int64"),
                            };
                        if targets.len() > d.tokens.len() {
                            return Err(());
                        }
                        let lp: Vec<f32> = targets.iter().map(|&t| -(t as f32) / 100.0).collect();
                        let loss: Vec<f32> = lp.iter().zip(&weights).map(|(l, w)| -l * w).collect();
                        loss_sum += loss.iter().map(|&x| f64::from(x)).sum::<f64>();
                        let n = lp.len();
                        Ok(DatumOutput {
                            logprobs: Tensor { shape: vec![n], values: TensorValues::F32(lp) },
                            elementwise_loss: Tensor { shape: vec![n], values: TensorValues::F32(loss) },
                        })
                    })
                    .collect::<Result<Vec<_>, ()>>();
                match outputs {
                    Ok(outputs) => FromWorker::ForwardBackward(ForwardBackwardResult {
                        outputs,
                        metrics: BTreeMap::from([("loss:sum".to_string(), loss_sum)]),
                    }),
                    Err(()) => FromWorker::Failed {
                        category: ErrorCategory::User,
                        message: "target_tokens longer than the model input".into(),
                    },
                }
            }
            ToWorker::OptimStep { .. } => FromWorker::Optim { metrics: BTreeMap::new() },
            ToWorker::SaveState { dir, .. } | ToWorker::ExportPeft { dir, .. } => {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("adapter_config.json"), br#"{"r": 8}"#).unwrap();
                std::fs::write(dir.join("adapter_model.safetensors"), b"fake-tensors").unwrap();
                FromWorker::Saved { bytes: 20 }
            }
            ToWorker::LoadState { dir, .. } if !dir.join("adapter_config.json").exists() => {
                FromWorker::Failed { category: ErrorCategory::User, message: format!("{} is missing", dir.display()) }
            }
            ToWorker::Sample(r) => FromWorker::Sampled(SampleResult {
                sequences: (0..r.num_samples)
                    .map(|i| SampledSequence {
                        tokens: vec![i as u32 + 1; r.params.max_tokens],
                        logprobs: vec![-0.5; r.params.max_tokens],
                        stop_reason: StopReason::Length,
                        topk_logprobs: None,
                    })
                    .collect(),
                prompt_logprobs: None,
                topk_prompt_logprobs: None,
            }),
            ToWorker::Memory => match self.memory.lock().unwrap().clone() {
                Some(report) => FromWorker::Memory(report),
                None => FromWorker::Failed { category: ErrorCategory::Server, message: "no report set".into() },
            },
            _ => FromWorker::Done,
        }
    }

    pub fn calls(&self) -> Vec<ToWorker> {
        self.calls.lock().unwrap().clone()
    }
}

pub struct Link(pub Arc<FakeWorker>);

impl WorkerLink for Link {
    fn call(&self, msg: Envelope) -> Pin<Box<dyn std::future::Future<Output = FromWorker> + Send>> {
        let reply = self.0.answer(msg.body);
        Box::pin(async move {
            // Let other tasks run, as a real worker thread would.
            tokio::task::yield_now().await;
            reply
        })
    }
}

pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("status {} body not JSON ({e}): {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub clock: Arc<ManualClock>,
    pub worker: Arc<FakeWorker>,
    pub data_dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

pub const T0_MS: u64 = 1_700_000_000_000;

pub fn models() -> Vec<BaseModelInfo> {
    vec![BaseModelInfo {
        name: "tiny/llama3".into(),
        arch: "llama".into(),
        max_context_length: 64,
        vocab_size: 100,
        tokenizer_dir: Some(PathBuf::from("/models/tiny-tokenizer")),
    }]
}

pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lathe-http-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    pub async fn start(data_dir: PathBuf, api_keys: Option<PathBuf>, start_ms: u64) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let clock = Arc::new(ManualClock::new(start_ms));
        let worker = Arc::new(FakeWorker::default());
        let config = ServeConfig {
            listen: addr,
            data_dir: data_dir.clone(),
            api_keys,
            public_url: None,
            queue_limit: None,
            snapshot_every: None,
            plan: runtime::plan::Plan::Single,
        };
        let tuning = Tuning {
            long_poll: Duration::from_millis(300),
            tick: Duration::from_millis(20),
            download_url_ttl_ms: 600_000,
            body_bytes_max: 1 << 20,
            ..Tuning::standard()
        };
        let link: Arc<dyn WorkerLink> = Arc::new(Link(Arc::clone(&worker)));
        let clock_dyn: Arc<dyn runtime::clock::Clock> = clock.clone();
        let task = tokio::spawn(async move {
            serve_on(listener, config, models(), link, clock_dyn, tuning).await.unwrap();
        });
        Server { addr, clock, worker, data_dir, task }
    }

    pub fn stop(self) {
        self.task.abort();
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(k) = key {
            head += &format!("X-API-Key: {k}\r\n");
        }
        for (name, value) in headers {
            head += &format!("{name}: {value}\r\n");
        }
        head += "\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response has a header block");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string())
            })
        };
        assert!(header("transfer-encoding").is_none(), "the test client reads content-length bodies only");
        Response { status, content_type: header("content-type").unwrap_or_default(), body: raw[split + 4..].to_vec() }
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.send("POST", path, Some("tml-test"), &[("Content-Type", "application/json")], body.to_string().as_bytes())
            .await
    }

    pub async fn get(&self, path: &str) -> Response {
        self.send("GET", path, Some("tml-test"), &[], b"").await
    }

    /// Polls a future until it is no longer try_again.
    pub async fn retrieve(&self, request_id: &str) -> Response {
        loop {
            let r = self
                .post(
                    "/api/v1/retrieve_future",
                    serde_json::json!({"request_id": request_id, "allow_metadata_only": true}),
                )
                .await;
            if r.content_type.contains("json") && r.status == 200 && r.json()["type"] == "try_again" {
                continue;
            }
            return r;
        }
    }

    pub async fn session(&self) -> String {
        let r = self
            .post(
                "/api/v1/create_session",
                serde_json::json!({"tags": [], "user_metadata": {}, "sdk_version": "0.38.0", "type": "create_session"}),
            )
            .await;
        assert_eq!(r.status, 200);
        r.json()["session_id"].as_str().unwrap().to_string()
    }

    /// create_model → waits → model id.
    pub async fn model(&self, session: &str, seq: u64) -> String {
        let r = self
            .post(
                "/api/v1/create_model",
                serde_json::json!({"session_id": session, "model_seq_id": seq, "base_model": "tiny/llama3",
                    "lora_config": {"rank": 8, "train_unembed": true, "train_mlp": true, "train_attn": true},
                    "optimizer_config": {"type": "adamw"}, "type": "create_model"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let done = self.retrieve(r.json()["request_id"].as_str().unwrap()).await.json();
        done["model_id"].as_str().unwrap().to_string()
    }

    pub async fn forward_backward(
        &self,
        model: &str,
        seq_id: i32,
        data: &[(Vec<i32>, Vec<i64>)],
        forward_only: bool,
        idem: Option<&str>,
    ) -> Response {
        let body = fb_request(model, seq_id, data, forward_only).encode_to_vec();
        let mut headers = vec![("Content-Type", "application/x-protobuf")];
        if let Some(k) = idem {
            headers.push(("X-Idempotency-Key", k));
        }
        self.send("POST", "/api/v1/forward_backward", Some("tml-test"), &headers, &body).await
    }

    /// Waits until the housekeeping tick has seen the clock (a few tick periods).
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
}

fn le_i32(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A cross_entropy request: each datum is (model input tokens, target tokens) with weights 1.
pub fn fb_request(
    model: &str,
    seq_id: i32,
    data: &[(Vec<i32>, Vec<i64>)],
    forward_only: bool,
) -> proto::ForwardBackwardRequest {
    let data = data
        .iter()
        .map(|(tokens, targets)| proto::Datum {
            model_input: vec![proto::Chunk {
                chunk: Some(proto::chunk::Chunk::EncodedText(proto::EncodedTextChunk { tokens: le_i32(tokens) })),
            }],
            loss_fn_inputs: BTreeMap::from([
                (
                    "target_tokens".to_string(),
                    proto::Tensor {
                        encoding: Some(proto::tensor::Encoding::Dense(
                            targets.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        )),
                        dtype: proto::DType::Int64 as i32,
                        shape: vec![targets.len() as i64],
                    },
                ),
                (
                    "weights".to_string(),
                    proto::Tensor {
                        encoding: Some(proto::tensor::Encoding::Dense(
                            targets.iter().flat_map(|_| 1f32.to_le_bytes()).collect(),
                        )),
                        dtype: proto::DType::Float32 as i32,
                        shape: vec![targets.len() as i64],
                    },
                ),
            ]),
            ..Default::default()
        })
        .collect();
    proto::ForwardBackwardRequest {
        model_id: model.to_string(),
        seq_id,
        data,
        loss_fn: "cross_entropy".into(),
        forward_only,
        ..Default::default()
    }
}
