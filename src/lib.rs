//! ringkv: an etcd-v3-compatible key-value server. Layers, lowest first: `wal` and `page_store`
//! (disk), `mvcc` (etcd's revisioned key space on the page store). A lower layer never imports an
//! upper one.

pub mod config;
pub mod mvcc;
pub mod page_store;
pub mod raft;
pub mod wal;
