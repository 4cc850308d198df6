//! `RaftConfig`: every limit and knob of the raft engine in one place, with a production and a
//! test profile.

use std::path::PathBuf;
use std::time::Duration;

use super::RaftError;
use crate::wal::WalConfig;

/// Most voting members a cluster may have (etcd recommends at most 7).
pub const VOTERS_MAX: usize = 15;

/// Where the WAL writer task runs. Durability does not depend on it: the loop awaits every
/// batch's fdatasync either way; what changes is whether that hand-off crosses threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalExecutor {
    /// On the raft executor, spawned next to the loop. The loop waits for each batch before it
    /// applies, so the two rarely want the thread at once, and a batch costs no cross-thread
    /// wake-up.
    Raft,
    /// On a `wal-writer` executor thread of its own (`Wal::open`), pinned per
    /// `wal.writer_cpu`: WAL encoding and io_uring submission move off the raft core, at the
    /// price of a cross-thread wake-up per batch each way.
    Own,
}

/// Configuration of one raft member. [`RaftConfig::new`] is the production profile;
/// [`RaftConfig::small`] is the test profile.
///
/// With [`WalExecutor::Raft`] (the default) the WAL writer runs on the raft executor, so
/// `wal.writer_cpu` is ignored (`raft_cpu` places both); with [`WalExecutor::Own`] it runs on an
/// executor thread of its own pinned per `wal.writer_cpu`. Either way
/// `wal.writer_io_memory_bytes` sizes each executor's registered I/O memory.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// Directory of the WAL (`<data-dir>/member/wal`).
    pub wal_dir: PathBuf,
    /// This member's raft id. Non-zero.
    pub member_id: u64,
    /// Recorded in the WAL's metadata; a WAL of another cluster is refused.
    pub cluster_id: u64,
    /// Every voting member's id, this one included (the `ConfState` the log starts from).
    /// Fixed: membership changes are issue 5 phase 2.
    pub voters: Vec<u64>,
    /// Raft tick interval: one heartbeat per tick (etcd `--heartbeat-interval`, 100 ms).
    pub heartbeat: Duration,
    /// Election timeout, a multiple of `heartbeat` of at least 2 (etcd `--election-timeout`,
    /// 1000 ms).
    pub election_timeout: Duration,
    pub wal: WalConfig,
    /// CPU the raft executor (raft loop, state machine apply and, with [`WalExecutor::Raft`],
    /// the WAL writer) is pinned to; `None` = unpinned.
    pub raft_cpu: Option<usize>,
    /// Which executor runs the WAL writer.
    pub wal_executor: WalExecutor,
    /// Requests (proposals and read barriers) waiting for the raft loop. When full, `propose`
    /// and `read_index` wait for room (back-pressure); `try_propose` fails with `Overloaded`.
    pub proposal_queue_depth: usize,
    /// Requests the loop takes from the queue before each `Ready`: up to this many proposals
    /// share one raft `Ready`, one WAL batch and one fdatasync.
    pub max_batch_entries: usize,
    /// The loop also stops taking proposals for one `Ready` once their data reaches this many
    /// bytes (a larger `Ready` is written as several WAL submissions).
    pub max_batch_bytes: usize,
    /// Largest proposal accepted (etcd `--max-request-bytes` plus framing; 1.5 MiB + 64 KiB).
    pub proposal_bytes_max: usize,
    /// A proposal or read barrier not answered within this fails with `Timeout`.
    pub request_timeout: Duration,
    /// Log compaction: once the state machine's durable applied index is this many entries past
    /// the log's first index, the log is compacted (etcd `--snapshot-count`).
    pub snapshot_entries: u64,
    /// Entries kept below the applied index when compacting, for followers that lag (etcd's
    /// `SnapshotCatchUpEntries`).
    pub compact_keep_entries: u64,
    /// Raft pre-vote (a partitioned member does not disrupt the cluster when it rejoins).
    pub pre_vote: bool,
    /// Raft check-quorum (a leader that lost its quorum steps down).
    pub check_quorum: bool,
}

