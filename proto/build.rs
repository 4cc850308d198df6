//! Compiles etcd's v3 `.proto` files into Rust at build time: protox (a pure-Rust protobuf
//! compiler) builds the descriptor set, tonic-prost-build generates messages, clients and servers.
//! No system `protoc` is involved, so a bare machine with only cargo can build the crate.

use std::path::PathBuf;

/// Every file is named relative to `proto/`, the include root, which mirrors etcd's import paths.
const PROTO_FILES: &[&str] = &[
    "etcd/api/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto",
    "etcd/api/etcdserverpb/rpc.proto",
    "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
    "ringkv/peer.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let include_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for file in PROTO_FILES {
        println!(
            "cargo:rerun-if-changed={}",
            include_root.join(file).display()
        );
    }
    println!("cargo:rerun-if-changed=build.rs");

    let descriptors = protox::compile(PROTO_FILES, [&include_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `connect()` helpers need tonic's transport; the server crate owns that.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
