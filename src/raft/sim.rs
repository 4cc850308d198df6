//! Deterministic simulation of the raft loop: several members in one thread, on raft-rs's
//! `RawNode` configured exactly as `node.rs` configures it (`raft_config` from our
//! [`RaftConfig`]), with our [`LogStore`] as its storage and our WAL on a [`SimDisk`], driven by a
//! virtual clock and a simulated network, all from one seed. Tests call [`run`]
//! (tests/raft_sim.rs); nothing in the server uses this module.
//!
//! # What is real and what is simulated
//!
//! Real: raft-rs, `RaftConfig::small` (pre-vote, check-quorum, ticks per election), `LogStore`
//! (`from_recovered` on every restart), the WAL writer and its recovery, the entry encoding, the
//! request ids in entry context (`node::request_id` / `parse_request_id`), and the order in which
//! a `Ready` is handled, which mirrors `node.rs` step by step: send `messages`; persist hard state
//! and entries in WAL submissions and await durability; apply `committed_entries`; send
//! `persisted_messages`; `advance_append`, then the `LightReady`'s commit index, messages and
//! committed entries; `advance_apply`. A proposal is acknowledged to its client only when its
//! entry applies on the member it was proposed to, as `node.rs` answers its waiters.
//!
//! Simulated, all drawn from one seeded PRNG:
//! - **Clock**: virtual milliseconds. Each member ticks every `RaftConfig::heartbeat`, with its
//!   own phase and a skew of up to 1 ms per incarnation. raft-rs draws its randomized election
//!   timeout from `thread_rng`, which no seed controls; the simulation overrides it, from the
//!   member's own seeded stream, every time raft-rs resets the election timer (whenever
//!   `election_elapsed` is 0 after a call), so a seed replays exactly. A member may also pause
//!   (a long GC, SIGSTOP) for up to 300 ms: it neither ticks nor reads messages, which wait for
//!   it, and it wakes up believing whatever it believed (a stale leader).
//! - **Network**: every message gets a random delay (so messages reorder), may be dropped or
//!   duplicated, and is lost on a cut link. Partitions change at random: heal, isolate one member
//!   (both ways), cut random one-way links, or split the members in two groups. A message sent on
//!   a cut link is reported unreachable to its sender, as a failed send is in `node.rs`.
//!   Forwarded proposals (`MsgPropose`) are never duplicated: raft has no deduplication, so a
//!   duplicated one is appended twice, and the peer transport (one HTTP/2 stream per peer) never
//!   duplicates.
//! - **Disk**: each member's WAL is on its own `SimDisk`. A crash is either a power loss between
//!   two steps (`SimDisk::crash`) or one armed at a random upcoming disk operation
//!   (`SimDisk::crash_at_op`), which tears or loses a batch being written; the member dies when
//!   its disk does. It restarts later from what survived.
//! - **Clients**: proposals of unique data to random members, rejected as `node.rs` rejects them
//!   (no leader known, or raft drops the proposal); linearizable reads on random members through
//!   raft's ReadIndex, issued and answered as `node.rs` does (a leader once it has committed in
//!   its term, a follower with a known leader; answered once the read index is applied).
//!
//! The state machine is a list of applied entries that, like the MVCC store, is made durable
//! lazily: a crash takes it back to its last checkpoint. A restarted member passes over committed
//! entries at or below the state machine's applied index, as `node.rs` does (the simulation checks
//! they are the entries it applied), and re-applies those above.
//!
//! # Checks
//!
//! During the run: (1) no two members ever commit different entries (index, term, data) at the
//! same index, across all incarnations (checked at every commit); (3) no member's state machine
//! applies the same proposal twice (at every apply); (4) at most one leader per term (after every
//! call into raft that can elect). Restarts must recover every entry the member's state machine
//! had applied. At the end, the drain heals the network, restarts and resumes every member and
//! runs (bounded) until all members have committed and applied the same last index in the
//! leader's term; then (2) every acknowledged proposal is applied on every member, and all state
//! machines hold identical entries. And (5): every linearizable read, when answered, sees every
//! proposal acknowledged before it was issued. A failure is a [`SimFailure`] with the seed, a replay command
//! and the last events; a panic in raft-rs, the `LogStore` or the WAL is one too.
//!
//! # Fault switches
//!
//! [`Fault`] makes the loop deliberately wrong (acknowledge at append; a disk that lies about
//! fdatasync; votes and append responses sent before they are durable; reads served without a
//! read index), so tests can show the checks catch real bugs.
//!
//! # Not simulated
//!
//! Log compaction and raft snapshots (the log is never compacted here, so `Storage::snapshot` is
//! never asked for), membership changes, read retries and batching, request timeouts, and the
//! request queue and its back-pressure.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType};
use raft::{RawNode, Ready, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::node::{parse_request_id, raft_config, request_id};
use super::storage::{encode_entry, LogStore};
use super::{Committed, RaftConfig};
use crate::wal::sim::SimDisk;
use crate::wal::{Record, Wal};

/// A deliberate bug in the simulated loop, to prove the checks catch it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// A leader acknowledges a proposal as soon as it appends it to its own log, before it is
    /// committed (breaks check 2 when that leader loses its log tail).
    AckOnAppend,
    /// The first member's disk acknowledges fdatasync without making anything durable: at a
    /// crash it loses its whole log and state machine, after it has acknowledged appends and
    /// votes (breaks check 1 or 2 once a quorum without the lost entries elects a leader).
    LyingDisk,
    /// Every member sends `persisted_messages` (votes, append responses) before its hard state
    /// and entries are durable: a crash in between breaks the promises they made.
    EarlyPersistedMessages,
    /// Linearizable reads are served from the member's applied state at once, without a read
    /// index: a follower or a deposed leader answers stale data (breaks check 5).
    ReadWithoutIndex,
}

