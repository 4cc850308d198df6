//! etcd's v3 wire format for ringkv: the message types, gRPC clients and gRPC server traits of the
//! `etcdserverpb`, `mvccpb`, `authpb`, `v3lockpb` and `v3electionpb` packages, generated at build
//! time from the `.proto` files beside this crate (see `build.rs`).
//!
//! Field names are prost's snake_case of etcd's: `TTL` is `ttl`, `ID` is `id`, `peerURLs` is
//! `peer_ur_ls`. The gRPC paths (`/etcdserverpb.KV/Range`, ...) are etcd's, so stock clients such
//! as `etcdctl` talk to a server built on these traits unchanged.

// Generated code: it follows prost's conventions, not our pedantic lint set.
#![allow(clippy::all, clippy::pedantic)]

pub mod mvccpb {
    //! Key-value records and watch events.
    tonic::include_proto!("mvccpb");
}

pub mod authpb {
    //! Users, roles and permissions.
    tonic::include_proto!("authpb");
}

pub mod etcdserverpb {
    //! The KV, Watch, Lease, Cluster, Maintenance and Auth services.
    tonic::include_proto!("etcdserverpb");
}

pub mod v3lockpb {
    //! The Lock service.
    tonic::include_proto!("v3lockpb");
}

pub mod v3electionpb {
    //! The Election service.
    tonic::include_proto!("v3electionpb");
}

pub mod ringkvpeerpb {
    //! ringkv's internal peer protocol: raft messages between members (not etcd's).
    tonic::include_proto!("ringkvpeerpb");
}
