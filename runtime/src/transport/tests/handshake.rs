//! The Hello / Welcome / Refused exchange, over a 127.0.0.1 TCP pair.

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::transport::{
    build_version, check_hello, client_hello, connect, send_hello_reply, server_hello, tune, write_frame, Capacity,
    Frame, Hello, HelloReply, Limits, TransportError, PROTOCOL_VERSION,
};

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(connect(addr), listener.accept());
    let (server, _) = accepted.expect("accept");
    tune(&server).expect("nodelay");
    (client.expect("connect"), server)
}

fn capacity() -> Capacity {
    Capacity { device: "cpu".into(), cores: 2, memory_bytes_max: Some(8 << 30) }
}

fn welcome() -> HelloReply {
    HelloReply::Welcome { worker: 3, generation: 7, models: vec!["tiny/llama3".into()] }
}

/// The coordinator's side as it will be written: read, check against our build, answer.
/// Returns the Hello it read, or the error that ended the exchange.
async fn coordinator(mut s: TcpStream) -> Result<Hello, TransportError> {
    let hello = server_hello(&mut s, &Limits::default()).await?;
    match check_hello(&hello, &build_version()) {
        Ok(()) => send_hello_reply(&mut s, &welcome()).await?,
        Err(message) => send_hello_reply(&mut s, &HelloReply::Refused { message }).await?,
    }
    Ok(hello)
}

/// Goal: a worker of the same build is welcomed, and both sides see what the other sent.
/// Method: a real exchange over TCP.
#[tokio::test]
async fn matching_versions_are_welcomed() {
    let (mut worker, server) = tcp_pair().await;
    let coord = tokio::spawn(coordinator(server));
    let hello = Hello::ours("w0".into(), capacity());
    assert_eq!(hello.build, format!("lathe {} (protocol {PROTOCOL_VERSION})", env!("CARGO_PKG_VERSION")));
    let reply = client_hello(&mut worker, &hello, &Limits::default()).await.expect("welcomed");
    assert_eq!(reply, welcome());
    assert_eq!(coord.await.expect("coordinator").expect("read hello"), hello);
}

/// Goal: a worker of another build is refused with a message naming both builds and the fix.
/// Method: a Hello claiming another build string; the worker must get `Refused`.
#[tokio::test]
async fn a_different_build_is_refused_naming_both_versions() {
    let (mut worker, server) = tcp_pair().await;
    let coord = tokio::spawn(coordinator(server));
    let theirs = "lathe 0.0.9 (protocol 1)";
    let hello = Hello { build: theirs.into(), ..Hello::ours("w1".into(), capacity()) };
    match client_hello(&mut worker, &hello, &Limits::default()).await {
        Err(TransportError::Refused(message)) => {
            assert!(message.contains(theirs), "{message}");
            assert!(message.contains(&build_version()), "{message}");
            assert!(message.contains("same lathe build"), "{message}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    coord.await.expect("coordinator").expect("the refusal was sent");
    let other_protocol = Hello { protocol: PROTOCOL_VERSION + 1, ..Hello::ours("w2".into(), capacity()) };
    assert!(check_hello(&other_protocol, &build_version()).is_err());
}

/// Goal: a peer that does not send a Hello ends the exchange with an error, whatever it sends.
/// Method: plain garbage (an HTTP request), a frame whose header is not a Hello, a Hello frame
/// with a non-handshake generation, and an immediate close.
#[tokio::test]
async fn a_peer_sending_garbage_instead_of_hello_is_an_error() {
    let (mut worker, server) = tcp_pair().await;
    let coord = tokio::spawn(coordinator(server));
    worker.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(matches!(coord.await.expect("coordinator"), Err(TransportError::BadMagic { .. })));

    let (mut worker, server) = tcp_pair().await;
    let coord = tokio::spawn(coordinator(server));
    let not_hello = Frame { generation: 0, call: 0, header: vec![0xFF; 12], body: Vec::new() };
    write_frame(&mut worker, &not_hello).await.expect("write");
    assert!(matches!(coord.await.expect("coordinator"), Err(TransportError::Decode(_))));

    let (mut worker, server) = tcp_pair().await;
    let coord = tokio::spawn(coordinator(server));
    let late = Frame::encode(5, 0, &Hello::ours("w3".into(), capacity()), Vec::new()).expect("encodes");
    write_frame(&mut worker, &late).await.expect("write");
    assert!(matches!(coord.await.expect("coordinator"), Err(TransportError::UnexpectedFrame { generation: 5, .. })));

    let (worker, server) = tcp_pair().await;
    let coord = tokio::spawn(coordinator(server));
    drop(worker);
    assert!(matches!(coord.await.expect("coordinator"), Err(TransportError::Closed)));
}

/// Goal: a worker of another protocol whose Hello no longer decodes is still named.
/// Method: a header that starts like a Hello of protocol 2 and then differs.
#[tokio::test]
async fn an_undecodable_hello_of_another_protocol_names_its_build() {
    let (mut worker, server) = tcp_pair().await;
    let coord = tokio::spawn(coordinator(server));
    let future = (PROTOCOL_VERSION + 1, "lathe 9.0.0 (protocol 2)".to_string(), u64::MAX);
    write_frame(&mut worker, &Frame::encode(0, 0, &future, Vec::new()).expect("encodes")).await.expect("write");
    match coord.await.expect("coordinator") {
        Err(TransportError::VersionMismatch { ours, theirs }) => {
            assert_eq!((ours, theirs.as_str()), (build_version(), "lathe 9.0.0 (protocol 2)"));
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

/// Goal: a worker whose coordinator answers garbage gets an error, not a hang or a panic.
/// Method: the "coordinator" reads the Hello and answers with bytes that are not a frame.
#[tokio::test]
async fn a_worker_answered_with_garbage_gets_an_error() {
    let (mut worker, mut server) = tcp_pair().await;
    let coord = tokio::spawn(async move {
        server_hello(&mut server, &Limits::default()).await.expect("hello");
        server.write_all(b"\x00\x01garbage").await.expect("write");
    });
    let got = client_hello(&mut worker, &Hello::ours("w4".into(), capacity()), &Limits::default()).await;
    assert!(matches!(got, Err(TransportError::BadMagic { .. })), "{got:?}");
    coord.await.expect("coordinator");
}