/// One simulation run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub fault: Fault,
    /// Virtual milliseconds of faults and proposals before the drain.
    pub chaos_ms: u64,
    /// The drain fails if the members have not converged after this many virtual milliseconds.
    pub drain_ms_max: u64,
}

impl SimOptions {
    /// The CI profile: 10 s of chaos (1000 ticks of `RaftConfig::small`), 20 s of drain at most.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            fault: Fault::None,
            chaos_ms: 10_000,
            drain_ms_max: 20_000,
        }
    }
}

/// What a run exercised (tests assert coverage over many seeds), and a hash of its history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    pub members: usize,
    pub proposals: u64,
    pub rejected: u64,
    pub acked: u64,
    /// Crashes by power loss between steps.
    pub crashes: u64,
    /// Crashes at an armed disk operation (may tear a batch being written).
    pub crashes_at_disk_op: u64,
    /// Terms in which a leader was seen.
    pub leader_terms: u64,
    pub messages: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub partitions: u64,
    /// Members stopped for a while (not crashed), their messages waiting.
    pub pauses: u64,
    /// Applied entries a crash took back from a state machine (re-applied from the log).
    pub rolled_back: u64,
    /// Restarts whose WAL recovery zeroed a torn batch.
    pub repaired_tails: u64,
    /// Acknowledged proposals that a follower forwarded to the leader.
    pub acked_via_follower: u64,
    /// Linearizable reads answered (check 5 held for each).
    pub reads: u64,
    /// Last index every member applied at the end.
    pub last_index: u64,
    pub drain_ms: u64,
    /// Hash of every apply and acknowledgement in order: equal for equal seeds.
    pub history_hash: u64,
}

/// A failed check (or a member that could not recover), with what is needed to replay it.
#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub at_ms: u64,
    pub what: String,
    /// The most recent crashes, restarts, partitions and leaders, oldest first.
    pub events: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "raft simulation seed {} failed at {} ms: {}",
            self.seed, self.at_ms, self.what
        )?;
        writeln!(
            f,
            "replay: RINGKV_SIM_SEED={} cargo test --release --test raft_sim",
            self.seed
        )?;
        writeln!(f, "last events:")?;
        for e in &self.events {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Runs one simulation. Must be awaited on a glommio executor (the WAL writer runs there); the
/// executor should run nothing else, or the run is not deterministic.
pub async fn run(opts: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(opts);
    // An assertion in raft-rs, the LogStore or the WAL is a failure of this seed like any
    // check, reported with the seed and the events that led to it.
    let result = AssertUnwindSafe(sim.run_all())
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(format!("panicked: {message}"))
        });
    sim.shutdown().await;
    match result {
        Ok(()) => Ok(sim.report),
        Err(what) => Err(SimFailure {
            seed: opts.seed,
            at_ms: sim.now_ms,
            what,
            events: sim.events.into_iter().collect(),
        }),
    }
}

/// A violated check, or a member that cannot go on.
type Check<T = ()> = Result<T, String>;

const CLUSTER_ID: u64 = 0x5157_0000_0000_0001;
/// Members' raft ids are 1..=n.
const EVENTS_KEPT: usize = 64;
/// Readies handled per member per step at most (a `Ready` chain always ends; this bounds it).
const READIES_PER_STEP_MAX: usize = 64;
/// Proposal data: a unique id plus this much filler at most, so WAL segments fill and roll.
const FILLER_BYTES_MAX: usize = 200;
/// Chance of a linearizable read each millisecond.
const READ_P: f64 = 0.05;
/// Reads in flight per member at most (node.rs batches them; here each is its own).
const READS_IN_FLIGHT_MAX: usize = 64;

/// The state machine: every applied entry with data, in order. Like the MVCC store it makes
/// what it applied durable lazily (`StateMachine::durable_index`): a crash takes it back to its
/// last checkpoint, and the restarted member re-applies the rest from the log.
#[derive(Default)]
struct StateMachine {
    entries: Vec<Committed>,
    applied_data: HashSet<Vec<u8>>,
    /// `entries[..durable_len]` survive a crash.
    durable_len: usize,
}

/// Chance that an apply batch ends with a checkpoint of the state machine.
const CHECKPOINT_P: f64 = 0.3;

impl StateMachine {
    fn checkpoint(&mut self) {
        self.durable_len = self.entries.len();
    }

    /// Forgets what was applied after the last checkpoint; returns how many entries.
    fn roll_back(&mut self) -> u64 {
        let lost: Vec<Committed> = self.entries.drain(self.durable_len..).collect();
        for c in &lost {
            self.applied_data.remove(&c.data);
        }
        lost.len() as u64
    }

    fn applied_index(&self) -> u64 {
        self.entries.last().map_or(0, |c| c.index)
    }

