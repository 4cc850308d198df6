//! ringkv: an etcd-v3-compatible key-value server. Layers, lowest first: `wal` and `page_store`
//! (disk), `mvcc` (etcd's revisioned key space on the page store), `lease` (leases and their
//! keys, in the same store), `apply` (etcd's requests
//! executed on MVCC: the state machine), `api` (the gRPC services), `server` (wiring). A lower
//! layer never imports an upper one; `metrics` (process-wide instruments) and `affinity`
//! (thread pinning) import none and are used by all.

pub mod affinity;
pub mod api;
pub mod apply;
pub mod auth;
pub mod compactor;
pub mod config;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod page_store;
pub mod peer;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod wal;
pub mod watch;
