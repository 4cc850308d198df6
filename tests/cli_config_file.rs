//! `--config-file` through the built binary: etcd's YAML keys are read, the file is the source
//! of truth over flags and ETCD_* variables, and bad files are clear errors.

use std::io::Write;
use std::process::{Command, Output};

fn ringkv(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("ringkv runs")
}

fn yaml(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

#[test]
fn reads_etcd_yaml_keys() {
    let file = yaml(
        "name: infra1\n\
         data-dir: /var/lib/ringkv\n\
         listen-client-urls: http://127.0.0.1:2379\n\
         advertise-client-urls: http://127.0.0.1:2379\n\
         listen-peer-urls: http://127.0.0.1:2380\n\
         initial-advertise-peer-urls: http://127.0.0.1:2380\n\
         initial-cluster: infra1=http://127.0.0.1:2380\n\
         initial-cluster-token: tok\n\
         heartbeat-interval: 200\n\
         election-timeout: 2000\n\
         max-txn-ops: 64\n\
         tuning-profile: small\n",
    );
    let output = ringkv(
        &[
            "--print-config",
            "--config-file",
            file.path().to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    let config = String::from_utf8_lossy(&output.stdout);
    for line in [
        "name: infra1",
        "data-dir: /var/lib/ringkv",
        "initial-cluster: infra1=http://127.0.0.1:2380",
        "initial-cluster-token: tok",
        "heartbeat-interval: 200",
        "election-timeout: 2000",
        "max-txn-ops: 64",
        "snapshot-count: 100000",
        "tuning-profile: small",
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "{line:?} missing from:\n{config}"
        );
    }
}

#[test]
fn file_wins_and_ignored_settings_are_named() {
    let file = yaml("name: fromfile\n");
    let path = file.path().to_str().unwrap();
    let output = ringkv(
        &["--print-config", "--name", "fromflag"],
        &[("ETCD_CONFIG_FILE", path), ("ETCD_DATA_DIR", "/x")],
    );
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("name: fromfile\n"));
    assert!(
        err.contains("these are ignored: --name, ETCD_DATA_DIR"),
        "{err}"
    );
}

#[test]
fn bad_file_is_a_clear_error() {
    let file = yaml("election-timeout: 60000\nheartbeat-interval: 10000\n");
    let output = ringkv(&["--config-file", file.path().to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(
            "--election-timeout[60000ms] is too long, and should be set less than 50000ms"
        ),
        "{err}"
    );

    let output = ringkv(&["--config-file", "/nonexistent/ringkv.yml"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("cannot read config file /nonexistent/ringkv.yml"));
}