    fn get(&self, index: u64) -> Option<&Committed> {
        self.entries
            .binary_search_by_key(&index, |c| c.index)
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// A running incarnation of a member (lost at a crash).
struct Running {
    raw: RawNode<LogStore>,
    wal: Wal,
    /// This incarnation's proposals, by sequence, waiting for their entry to apply: proposal ids,
    /// and whether this member was a follower when it was proposed.
    waiting: HashMap<u64, (u64, bool)>,
    next_seq: u64,
    /// Linearizable reads sent to raft, by context sequence: how many proposals had been
    /// acknowledged when each was issued.
    reads_in_flight: HashMap<u64, usize>,
    /// Reads whose index raft confirmed: (read index, acknowledged before issue).
    reads_confirmed: Vec<(u64, usize)>,
    /// `Checker::ack_log[..acks_applied]` is known to be applied here (this incarnation's
    /// state machine only grows).
    acks_applied: usize,
    /// Last index handed to the state machine or passed over.
    applied: u64,
    /// Applied before this incarnation started: passed over, never re-applied.
    skip_through: u64,
    next_tick_ms: u64,
    tick_ms: u64,
    /// Draws this member's election timeouts.
    rng: StdRng,
    election_ticks: (usize, usize),
}

struct Member {
    cfg: RaftConfig,
    disk: SimDisk,
    sm: StateMachine,
    node: Option<Running>,
    /// When a crashed member comes back.
    restart_at_ms: u64,
    incarnation: u64,
    /// A crash is armed at a future disk operation.
    armed: bool,
    /// The process is stopped (a long GC or SIGSTOP) until then: it neither ticks nor reads
    /// messages, which wait for it.
    paused_until_ms: u64,
}

struct Packet {
    from: u64,
    to: u64,
    msg: Message,
}

#[derive(Default)]
struct Net {
    /// In flight, by (delivery time, send order).
    queue: BTreeMap<(u64, u64), Packet>,
    sent: u64,
    /// Cut links: (from, to).
    cut: BTreeSet<(u64, u64)>,
    drop_p: f64,
    dup_p: f64,
    delay_ms_max: u64,
}

#[derive(Default)]
struct Checker {
    /// Every committed entry any member has seen: index -> (term, data).
    history: BTreeMap<u64, (u64, Vec<u8>)>,
    /// term -> the leader of that term.
    leaders: BTreeMap<u64, u64>,
    /// Acknowledged proposals: id -> data.
    acked: BTreeMap<u64, Vec<u8>>,
    /// The data of acknowledged proposals, in the order they were acknowledged.
    ack_log: Vec<Vec<u8>>,
    reads_served: u64,
    hash: u64,
}

impl Checker {
    fn fold(&mut self, bytes: &[u8]) {
        // FNV-1a: enough to tell two histories apart in a determinism test.
        for &b in bytes {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Check (1): one entry per index, whoever commits it.
    fn committed(&mut self, member: u64, e: &Entry) -> Check {
        self.fold(&member.to_le_bytes());
        self.fold(&e.index.to_le_bytes());
        match self.history.get(&e.index) {
            Some((term, data)) if *term != e.term || data[..] != e.data[..] => Err(format!(
                "check 1: member {member} committed index {} as (term {}, {:?}) but it was \
                 committed before as (term {term}, {:?})",
                e.index,
                e.term,
                String::from_utf8_lossy(&e.data),
                String::from_utf8_lossy(data)
            )),
            Some(_) => Ok(()),
            None => {
                self.history.insert(e.index, (e.term, e.data.to_vec()));
                Ok(())
            }
        }
    }
}

struct Sim {
    opts: SimOptions,
    rng: StdRng,
    now_ms: u64,
    members: Vec<Member>,
    net: Net,
    check: Checker,
    /// Proposals made so far (their ids are 0..next_proposal).
    next_proposal: u64,
    propose_p: f64,
    crash_p: f64,
    partition_p: f64,
    report: SimReport,
    events: VecDeque<String>,
}

/// What handling a member's `Ready`s came to.
enum Outcome {
    Done,
    /// The member's disk failed under it: the member is dead.
    DiskFailed,
}

impl Sim {
    fn new(opts: &SimOptions) -> Sim {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let n: u64 = if rng.gen_bool(0.25) { 5 } else { 3 };
        let voters: Vec<u64> = (1..=n).collect();
        let members = voters
            .iter()
            .map(|&id| {
                let mut cfg = RaftConfig::small(format!("/sim/member-{id}/wal"), id, CLUSTER_ID);
                cfg.voters.clone_from(&voters);
                Member {
                    cfg,
                    disk: SimDisk::new(),
                    sm: StateMachine::default(),
                    node: None,
                    restart_at_ms: 0,
                    incarnation: 0,
                    armed: false,
                    paused_until_ms: 0,
                }
            })
            .collect();
        let net = Net {
            drop_p: rng.gen_range(0.0..0.15),
            dup_p: rng.gen_range(0.0..0.1),
            delay_ms_max: rng.gen_range(2..=25),
            ..Net::default()
        };
        Sim {
            opts: opts.clone(),
            propose_p: rng.gen_range(0.02..0.3),
            crash_p: rng.gen_range(0.0005..0.003),
            partition_p: rng.gen_range(0.001..0.004),
            rng,
            now_ms: 0,
            members,
            net,
            check: Checker {
                hash: 0xcbf2_9ce4_8422_2325,
                ..Checker::default()
            },
            next_proposal: 0,
            report: SimReport {
                members: n as usize,
                ..SimReport::default()
            },
            events: VecDeque::new(),
        }
    }

    fn event(&mut self, what: impl std::fmt::Display) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events
            .push_back(format!("{:>6} ms  {what}", self.now_ms));
    }

    async fn run_all(&mut self) -> Check {
        for m in 0..self.members.len() {
            self.start(m).await?;
        }
        while self.now_ms < self.opts.chaos_ms {
            self.chaos_events().await?;
            self.step().await?;
        }
        self.drain().await?;
        self.final_checks()
    }

    /// One virtual millisecond: deliver due messages, tick due members, handle every `Ready`.
    async fn step(&mut self) -> Check {
        self.now_ms += 1;
        for m in 0..self.members.len() {
            let member = &mut self.members[m];
            if member.armed && member.disk.crashed_image().is_some() {
                self.crash(m, "power loss at an armed disk operation");
            }
        }
        self.deliver()?;
        for m in 0..self.members.len() {
            let now = self.now_ms;
            if self.members[m].paused_until_ms > now {
                continue;
            }
            if let Some(node) = self.members[m].node.as_mut() {
                if now >= node.next_tick_ms {
                    node.raw.tick();
                    node.fix_election_timeout();
                    node.next_tick_ms = now + node.tick_ms;
                    self.check_leader(m)?;
                }
            }
        }
        let mut order: Vec<usize> = (0..self.members.len()).collect();
        // A random order each step: who persists and sends first varies.
        for i in (1..order.len()).rev() {
            order.swap(i, self.rng.gen_range(0..=i));
        }
        for m in order {
            if self.members[m].paused_until_ms <= self.now_ms {
                self.handle_readies(m).await?;
            }
        }
        Ok(())
    }

    fn deliver(&mut self) -> Check {
        while let Some(entry) = self.net.queue.first_entry() {
            if entry.key().0 > self.now_ms {
                break;
            }
            let p = entry.remove();
            if self.net.cut.contains(&(p.from, p.to)) {
                self.report.dropped += 1;
                continue;
            }
            let m = (p.to - 1) as usize;
            let paused_until_ms = self.members[m].paused_until_ms;
            if paused_until_ms > self.now_ms {
                // A paused process reads its socket when it resumes.
                self.net.sent += 1;
                self.net.queue.insert((paused_until_ms, self.net.sent), p);
                continue;
            }
            let Some(node) = self.members[m].node.as_mut() else {
                continue;
            };
            // raft judges stale or unknown messages; an error is not the loop's failure (as in
            // node.rs).
            let _ = node.raw.step(p.msg);
            node.fix_election_timeout();
            self.check_leader(m)?;
        }
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            assert_ne!(
                msg.get_msg_type(),
                MessageType::MsgSnapshot,
                "the log is never compacted in the simulation, so no snapshot is ever sent"
            );
            let (from, to) = (msg.from, msg.to);
            self.report.messages += 1;
            if self.net.cut.contains(&(from, to)) {
                self.report.dropped += 1;
                if let Some(node) = self.members[(from - 1) as usize].node.as_mut() {
                    node.raw.report_unreachable(to);
                }
                continue;
            }
            if self.rng.gen_bool(self.net.drop_p) {
                self.report.dropped += 1;
                continue;
            }
            let copies = if msg.get_msg_type() != MessageType::MsgPropose
                && self.rng.gen_bool(self.net.dup_p)
            {
                self.report.duplicated += 1;
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = self.now_ms + self.rng.gen_range(1..=self.net.delay_ms_max);
                self.net.sent += 1;
                let packet = Packet {
                    from,
                    to,
                    msg: msg.clone(),
                };
                self.net.queue.insert((at, self.net.sent), packet);
            }
        }
    }

    /// Random crashes, restarts, partitions and proposals for this millisecond.
    async fn chaos_events(&mut self) -> Check {
        let now = self.now_ms;
        for m in 0..self.members.len() {
            if self.members[m].node.is_none() && now >= self.members[m].restart_at_ms {
                self.start(m).await?;
            }
        }
        if self.rng.gen_bool(self.crash_p) {
            let m = self.rng.gen_range(0..self.members.len());
            if self.members[m].node.is_some() && !self.members[m].armed {
                if self.rng.gen_bool(0.5) {
                    self.crash(m, "power loss");
                } else {
                    let ops = self.rng.gen_range(1..=8);
                    let seed = self.rng.gen();
                    self.members[m].disk.crash_at_op(ops, seed);
                    self.members[m].armed = true;
                    self.event(format!(
                        "member {} will lose power at its {ops}th disk operation from now",
                        m + 1
                    ));
                }
            }
        }
        if self.rng.gen_bool(self.partition_p) {
            self.partition();
        }
        if self.rng.gen_bool(self.crash_p) {
            let m = self.rng.gen_range(0..self.members.len());
            let pause_ms = self.rng.gen_range(10..=300);
            if self.members[m].node.is_some() && self.members[m].paused_until_ms <= now {
                self.members[m].paused_until_ms = now + pause_ms;
                self.report.pauses += 1;
                self.event(format!("member {} paused for {pause_ms} ms", m + 1));
            }
        }
        if self.rng.gen_bool(READ_P) {
            let m = self.rng.gen_range(0..self.members.len());
            self.read(m)?;
        }
        if self.rng.gen_bool(self.propose_p) {
            let m = self.rng.gen_range(0..self.members.len());
            self.propose(m);
        }
        Ok(())
    }

    fn partition(&mut self) {
        self.report.partitions += 1;
        let n = self.members.len() as u64;
        self.net.cut.clear();
        let what = match self.rng.gen_range(0..4) {
            0 => "healed".to_string(),
            1 => {
                let x = self.rng.gen_range(1..=n);
                for y in (1..=n).filter(|&y| y != x) {
                    self.net.cut.insert((x, y));
                    self.net.cut.insert((y, x));
                }
                format!("member {x} isolated")
            }
            2 => {
                for _ in 0..self.rng.gen_range(1..=n) {
                    let (a, b) = (self.rng.gen_range(1..=n), self.rng.gen_range(1..=n));
                    if a != b {
                        self.net.cut.insert((a, b));
                    }
                }
                format!("one-way cuts {:?}", self.net.cut)
            }
            _ => {
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                for a in 1..=n {
                    for b in 1..=n {
                        if side[(a - 1) as usize] != side[(b - 1) as usize] {
                            self.net.cut.insert((a, b));
                        }
                    }
                }
                let group: Vec<u64> = (1..=n).filter(|&a| side[(a - 1) as usize]).collect();
                format!("split {group:?} from the rest")
            }
        };
        self.event(format!("network {what}"));
    }

    /// A client proposes unique data to member `m`, rejected as `node.rs` rejects it.
    fn propose(&mut self, m: usize) {
        let id = self.next_proposal;
        self.next_proposal += 1;
        self.report.proposals += 1;
        let filler = self.rng.gen_range(0..=FILLER_BYTES_MAX);
        let mut data = format!("proposal-{id}-").into_bytes();
        data.resize(data.len() + filler, b'.');
        let member_id = self.members[m].cfg.member_id;
        let fault = self.opts.fault;
        if self.members[m].paused_until_ms > self.now_ms {
            self.report.rejected += 1;
            return;
        }
        let Some(node) = self.members[m].node.as_mut() else {
            self.report.rejected += 1;
            return;
        };
        if node.raw.raft.leader_id == raft::INVALID_ID {
            self.report.rejected += 1;
            return;
        }
        let leading = node.raw.raft.state == StateRole::Leader;
        let seq = node.next_seq;
        node.next_seq += 1;
        if node
            .raw
            .propose(request_id(member_id, seq), data.clone())
            .is_err()
        {
            self.report.rejected += 1;
            return;
        }
        node.fix_election_timeout();
        node.waiting.insert(seq, (id, !leading));
        if fault == Fault::AckOnAppend && leading {
            self.ack(id, data);
        }
    }

    /// A client's linearizable read on member `m`, issued as `node.rs`'s `issue_reads` does:
    /// a leader only once it has committed in its term, a follower only with a known leader.
    fn read(&mut self, m: usize) -> Check {
        if self.members[m].paused_until_ms > self.now_ms {
            return Ok(());
        }
        let member_id = self.members[m].cfg.member_id;
        let acked_before = self.check.ack_log.len();
        let fault = self.opts.fault;
        let member = &mut self.members[m];
        let Some(node) = member.node.as_mut() else {
            return Ok(());
        };
        if fault == Fault::ReadWithoutIndex {
            node.reads_confirmed.push((0, acked_before));
            return serve_reads(node, &member.sm, member_id, &mut self.check);
        }
        let raft = &node.raw.raft;
        let ready = match raft.state {
            StateRole::Leader => raft.commit_to_current_term(),
            _ => raft.leader_id != raft::INVALID_ID,
        };
        if !ready || node.reads_in_flight.len() >= READS_IN_FLIGHT_MAX {
            return Ok(());
        }
        let ctx = node.next_seq;
        node.next_seq += 1;
        node.reads_in_flight.insert(ctx, acked_before);
        node.raw.read_index(request_id(member_id, ctx));
        node.fix_election_timeout();
        Ok(())
    }

    fn ack(&mut self, id: u64, data: Vec<u8>) {
        if self.check.acked.insert(id, data.clone()).is_none() {
            self.check.ack_log.push(data);
            self.report.acked += 1;
            self.check.fold(b"ack");
            self.check.fold(&id.to_le_bytes());
        }
    }

    fn crash(&mut self, m: usize, why: &str) {
        let seed = self.rng.gen();
        let member = &mut self.members[m];
        let Some(node) = member.node.take() else {
            return;
        };
        // The writer task sees its handles gone and ends; the dead disk fails whatever it tries.
        drop(node);
        if member.armed {
            if let Some(image) = member.disk.crashed_image() {
                member.disk = image;
                self.report.crashes_at_disk_op += 1;
            } else {
                member.disk = member.disk.crash(seed);
                self.report.crashes += 1;
            }
        } else {
            member.disk = member.disk.crash(seed);
            self.report.crashes += 1;
        }
        member.armed = false;
        member.paused_until_ms = 0;
        self.report.rolled_back += member.sm.roll_back();
        if self.opts.fault == Fault::LyingDisk && m == 0 {
            member.disk = SimDisk::new();
            member.sm = StateMachine::default();
        }
        let down_ms = self.rng.gen_range(10..=400);
        member.restart_at_ms = self.now_ms + down_ms;
        self.event(format!("member {} crashed ({why})", m + 1));
    }

    /// Starts (or restarts) member `m` from its disk, as `node.rs` does: recover the WAL, write
    /// the metadata of a new one, rebuild the log, start raft from the state machine's index.
    async fn start(&mut self, m: usize) -> Check {
        let member = &mut self.members[m];
        assert!(member.node.is_none());
        let cfg = member.cfg.clone();
        let id = cfg.member_id;
        let (wal, recovered, writer) =
            Wal::recover(member.disk.clone(), &cfg.wal_dir, cfg.wal.clone())
                .await
                .map_err(|e| format!("member {id}: WAL recovery failed: {e}"))?;
        glommio::spawn_local(writer.run()).detach();
        let repaired_tail = recovered.repaired_tail.is_some();
        match recovered.metadata {
            Some(meta) if meta.member_id != id || meta.cluster_id != CLUSTER_ID => {
                return Err(format!(
                    "member {id}: recovered another member's WAL: {meta:?}"
                ));
            }
            Some(_) => {}
            None => wal
                .append(vec![Record::Metadata {
                    member_id: id,
                    cluster_id: CLUSTER_ID,
                }])
                .await
                .map_err(|e| format!("member {id}: writing WAL metadata failed: {e}"))?,
        }
        let conf_state = ConfState::from((cfg.voters.clone(), Vec::<u64>::new()));
        let store = LogStore::from_recovered(&recovered, conf_state)
            .map_err(|e| format!("member {id}: rebuilding the log failed: {e}"))?;
        let sm_applied = member.sm.applied_index();
        let last_index = raft::Storage::last_index(&store).expect("in memory");
        if sm_applied > last_index {
            return Err(format!(
                "member {id}: the log recovered up to index {last_index}, but the state machine \
                 applied up to {sm_applied}: a durable entry was lost"
            ));
        }
        let applied = sm_applied.min(store.hard_state().commit);
        let raft_cfg = raft_config(&cfg, applied);
        let election_ticks = (raft_cfg.min_election_tick(), raft_cfg.max_election_tick());
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_cfg, store, &logger)
            .map_err(|e| format!("member {id}: raft refused the recovered state: {e}"))?;
        member.incarnation += 1;
        let heartbeat_ms = cfg.heartbeat.as_millis() as u64;
        let tick_ms = heartbeat_ms + self.rng.gen_range(0..=1);
        let mut node = Running {
            raw,
            wal,
            waiting: HashMap::new(),
            // As node.rs's wall-clock first sequence: never reuse one an older entry carries.
            next_seq: member.incarnation << 40,
            reads_in_flight: HashMap::new(),
            reads_confirmed: Vec::new(),
            acks_applied: 0,
            applied,
            skip_through: sm_applied,
            next_tick_ms: self.now_ms + self.rng.gen_range(1..=tick_ms),
            tick_ms,
            rng: StdRng::seed_from_u64(self.rng.gen()),
            election_ticks,
        };
        node.fix_election_timeout();
        member.node = Some(node);
        let incarnation = member.incarnation;
        self.report.repaired_tails += u64::from(repaired_tail);
        self.event(format!(
            "member {id} started (incarnation {incarnation}, log to {last_index}, applied \
             {sm_applied})"
        ));
        Ok(())
    }

    /// Handles member `m`'s `Ready`s until it has none (bounded).
    async fn handle_readies(&mut self, m: usize) -> Check {
        for _ in 0..READIES_PER_STEP_MAX {
            let has_ready = self.members[m]
                .node
                .as_ref()
                .is_some_and(|n| n.raw.has_ready());
            if !has_ready {
                return Ok(());
            }
            let mut out = Vec::new();
            let mut acks = Vec::new();
            let outcome = handle_ready(
                &mut self.members[m],
                &mut self.check,
                self.opts.fault,
                &mut out,
                &mut acks,
            )
            .await?;
            self.send(out);
            for (id, data, via_follower) in acks {
                self.report.acked_via_follower += u64::from(via_follower);
                self.ack(id, data);
            }
            self.check_leader(m)?;
            if let Outcome::DiskFailed = outcome {
                self.crash(m, "its disk failed during a WAL write");
                return Ok(());
            }
        }
        Err(format!(
            "member {} still has a Ready after {READIES_PER_STEP_MAX} in one step",
            m + 1
        ))
    }

    /// Check (4): one leader per term. Called after every call into member `m`'s raft that
    /// can make it leader.
    fn check_leader(&mut self, m: usize) -> Check {
        let Some(node) = self.members[m].node.as_ref() else {
            return Ok(());
        };
        if node.raw.raft.state != StateRole::Leader {
            return Ok(());
        }
        let (term, id) = (node.raw.raft.term, node.raw.raft.id);
        match self.check.leaders.get(&term) {
            Some(&other) if other != id => Err(format!(
                "check 4: members {other} and {id} both led term {term}"
            )),
            Some(_) => Ok(()),
            None => {
                self.check.leaders.insert(term, id);
                self.report.leader_terms += 1;
                self.event(format!("member {id} leads term {term}"));
                Ok(())
            }
        }
    }

    /// Heals everything, restarts every member, and runs until all have applied the same last
    /// index in the current leader's term.
    async fn drain(&mut self) -> Check {
        self.event("drain: network healed, members restarted");
        self.net.cut.clear();
        self.net.drop_p = 0.0;
        self.net.dup_p = 0.0;
        self.net.delay_ms_max = self.net.delay_ms_max.min(5);
        for m in 0..self.members.len() {
            self.members[m].paused_until_ms = 0;
            if self.members[m].armed {
                // The armed crash would fire during the drain: take it now instead.
                self.crash(m, "armed crash taken before the drain");
            }
            if self.members[m].node.is_none() {
                self.start(m).await?;
            }
        }
        let start_ms = self.now_ms;
        while self.now_ms - start_ms < self.opts.drain_ms_max {
            self.step().await?;
            if let Some(last) = self.converged() {
                self.report.drain_ms = self.now_ms - start_ms;
                self.report.last_index = last;
                return Ok(());
            }
        }
        let states: Vec<String> = self
            .members
            .iter()
            .filter_map(|m| m.node.as_ref())
            .map(|n| {
                let r = &n.raw.raft;
                format!(
                    "member {}: {:?} term {} leader {} last {} committed {} applied {}",
                    r.id,
                    r.state,
                    r.term,
                    r.leader_id,
                    r.raft_log.last_index(),
                    r.raft_log.committed,
                    n.applied
                )
            })
            .collect();
        Err(format!(
            "the members did not converge within {} ms of healing: {states:?}",
            self.opts.drain_ms_max
        ))
    }

    /// The common last index, if every member has committed and applied the leader's whole log
    /// and the leader has committed an entry of its term.
    fn converged(&self) -> Option<u64> {
        let nodes: Vec<&Running> = self
            .members
            .iter()
            .filter_map(|m| m.node.as_ref())
            .collect();
        if nodes.len() != self.members.len() {
            return None;
        }
        let leader = nodes
            .iter()
            .find(|n| n.raw.raft.state == StateRole::Leader)?;
        let log = &leader.raw.raft.raft_log;
        let last = log.last_index();
        if log.last_term() != leader.raw.raft.term {
            return None;
        }
        nodes
            .iter()
            .all(|n| {
                n.raw.raft.raft_log.committed == last
                    && n.applied == last
                    && n.raw.raft.raft_log.last_index() == last
            })
            .then_some(last)
    }

    /// Checks (2) and (3) over the converged members, and identical state machines.
    fn final_checks(&mut self) -> Check {
        for member in &self.members {
            for (id, data) in &self.check.acked {
                if !member.sm.applied_data.contains(data) {
                    return Err(format!(
                        "check 2: acknowledged proposal {id} is not applied on member {}",
                        member.cfg.member_id
                    ));
                }
            }
            let first = &self.members[0];
            if member.sm.entries != first.sm.entries {
                let at = member
                    .sm
                    .entries
                    .iter()
                    .zip(&first.sm.entries)
                    .position(|(a, b)| a != b);
                return Err(format!(
                    "check 1: the state machines of members 1 and {} differ (lengths {} and {}, \
                     first difference at position {at:?})",
                    member.cfg.member_id,
                    first.sm.entries.len(),
                    member.sm.entries.len()
                ));
            }
        }
        for c in &self.members[0].sm.entries {
            self.check.fold(&c.term.to_le_bytes());
            self.check.fold(&c.data);
        }
        self.report.history_hash = self.check.hash;
        self.report.reads = self.check.reads_served;
        Ok(())
    }

    /// Stops every member's WAL writer so no task outlives the run on the executor.
    async fn shutdown(&mut self) {
        for member in &mut self.members {
            if let Some(node) = member.node.take() {
                let _ = node.wal.shutdown().await;
            }
        }
    }
}

impl Running {
    /// Replaces raft-rs's `thread_rng` election timeout with one from this member's seeded
    /// stream whenever the election timer was just reset (see the module doc).
    fn fix_election_timeout(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let (min, max) = self.election_ticks;
            let timeout = self.rng.gen_range(min..max);
            self.raw.raft.set_randomized_election_timeout(timeout);
        }
    }
}

