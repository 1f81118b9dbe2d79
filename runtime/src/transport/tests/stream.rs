//! Frames over real streams: a 127.0.0.1 TCP pair, and tokio's in-memory duplex pipe (whose small
//! buffer forces partial reads and writes).

use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};

use super::{frame, prefix, Rng, SMALL};
use crate::transport::{
    connect, encode_frame, read_frame, read_frame_into, tune, write_frame, Frame, Limits, TransportError,
};

/// Longer than any of these exchanges takes; a broken codec fails by it instead of hanging.
const LONG: Duration = Duration::from_secs(20);

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, accepted) = tokio::join!(connect(addr), listener.accept());
    let (server, _) = accepted.expect("accept");
    tune(&server).expect("nodelay");
    (client.expect("connect"), server)
}

fn sample_frames() -> Vec<Frame> {
    vec![frame(0, 0, 0, 0), frame(1, 1, 25, 0), frame(2, 2, 0, 4096), frame(3, 3, 1000, 8 << 20), frame(4, 4, 1, 1)]
}

/// Goal: frames with and without headers and bodies cross a TCP connection unchanged, and a
/// clean close between frames reads as `Closed`.
/// Method: the server echoes every frame; the client compares, then closes its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_round_trip_over_tcp() {
    let (mut client, mut server) = tcp_pair().await;
    let echo = tokio::spawn(async move {
        loop {
            match read_frame(&mut server, &Limits::default()).await {
                Ok(f) => write_frame(&mut server, &f).await.expect("echo"),
                Err(e) => return e,
            }
        }
    });
    let exchange = async {
        for f in sample_frames() {
            write_frame(&mut client, &f).await.expect("send");
            assert_eq!(read_frame(&mut client, &Limits::default()).await.expect("echoed"), f);
        }
    };
    tokio::time::timeout(LONG, exchange).await.expect("frames are echoed in time");
    client.shutdown().await.expect("shutdown");
    assert!(matches!(echo.await.expect("echo task"), TransportError::Closed));
}

/// Goal: writes and reads that move only a few bytes at a time still produce whole frames.
/// Method: a duplex pipe with a 7-byte buffer, all frames written by one task and read by another.
#[tokio::test]
async fn frames_survive_partial_reads_and_writes() {
    let (mut a, mut b): (DuplexStream, DuplexStream) = tokio::io::duplex(7);
    // Smaller bodies than `sample_frames`: every 7 bytes cost a task switch.
    let frames = vec![frame(0, 0, 0, 0), frame(1, 1, 25, 0), frame(2, 2, 0, 4096), frame(3, 3, 1000, 30_000)];
    let sent = frames.clone();
    let writer = tokio::spawn(async move {
        for f in &sent {
            write_frame(&mut a, f).await.expect("write");
        }
    });
    let reads = async {
        for f in &frames {
            assert_eq!(&read_frame(&mut b, &Limits::default()).await.expect("read"), f);
        }
    };
    tokio::time::timeout(LONG, reads).await.expect("frames arrive in time");
    writer.await.expect("writer");
    assert!(matches!(read_frame(&mut b, &Limits::default()).await, Err(TransportError::Closed)));
}

/// Goal: a stream that ends inside a frame is `Truncated` and names the part, never `Closed`.
/// Method: for cuts inside the prefix, the header and the body, send the cut frame and close.
#[tokio::test]
async fn a_stream_ending_inside_a_frame_is_truncated() {
    let bytes = encode_frame(&frame(1, 2, 10, 20));
    // (cut, the part it falls in, bytes of that part before the cut)
    for (cut, part, got) in
        [(1, "prefix", 1), (31, "prefix", 31), (32, "header", 0), (41, "header", 9), (42, "body", 0), (61, "body", 19)]
    {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&bytes[..cut]).await.expect("write");
        drop(a);
        match read_frame(&mut b, &SMALL).await {
            Err(TransportError::Truncated { what, got_bytes, .. }) => {
                assert_eq!((what, got_bytes), (part, got), "cut {cut}")
            }
            other => panic!("cut {cut}: expected Truncated, got {other:?}"),
        }
    }
}

