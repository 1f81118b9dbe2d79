//! Structural checks of the workspace that the compiler cannot make (design §2):
//! the crate dependency direction, that the coordinator library never reaches into model math,
//! and that `unsafe` lives only in `kernels`.
// Test helpers may unwrap: a failure here is a failed check, reported with its location.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("chaos-tests sits one level below the root").to_path_buf()
}

/// crate name → workspace crates it depends on (normal, dev and build dependencies alike).
fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["name"].as_str().unwrap().to_string())
                .filter(|n| members.contains(n))
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

#[test]
fn crate_dependencies_point_one_way() {
    let edges = workspace_edges();
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("kernels", &[][..]),
        ("runtime", &[][..]),
        ("worker", &["kernels", "runtime"][..]),
        // The coordinator *package* links worker and kernels for the `lathe` binary only; the
        // library's sources are checked separately below.
        ("coordinator", &["runtime", "worker", "kernels"][..]),
        ("chaos-tests", &["kernels", "runtime", "worker", "coordinator"][..]),
    ]);
    assert_eq!(
        edges.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        allowed.keys().copied().collect::<BTreeSet<_>>(),
        "workspace members changed; update the allowed edges here and in ARCHITECTURE.md"
    );
    for (krate, deps) in &edges {
        for dep in deps {
            assert!(allowed[krate.as_str()].contains(&dep.as_str()), "forbidden dependency edge: {krate} -> {dep}");
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source lines with comments removed, so that prose mentioning a word does not trip a check.
fn code_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => l[..i].to_string(),
            None => l.to_string(),
        })
        .collect()
}

#[test]
fn coordinator_library_never_calls_into_model_math() {
    let src = workspace_root().join("coordinator/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(!files.is_empty());
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        // Only the binary (main.rs and the cli/ module tree it owns) composes worker and kernels.
        if rel == Path::new("main.rs") || rel.starts_with("cli") {
            continue;
        }
        for (n, line) in code_lines(&file).iter().enumerate() {
            for forbidden in ["worker::", "kernels::", "use worker", "use kernels"] {
                assert!(
                    !line.contains(forbidden),
                    "{}:{}: the coordinator library must not use `{forbidden}` (only main.rs/cli may)",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn unsafe_code_lives_only_in_kernels() {
    let root = workspace_root();
    for krate in ["runtime", "worker", "coordinator", "chaos-tests"] {
        let mut files = Vec::new();
        rust_files(&root.join(krate), &mut files);
        // This file names the word in its own checks.
        for file in files.into_iter().filter(|f| !f.ends_with("tests/tidy.rs")) {
            for (n, line) in code_lines(&file).iter().enumerate() {
                let has_unsafe = line.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == "unsafe");
                let allows = line.contains("allow(unsafe_code)");
                assert!(!has_unsafe && !allows, "{}:{}: `unsafe` outside kernels", file.display(), n + 1);
            }
        }
    }
}

#[test]
fn every_unsafe_block_in_kernels_has_a_safety_comment() {
    let mut files = Vec::new();
    rust_files(&workspace_root().join("kernels"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("unsafe {") {
                // The SAFETY comment sits on one of the few lines just above (or on the same line).
                let window = &lines[n.saturating_sub(6)..=n];
                assert!(
                    window.iter().any(|l| l.contains("SAFETY:")),
                    "{}:{}: unsafe block without a `// SAFETY:` comment above it",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}