/// One `Ready` of `member`, in `node.rs`'s order (module doc). Messages to send go to `out`
/// (those of step 1 even if the disk then fails), acknowledged proposal ids to `acks`.
async fn handle_ready(
    member: &mut Member,
    check: &mut Checker,
    fault: Fault,
    out: &mut Vec<Message>,
    acks: &mut Vec<(u64, Vec<u8>, bool)>,
) -> Check<Outcome> {
    let id = member.cfg.member_id;
    let node = member.node.as_mut().expect("a running member");
    let mut rd = node.raw.ready();
    out.extend(rd.take_messages());
    if fault == Fault::EarlyPersistedMessages {
        out.extend(rd.take_persisted_messages());
    }
    if !rd.snapshot().is_empty() {
        return Err(format!(
            "member {id} was sent a snapshot, but none is ever taken"
        ));
    }
    if !persist(node, &member.cfg, &mut rd).await {
        return Ok(Outcome::DiskFailed);
    }
    for rs in rd.take_read_states() {
        match parse_request_id(&rs.request_ctx) {
            Some((member, ctx)) if member == id => {
                if let Some(acked_before) = node.reads_in_flight.remove(&ctx) {
                    node.reads_confirmed.push((rs.index, acked_before));
                }
            }
            _ => {
                return Err(format!(
                    "member {id}: a read state with another member's context {:?}",
                    rs.request_ctx
                ))
            }
        }
    }
    apply(
        node,
        &mut member.sm,
        id,
        rd.take_committed_entries(),
        check,
        acks,
    )?;
    out.extend(rd.take_persisted_messages());
    let mut light = node.raw.advance_append(rd);
    if let Some(commit) = light.commit_index() {
        node.raw.mut_store().set_commit(commit);
    }
    out.extend(light.take_messages());
    apply(
        node,
        &mut member.sm,
        id,
        light.take_committed_entries(),
        check,
        acks,
    )?;
    node.raw.advance_apply();
    node.fix_election_timeout();
    serve_reads(node, &member.sm, id, check)?;
    Ok(Outcome::Done)
}

