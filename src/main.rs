//! The `ringkv` binary. The server arrives with the server issue; until then this only reports
//! its version.

fn main() {
    println!("ringkv {} (etcd API 3.5)", env!("CARGO_PKG_VERSION"));
}
