//! Loopback figures for `lathe bench`: how fast frames cross a 127.0.0.1 TCP pair.
//!
//! These functions read the wall clock: they are the edge where elapsed time is the result.
//! Run them on a multi-threaded tokio runtime, so that sender and receiver get a thread each.

use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::error::TransportError;
use super::frame::Frame;
use super::stream::{read_frame, read_frame_into, write_frame};
use super::tcp::{connect, tune};
use super::Limits;

/// One-way bulk transfer of frames with a `body_bytes` body.
#[derive(Clone, Debug, PartialEq)]
pub struct ThroughputReport {
    pub body_bytes: usize,
    pub reps: usize,
    /// Median over the reps of body bytes / seconds, in 10⁹ bytes per second.
    pub gigabytes_per_s_median: f64,
    pub gigabytes_per_s_min: f64,
    pub gigabytes_per_s_max: f64,
}

/// Round trips of an empty control frame.
#[derive(Clone, Debug, PartialEq)]
pub struct RttReport {
    pub reps: usize,
    pub rtt_us_median: f64,
    pub rtt_us_p99: f64,
}

/// How the receiving end of [`loopback_throughput_with`] gets its buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receive {
    /// A new frame per read ([`read_frame`]). Bodies over glibc's 32 MiB mmap threshold then land
    /// in freshly mapped memory, and the page faults dominate: ~1.2 GB/s for 64 MiB on the 2-core
    /// dev machine, against ~3-4 GB/s reused.
    Fresh,
    /// One frame's buffers reused for every read ([`read_frame_into`]), as a receiver of tensors
    /// should do.
    Reused,
}

/// Sends `reps` frames (at least 1, after one unmeasured warm-up) with a `bytes`-byte body one
/// way over a loopback pair, the receiver reusing one frame's buffers ([`Receive::Reused`]).
/// Each rep is timed from the start of the write to the receiver's empty acknowledgement, so it
/// includes one round trip (tens of microseconds, small against a megabyte body).
///
/// # Errors
/// Any transport error of either end.
pub async fn loopback_throughput(bytes: usize, reps: usize) -> Result<ThroughputReport, TransportError> {
    loopback_throughput_with(bytes, reps, Receive::Reused).await
}

/// [`loopback_throughput`] with a choice of receive path.
///
/// # Errors
/// Any transport error of either end.
pub async fn loopback_throughput_with(
    bytes: usize,
    reps: usize,
    receive: Receive,
) -> Result<ThroughputReport, TransportError> {
    let reps = reps.max(1);
    let limits = Limits { body_bytes_max: bytes as u64, ..Limits::default() };
    let (mut sender, receiver) = pair().await?;
    let rounds = reps + 1;
    let sink: JoinHandle<Result<(), TransportError>> = tokio::spawn(async move {
        let mut s = receiver;
        let mut frame = Frame { generation: 0, call: 0, header: Vec::new(), body: Vec::new() };
        for _ in 0..rounds {
            match receive {
                Receive::Fresh => frame = read_frame(&mut s, &limits).await?,
                Receive::Reused => read_frame_into(&mut s, &limits, &mut frame).await?,
            }
            write_frame(&mut s, &ack(frame.call)?).await?;
        }
        Ok(())
    });
    let frame = Frame::encode(1, 0, &(), vec![0xA5; bytes])?;
    let mut seconds = Vec::with_capacity(reps);
    for round in 0..rounds {
        let start = now();
        write_frame(&mut sender, &frame).await?;
        read_frame(&mut sender, &limits).await?;
        if round > 0 {
            seconds.push(start.elapsed().as_secs_f64());
        }
    }
    join(sink).await?;
    let mut rates: Vec<f64> = seconds.iter().map(|s| bytes as f64 / s.max(1e-12) / 1e9).collect();
    rates.sort_by(f64::total_cmp);
    Ok(ThroughputReport {
        body_bytes: bytes,
        reps,
        gigabytes_per_s_median: rates[rates.len() / 2],
        gigabytes_per_s_min: rates[0],
        gigabytes_per_s_max: rates[rates.len() - 1],
    })
}

/// Ping-pongs an empty control frame `reps` times (at least 1, after one unmeasured warm-up).
///
/// # Errors
/// Any transport error of either end.
pub async fn loopback_rtt(reps: usize) -> Result<RttReport, TransportError> {
    let reps = reps.max(1);
    let limits = Limits::default();
    let (mut client, server) = pair().await?;
    let rounds = reps + 1;
    let echo: JoinHandle<Result<(), TransportError>> = tokio::spawn(async move {
        let mut s = server;
        for _ in 0..rounds {
            let frame = read_frame(&mut s, &limits).await?;
            write_frame(&mut s, &frame).await?;
        }
        Ok(())
    });
    let mut rtts = Vec::with_capacity(reps);
    for round in 0..rounds {
        let ping = ack(round as u64)?;
        let start = now();
        write_frame(&mut client, &ping).await?;
        read_frame(&mut client, &limits).await?;
        if round > 0 {
            rtts.push(start.elapsed());
        }
    }
    join(echo).await?;
    rtts.sort();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    // The smallest rank with at least 99% of the samples at or below it.
    let p99_rank = (reps * 99).div_ceil(100).max(1) - 1;
    Ok(RttReport { reps, rtt_us_median: micros(rtts[reps / 2]), rtt_us_p99: micros(rtts[p99_rank]) })
}

/// A connected, tuned 127.0.0.1 pair: (connecting end, accepted end).
async fn pair() -> Result<(TcpStream, TcpStream), TransportError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(connect(addr), listener.accept());
    let (server, _) = accepted?;
    tune(&server)?;
    Ok((client?, server))
}

/// An empty control frame.
fn ack(call: u64) -> Result<Frame, TransportError> {
    Frame::encode(1, call, &(), Vec::new())
}

async fn join(task: JoinHandle<Result<(), TransportError>>) -> Result<(), TransportError> {
    task.await.map_err(|e| TransportError::Io(std::io::Error::other(e)))?
}

// Benches are the edge where elapsed wall time is the measurement itself (see the module doc).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}