/// Check (5): answers confirmed reads whose index is applied, as `node.rs`'s `answer_reads`;
/// each must see every proposal acknowledged before it was issued.
fn serve_reads(node: &mut Running, sm: &StateMachine, id: u64, check: &mut Checker) -> Check {
    let applied = node.applied;
    let mut result = Ok(());
    let acks_applied = &mut node.acks_applied;
    node.reads_confirmed.retain(|&(index, acked_before)| {
        if index > applied {
            return true;
        }
        check.reads_served += 1;
        if result.is_ok() && acked_before > *acks_applied {
            let missed = check.ack_log[*acks_applied..acked_before]
                .iter()
                .find(|data| !sm.applied_data.contains(*data));
            if missed.is_none() {
                *acks_applied = acked_before;
            }
            if let Some(missed) = missed {
                result = Err(format!(
                    "check 5: a linearizable read on member {id} (read index {index}, applied \
                     {applied}) misses {:?}, acknowledged before the read was issued",
                    String::from_utf8_lossy(missed)
                ));
            }
        }
        false
    });
    result
}

/// Makes the `Ready`'s hard state and entries durable, as `node.rs`'s `persist`: entries into the
/// `LogStore`, then hard state first and entries in WAL submissions that each fit a segment,
/// awaited. `false` if the disk failed.
async fn persist(node: &mut Running, cfg: &RaftConfig, rd: &mut Ready) -> bool {
    let entries = rd.take_entries();
    if let Some(hs) = rd.hs() {
        node.raw.mut_store().set_hard_state(hs.clone());
    }
    if entries.is_empty() && rd.hs().is_none() {
        return true;
    }
    let last_before = node.raw.raft.raft_log.persisted;
    // Room for the hard state record in the first submission.
    let chunk_bytes_max = cfg.wal.submission_bytes_max() as usize - 64;
    let mut chunks: Vec<Vec<Record>> = vec![Vec::new()];
    let mut chunk_bytes = 0;
    for e in &entries {
        let record = encode_entry(e);
        let bytes = record.frame_bytes();
        if chunk_bytes + bytes > chunk_bytes_max && !chunks[chunks.len() - 1].is_empty() {
            chunks.push(Vec::new());
            chunk_bytes = 0;
        }
        chunk_bytes += bytes;
        chunks.last_mut().expect("one chunk").push(record);
    }
    let first_chunk_last = entries
        .iter()
        .take(chunks[0].len())
        .last()
        .map_or(last_before, |e| e.index);
    node.raw.mut_store().append(&entries);
    let hs = node.raw.store().hard_state();
    chunks[0].insert(
        0,
        Record::HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit.min(first_chunk_last),
        },
    );
    for chunk in chunks {
        if chunk.is_empty() {
            continue;
        }
        if node.wal.append(chunk).await.is_err() {
            return false;
        }
    }
    true
}

