//! Test support for lathe's crates (feature `testing`; always on in runtime's own tests): a
//! throwaway single-member etcd per test, on free ports and in its own data directory, killed and
//! deleted on drop.
//!
//! Tests call [`etcd_or_skip`]: with no `etcd` on PATH it prints why and returns None, unless
//! `LATHE_REQUIRE_ETCD=1` (CI), where a missing etcd fails the test. Reading the wall clock and
//! sleeping are fine here: this code waits for a real process.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

/// etcd 3.4 is healthy about 1 s after start on an idle machine; this leaves room for a loaded one.
const READY_WAIT_MS: u64 = 10_000;
const POLL_INTERVAL_MS: u64 = 50;
/// Bounds each health probe, so a half-started etcd cannot stall the wait past `READY_WAIT_MS`.
const PROBE_TIMEOUT_MS: u64 = 500;
/// A free port found by binding port 0 may be taken again before etcd binds it; try new ones.
const START_ATTEMPTS: u32 = 5;
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, Error)]
pub enum EtcdServerError {
    #[error("`etcd` is not on PATH (Debian: apt-get install etcd-server)")]
    NotInstalled,
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("etcd exited during startup ({status}); last lines of its log:\n{log_tail}")]
    Exited { status: String, log_tail: String },
    #[error("etcd at {url} was not healthy within {READY_WAIT_MS} ms; last lines of its log:\n{log_tail}")]
    NotReady { url: String, log_tail: String },
}

/// A running etcd that lives as long as this value.
pub struct EtcdServer {
    child: Child,
    data_dir: PathBuf,
    url: String,
}

impl EtcdServer {
    pub fn start() -> Result<EtcdServer, EtcdServerError> {
        let mut attempt = 1;
        loop {
            match Self::start_once() {
                Err(EtcdServerError::Exited { log_tail, .. })
                    if attempt < START_ATTEMPTS && log_tail.contains("address already in use") =>
                {
                    attempt += 1
                }
                result => return result,
            }
        }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn start_once() -> Result<EtcdServer, EtcdServerError> {
        let [client_port, peer_port] = free_ports()?;
        let url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let data_dir = unique_temp_dir()?;
        let log_path = data_dir.join("etcd.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| io_error(format!("create {}", log_path.display()), e))?;
        let log_for_stderr = log.try_clone().map_err(|e| io_error("clone the log file handle".into(), e))?;
        let spawned = Command::new("etcd")
            .arg("--data-dir")
            .arg(data_dir.join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                remove_dir(&data_dir);
                return Err(match e.kind() {
                    std::io::ErrorKind::NotFound => EtcdServerError::NotInstalled,
                    _ => io_error("spawn etcd".into(), e),
                });
            }
        };
        // From here on, Drop kills the child and removes the directory on every error path.
        let mut server = EtcdServer { child, data_dir, url };
        server.wait_ready()?;
        Ok(server)
    }

    #[allow(clippy::disallowed_methods)] // waits on a real process, see the module doc
    fn wait_ready(&mut self) -> Result<(), EtcdServerError> {
        let deadline = Instant::now() + Duration::from_millis(READY_WAIT_MS);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(EtcdServerError::Exited { status: status.to_string(), log_tail: self.log_tail() });
            }
            if is_healthy(&self.url) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
        Err(EtcdServerError::NotReady { url: self.url.clone(), log_tail: self.log_tail() })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // kill fails only if the child already exited; wait reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_dir(&self.data_dir);
    }
}

/// A started etcd, or None (after saying why on stderr) when etcd is not installed and
/// `LATHE_REQUIRE_ETCD` is not `1`. Panics on any other failure: an installed etcd that does not
/// start is a broken test machine, not a reason to skip.
pub fn etcd_or_skip(test_name: &str) -> Option<EtcdServer> {
    match EtcdServer::start() {
        Ok(server) => Some(server),
        Err(EtcdServerError::NotInstalled) if std::env::var("LATHE_REQUIRE_ETCD").as_deref() != Ok("1") => {
            eprintln!("skipping {test_name}: `etcd` is not on PATH (set LATHE_REQUIRE_ETCD=1 to fail instead)");
            None
        }
        Err(e) => panic!("{test_name}: cannot start etcd: {e}"),
    }
}

/// Two distinct ports that were free a moment ago (both listeners are held until both are known).
fn free_ports() -> Result<[u16; 2], EtcdServerError> {
    let bind = || TcpListener::bind("127.0.0.1:0").map_err(|e| io_error("bind a free port".into(), e));
    let (first, second) = (bind()?, bind()?);
    let port = |listener: &TcpListener| {
        listener.local_addr().map(|addr| addr.port()).map_err(|e| io_error("read a bound port".into(), e))
    };
    Ok([port(&first)?, port(&second)?])
}

/// `$TMPDIR/lathe-etcd-<pid>-<n>`: unique within this process by the counter, across processes by the pid.
fn unique_temp_dir() -> Result<PathBuf, EtcdServerError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lathe-etcd-{}-{n}", std::process::id()));
    // Left over from an earlier process that had this pid and was killed before its Drop ran.
    remove_dir(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| io_error(format!("create {}", dir.display()), e))?;
    Ok(dir)
}

/// etcd's HTTP health endpoint on the client port answers `{"health":"true"}` once it has a leader.
fn is_healthy(url: &str) -> bool {
    let Some(address) = url.strip_prefix("http://") else { return false };
    let Ok(address) = address.parse() else { return false };
    let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
    let Ok(mut stream) = TcpStream::connect_timeout(&address, timeout) else { return false };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    // HTTP/1.0, so that etcd closes the connection after answering and read_to_string ends.
    if stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

fn remove_dir(dir: &Path) {
    // Absent is fine; anything else leaves a directory in $TMPDIR, which is not worth failing a test for.
    let _ = std::fs::remove_dir_all(dir);
}

fn io_error(what: String, source: std::io::Error) -> EtcdServerError {
    EtcdServerError::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_cleans_up() {
        let Some(server) = etcd_or_skip("starts_answers_and_cleans_up") else { return };
        assert!(server.url().starts_with("http://127.0.0.1:"));
        assert!(is_healthy(server.url()));
        let (url, data_dir) = (server.url().to_string(), server.data_dir.clone());
        assert!(data_dir.exists());
        drop(server);
        assert!(!data_dir.exists(), "the data directory must be deleted");
        assert!(!is_healthy(&url), "etcd must be stopped");
    }
}
