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

/// Bootstrap refusals of a multi-member cluster, with reference etcd 3.4's messages (checked by
/// running `etcd` with the same flags).
#[test]
fn inconsistent_initial_clusters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (name, cluster, message) in [
        (
            "zz",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            "couldn't find local name \"zz\" in the initial cluster configuration",
        ),
        (
            "a",
            "a=http://127.0.0.1:1,b=http://127.0.0.1:1",
            "initial cluster a=http://127.0.0.1:1,b=http://127.0.0.1:1 has duplicate url",
        ),
    ] {
        let (code, stderr) = run(&[
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            name,
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
            "--initial-cluster",
            cluster,
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        assert!(!data.exists());
    }
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

/// Regression: the default data dir (`default.etcd`) is relative, and the WAL's directory open
/// on glommio failed with EBADF on a relative path, so `ringkv` with no flags could not start.
#[test]
fn relative_data_dir_starts() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["--data-dir", "relative.etcd"])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .current_dir(dir.path())
        .env_clear()
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let exited = child.try_wait().unwrap().is_some();
        if text.contains("ready to serve client requests")
            || exited
            || std::time::Instant::now() > deadline
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("ready to serve client requests"), "{text}");
    assert!(dir.path().join("relative.etcd/member/wal").is_dir());
}