/// Applies committed entries in order, as `node.rs`'s `apply`: passes over raft's empty entries
/// and those applied before this incarnation (checking they are the same), applies the rest
/// once, and acknowledges this incarnation's own proposals.
fn apply(
    node: &mut Running,
    sm: &mut StateMachine,
    id: u64,
    entries: Vec<Entry>,
    check: &mut Checker,
    acks: &mut Vec<(u64, Vec<u8>, bool)>,
) -> Check {
    for e in entries {
        if e.index != node.applied + 1 {
            return Err(format!(
                "member {id}: committed entry {} arrived after {}: not contiguous",
                e.index, node.applied
            ));
        }
        node.applied = e.index;
        check.committed(id, &e)?;
        if e.get_entry_type() != EntryType::EntryNormal {
            return Err(format!("member {id}: conf change at {}", e.index));
        }
        let own_seq = parse_request_id(&e.context)
            .filter(|&(member, _)| member == id)
            .map(|(_, seq)| seq);
        let waiter = own_seq.and_then(|seq| node.waiting.remove(&seq));
        if e.data.is_empty() {
            continue;
        }
        if e.index <= node.skip_through {
            match sm.get(e.index) {
                Some(c) if c.term == e.term && c.data[..] == e.data[..] => {}
                Some(c) => {
                    return Err(format!(
                        "member {id}: index {} replayed as term {} but term {} was applied",
                        e.index, e.term, c.term
                    ));
                }
                // The state machine passed over no entry with data below its index.
                None => {
                    return Err(format!(
                        "member {id}: index {} replayed with data the state machine never \
                         applied",
                        e.index
                    ));
                }
            }
            continue;
        }
        if !sm.applied_data.insert(e.data.to_vec()) {
            return Err(format!(
                "check 3: member {id} applied {:?} twice (again at index {})",
                String::from_utf8_lossy(&e.data),
                e.index
            ));
        }
        sm.entries.push(Committed {
            index: e.index,
            term: e.term,
            data: e.data.to_vec(),
        });
        if let Some((proposal, via_follower)) = waiter {
            acks.push((proposal, e.data.to_vec(), via_follower));
        }
    }
    if node.rng.gen_bool(CHECKPOINT_P) {
        sm.checkpoint();
    }
    Ok(())
}