impl RaftConfig {
    /// Production profile.
    pub fn new(wal_dir: impl Into<PathBuf>, member_id: u64, cluster_id: u64) -> Self {
        RaftConfig {
            wal_dir: wal_dir.into(),
            member_id,
            cluster_id,
            voters: vec![member_id],
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_secs(1),
            wal: WalConfig::default(),
            raft_cpu: None,
            wal_executor: WalExecutor::Raft,
            proposal_queue_depth: 16 * 1024,
            max_batch_entries: 4096,
            max_batch_bytes: 8 << 20,
            proposal_bytes_max: (3 << 19) + (64 << 10),
            request_timeout: Duration::from_secs(7),
            snapshot_entries: 10_000,
            compact_keep_entries: 5_000,
            pre_vote: true,
            check_quorum: true,
        }
    }

    /// Test profile: short ticks, small WAL segments, small queue and proposals, frequent
    /// compaction.
    pub fn small(wal_dir: impl Into<PathBuf>, member_id: u64, cluster_id: u64) -> Self {
        RaftConfig {
            heartbeat: Duration::from_millis(10),
            election_timeout: Duration::from_millis(100),
            wal: WalConfig::small(),
            proposal_queue_depth: 256,
            max_batch_entries: 256,
            proposal_bytes_max: 16 << 10,
            request_timeout: Duration::from_secs(5),
            snapshot_entries: 1_000,
            compact_keep_entries: 100,
            ..RaftConfig::new(wal_dir, member_id, cluster_id)
        }
    }

    /// Election timeout in ticks.
    pub fn election_ticks(&self) -> usize {
        (self.election_timeout.as_nanos() / self.heartbeat.as_nanos().max(1)) as usize
    }

    pub fn validate(&self) -> Result<(), RaftError> {
        let fail = |s: String| Err(RaftError::InvalidConfig(s));
        if self.wal_dir.as_os_str().is_empty() {
            return fail("wal_dir is empty".into());
        }
        if self.member_id == 0 {
            return fail("member_id must be non-zero".into());
        }
        if !self.voters.contains(&self.member_id) {
            return fail(format!(
                "voters {:x?} do not include this member {:x}",
                self.voters, self.member_id
            ));
        }
        if self.voters.contains(&0) || self.voters.len() > VOTERS_MAX {
            return fail(format!(
                "voters must be non-zero ids, at most {VOTERS_MAX} of them"
            ));
        }
        if self.heartbeat.is_zero() {
            return fail("heartbeat must be positive".into());
        }
        if self.election_ticks() < 2 {
            return fail(format!(
                "election_timeout {:?} must be at least twice heartbeat {:?}",
                self.election_timeout, self.heartbeat
            ));
        }
        if self.proposal_queue_depth == 0
            || self.max_batch_entries == 0
            || self.max_batch_bytes == 0
        {
            return fail(
                "proposal_queue_depth, max_batch_entries and max_batch_bytes must be positive"
                    .into(),
            );
        }
        if self.proposal_bytes_max == 0 {
            return fail("proposal_bytes_max must be positive".into());
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout must be positive".into());
        }
        if self.snapshot_entries == 0 {
            return fail("snapshot_entries must be positive".into());
        }
        // One entry must fit in one WAL submission (entry frame: 16 + 16 bytes of header and
        // index/term, 1 byte of entry type, alignment).
        let entry_frame_bytes_max = self.proposal_bytes_max as u64 + 40;
        if entry_frame_bytes_max > self.wal.submission_bytes_max() {
            return fail(format!(
                "proposal_bytes_max {} does not fit in a WAL segment (limit {})",
                self.proposal_bytes_max,
                self.wal.submission_bytes_max() - 40
            ));
        }
        self.wal.validate()?;
        Ok(())
    }
}
