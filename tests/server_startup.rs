//! What the `ringkv` binary refuses to serve, and says so before touching the data dir.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn multi_member_clusters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "a",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:1",
        "--initial-cluster",
        "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "--initial-cluster lists 2 members; ringkv runs single-member clusters only so far"
        ),
        "{stderr}"
    );
    assert!(!data.exists());
}

#[test]
fn unix_client_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = run(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--listen-client-urls",
        "unix://localhost:1",
        "--advertise-client-urls",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("only http client URLs are supported so far"),
        "{stderr}"
    );
    assert!(!data.exists());
}
