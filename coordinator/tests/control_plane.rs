//! The control plane in one process: a coordinator with `Workers::Remote` and an in-memory lease
//! store, and fake workers that speak the real frames (`runtime::transport`) over loopback TCP.
//! Admission needs a lease; another build is refused naming both versions; requests travel as
//! frames and come back; a reply stamped with another generation is refused; a lapsed lease counts
//! the worker out, fails what it held naming it, and bumps the metrics.
#![allow(clippy::unwrap_used)]

mod http_common;

use std::sync::Arc;
use std::time::Duration;

use coordinator::control::ControlPlane;
use coordinator::{serve_with, ServeConfig, Tuning, Workers};
use http_common::{fresh_dir, models, FakeWorker, T0_MS};
use runtime::clock::ManualClock;
use runtime::control::{Envelope, FromWorker, ToWorker};
use runtime::lease::{worker_key, LeaseStore, MemLeaseStore};
use runtime::transport::{self, Capacity, Frame, Hello, HelloReply, Limits};
use tokio::net::TcpStream;

struct Cluster {
    http: std::net::SocketAddr,
    control: std::net::SocketAddr,
    leases: Arc<MemLeaseStore>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(name: &str) -> Cluster {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let control_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = control_listener.local_addr().unwrap();
    let clock = Arc::new(ManualClock::new(T0_MS));
    let leases = Arc::new(MemLeaseStore::new(clock.clone()));
    let plane = ControlPlane { listener: control_listener, leases: leases.clone(), models: vec!["tiny/llama3".into()] };
    let config = ServeConfig {
        listen: http,
        data_dir: fresh_dir(name),
        api_keys: None,
        public_url: None,
        queue_limit: None,
        snapshot_every: None,
        plan: runtime::plan::Plan::Single,
    };
    let tuning =
        Tuning { long_poll: Duration::from_millis(200), tick: Duration::from_millis(20), ..Tuning::standard() };
    let task = tokio::spawn(async move {
        serve_with(listener, config, models(), Workers::Remote(plane), clock, tuning).await.unwrap();
    });
    Cluster { http, control, leases, task }
}

fn hello(name: &str, build: String) -> Hello {
    Hello {
        protocol: transport::PROTOCOL_VERSION,
        build,
        name: name.into(),
        capacity: Capacity { device: "cpu".into(), cores: 1, memory_bytes_max: None },
    }
}

/// A fake worker: holds its lease, says hello, and returns its socket and generation.
async fn join(c: &Cluster, name: &str) -> (Box<dyn runtime::lease::LeaseHandle>, TcpStream, u64) {
    let lease = c.leases.hold(&worker_key(name), b"{}".to_vec(), 3_000).await.unwrap();
    let mut s = TcpStream::connect(c.control).await.unwrap();
    match transport::client_hello(&mut s, &hello(name, transport::build_version()), &Limits::default()).await.unwrap() {
        HelloReply::Welcome { generation, models, .. } => {
            assert_eq!(models, vec!["tiny/llama3".to_string()]);
            (lease, s, generation)
        }
        HelloReply::Refused { message } => panic!("refused: {message}"),
    }
}

async fn http(c: &Cluster, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(c.http).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: tml-t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

async fn metric(c: &Cluster, line: &str) -> bool {
    let (_, body) = http(c, "GET", "/metrics", "").await;
    body.lines().any(|l| l == line)
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn session(c: &Cluster) -> String {
    let (status, body) =
        http(c, "POST", "/api/v1/create_session", r#"{"tags":[],"sdk_version":"0.38.0","type":"create_session"}"#)
            .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["session_id"].as_str().unwrap().to_string()
}

async fn create_model(c: &Cluster, session: &str) -> String {
    let body = format!(
        r#"{{"session_id":"{session}","model_seq_id":0,"base_model":"tiny/llama3","lora_config":{{"rank":4}},"type":"create_model"}}"#
    );
    let (status, body) = http(c, "POST", "/api/v1/create_model", &body).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["request_id"].as_str().unwrap().to_string()
}

async fn poll(c: &Cluster, request: &str) -> serde_json::Value {
    let (_, body) = http(c, "POST", "/api/v1/retrieve_future", &format!(r#"{{"request_id":"{request}"}}"#)).await;
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn another_build_is_refused_naming_both_versions() {
    let c = start("cp-refuse").await;
    let mut s = TcpStream::connect(c.control).await.unwrap();
    let theirs = "lathe 9.9.9 (protocol 1)".to_string();
    let err = transport::client_hello(&mut s, &hello("old", theirs.clone()), &Limits::default()).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&theirs) && text.contains(&transport::build_version()), "{text}");
    assert!(metric(&c, "lathe_workers{state=\"live\"} 0").await);
    c.task.abort();
}

#[tokio::test]
async fn requests_travel_as_frames_and_a_reply_of_another_generation_is_refused() {
    let c = start("cp-frames").await;
    let (_lease, mut s, generation) = join(&c, "w0").await;
    eventually("one live worker", async || metric(&c, "lathe_workers{state=\"live\"} 1").await).await;
    let sess = session(&c).await;
    let request = create_model(&c, &sess).await;
    let frame = transport::read_frame(&mut s, &Limits::default()).await.unwrap();
    assert_eq!(frame.generation, generation, "every frame carries the worker's generation");
    let envelope: Envelope = frame.decode().unwrap();
    assert!(matches!(envelope.body, ToWorker::CreateRun { .. }), "{:?}", envelope.body);
    let reply = FakeWorker::default().answer(envelope.body);
    // A reply stamped with an older generation is refused: the request stays pending.
    let stale = Frame::encode(generation - 1, frame.call, &reply, vec![]).unwrap();
    transport::write_frame(&mut s, &stale).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(poll(&c, &request).await["type"], "try_again");
    let good = Frame::encode(generation, frame.call, &reply, vec![]).unwrap();
    transport::write_frame(&mut s, &good).await.unwrap();
    eventually("the create to finish", async || poll(&c, &request).await["type"] == "create_model").await;
    c.task.abort();
}

#[tokio::test]
async fn a_lapsed_lease_counts_the_worker_out_and_fails_what_it_held_naming_it() {
    let c = start("cp-lapse").await;
    let (_lease, mut s, _) = join(&c, "w7").await;
    eventually("one live worker", async || metric(&c, "lathe_workers{state=\"live\"} 1").await).await;
    let sess = session(&c).await;
    let request = create_model(&c, &sess).await;
    let frame = transport::read_frame(&mut s, &Limits::default()).await.unwrap();
    let _: Envelope = frame.decode().unwrap();
    // The worker goes silent and its lease lapses.
    assert!(c.leases.expire(&worker_key("w7")));
    eventually("no live workers", async || metric(&c, "lathe_workers{state=\"live\"} 0").await).await;
    assert!(metric(&c, "lathe_worker_lease_expirations_total 1").await);
    let v = poll(&c, &request).await;
    assert_eq!(v["category"], "server", "{v}");
    assert!(v["error"].as_str().unwrap().contains("worker w7"), "{v}");
    // Its connection is closed: a late reply goes nowhere and nothing changes.
    let late = Frame::encode(frame.generation, frame.call, &FromWorker::Done, vec![]).unwrap();
    let _ = transport::write_frame(&mut s, &late).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(poll(&c, &request).await["category"], "server");
    c.task.abort();
}