/// Goal: a prefix that cannot be accepted is refused as soon as its bad bytes are in, without
/// the reader waiting for the rest of the prefix or for (or allocating) a 1 TiB body.
/// Method: send a wrong magic, 16 bytes announcing a 1 TiB body, or a full such prefix, and keep
/// the connection open; each read must fail within 5 s.
#[tokio::test]
async fn a_bad_prefix_is_refused_without_waiting_for_more() {
    let tib_prefix = prefix(0, 1 << 40);
    for sent in [&b"GET"[..], &tib_prefix[..16], &tib_prefix[..]] {
        let (mut client, mut server) = tcp_pair().await;
        client.write_all(sent).await.expect("write");
        let read = tokio::time::timeout(Duration::from_secs(5), read_frame(&mut server, &Limits::default())).await;
        match read {
            Ok(Err(TransportError::BadMagic { .. })) => assert_eq!(sent, b"GET"),
            Ok(Err(TransportError::Oversize { what: "body", len, .. })) => assert_eq!(len, 1 << 40),
            other => panic!("{sent:?}: expected an immediate refusal, got {other:?}"),
        }
        drop(client);
    }
}

/// Goal: a server reading frames from a peer that sends garbage returns an error and leaves the
/// process healthy.
/// Method: 200 seeded connections, each sending random bytes (most of them behind a valid magic)
/// and then closing; every server task must end in `Err` (after reading only frames within the
/// limits), and the next connection must still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_fed_garbage_over_tcp_returns_an_error() {
    let mut rng = Rng::new(0x5EED_0005);
    for _ in 0..200 {
        let (mut client, mut server) = tcp_pair().await;
        let reader = tokio::spawn(async move {
            loop {
                match read_frame(&mut server, &SMALL).await {
                    Ok(f) => assert!(f.header.len() <= SMALL.header_bytes_max && f.body.len() <= 64 << 10),
                    Err(e) => return e,
                }
            }
        });
        let mut garbage = rng.bytes_below(2000);
        garbage.push(0);
        // A quarter pure noise; the rest behind the magic with any header length (mostly
        // oversize), or a small header and any body length (mostly oversize), or both small (so
        // that whole frames of garbage get read).
        if garbage.len() >= 16 {
            let small_header = (rng.below(100) as u32).to_le_bytes();
            let small_body = (rng.below(1000) as u64).to_le_bytes();
            match rng.below(4) {
                0 => {}
                1 => garbage[..4].copy_from_slice(b"LTH1"),
                2 => {
                    garbage[..4].copy_from_slice(b"LTH1");
                    garbage[4..8].copy_from_slice(&small_header);
                }
                _ => {
                    garbage[..4].copy_from_slice(b"LTH1");
                    garbage[4..8].copy_from_slice(&small_header);
                    garbage[8..16].copy_from_slice(&small_body);
                }
            }
        }
        // The server may refuse (and drop its end) before all of it is written.
        let _ = client.write_all(&garbage).await;
        drop(client);
        let err = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("reader ends").expect("no panic");
        assert!(!matches!(err, TransportError::Io(_)), "garbage should be judged, not an i/o failure: {err:?}");
    }
    let (mut client, mut server) = tcp_pair().await;
    write_frame(&mut client, &frame(1, 1, 3, 3)).await.expect("send");
    assert_eq!(read_frame(&mut server, &SMALL).await.expect("read"), frame(1, 1, 3, 3));
}

/// Goal: `read_frame_into` reuses the frame's buffers, so a stream of large bodies does not
/// allocate per frame.
/// Method: read a large frame, then a small one, into one `Frame`: the body keeps its address
/// and its large capacity.
#[tokio::test]
async fn read_frame_into_reuses_the_buffers() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let (large, small) = (frame(1, 1, 8, 100_000), frame(2, 2, 8, 10));
    let sent = (large.clone(), small.clone());
    let writer = tokio::spawn(async move {
        write_frame(&mut a, &sent.0).await.expect("write");
        write_frame(&mut a, &sent.1).await.expect("write");
    });
    let limits = Limits::default();
    let mut f = Frame { generation: 0, call: 0, header: Vec::new(), body: Vec::new() };
    read_frame_into(&mut b, &limits, &mut f).await.expect("read");
    assert_eq!(f, large);
    let body_at = f.body.as_ptr();
    read_frame_into(&mut b, &limits, &mut f).await.expect("read");
    assert_eq!(f, small);
    assert_eq!(f.body.as_ptr(), body_at);
    assert!(f.body.capacity() >= 100_000);
    writer.await.expect("writer");
}
