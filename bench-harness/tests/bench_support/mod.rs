//! Shared by the harness's integration tests: where the server binaries are, and starting one.

#![allow(dead_code)]

use ringkv_bench::server::ServerProcess;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `RINGKV_BIN` if set, else the workspace's `target/release/ringkv`, built if missing.
pub fn ringkv_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGKV_BIN") {
        return path.into();
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = workspace.join("target/release/ringkv");
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--bin", "ringkv"])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --release --bin ringkv failed"
        );
    }
    binary
}

/// Reference etcd, when installed (`ETCD_BIN`, else /usr/bin/etcd).
pub fn etcd_binary() -> Option<PathBuf> {
    let path =
        std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from);
    path.exists().then_some(path)
}

pub fn etcdctl_binary() -> Option<PathBuf> {
    let path = PathBuf::from("/usr/bin/etcdctl");
    path.exists().then_some(path)
}

pub async fn start(name: &str, binary: &Path, dir: &Path) -> ServerProcess {
    ServerProcess::start(
        name,
        binary,
        &dir.join(format!("{name}-data")),
        &[],
        &dir.join(format!("{name}.log")),
    )
    .await
    .unwrap_or_else(|error| panic!("start {name}: {error}"))
}

/// Runs `ringkv-bench args`; returns (exit code, stdout, stderr).
pub fn bench(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv-bench"))
        .args(args)
        .output()
        .expect("run ringkv-bench");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
