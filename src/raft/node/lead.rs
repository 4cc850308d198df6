//! Leadership on the raft loop: handing it to another voter (etcd's MoveLeader), and holding
//! proposals while raft cannot take them, so that an election or a leader transfer delays a
//! write instead of failing it.
//!
//! # Held proposals
//!
//! raft-rs drops a proposal (`ProposalDropped`) on a member that knows no leader (a follower
//! whose leader was lost, a (pre-)candidate) and on a leader that is transferring its
//! leadership. etcd's raft node never lets such a proposal reach raft: while it knows no leader
//! it stops reading its proposal channel, so `Propose` waits until a leader appears or the
//! request's deadline passes ("etcdserver: request timed out"). The loop does the same here:
//! such proposals wait in `Held`, in arrival order, and go to raft as soon as it accepts them.
//! A proposal that arrives while others are held queues behind them, so proposals from one
//! caller keep their order. Bounds: `proposal_queue_depth` proposals (more are refused with
//! `Overloaded`) and each request's deadline (`request_timeout` after the loop took it:
//! `NoLeaderTimeout`, which the API answers as etcd does: its `Propose` returns the context's
//! own error, "context deadline exceeded", code Unknown). A held proposal whose caller has gone
//! (its reply channel is closed: a client that gave up) is never proposed, as in etcd. Unlike etcd, a proposal made during a leader transfer waits for the new leader
//! rather than failing with "raft proposal dropped".

use std::collections::VecDeque;
use std::time::Instant;

use raft::StateRole;

use super::{Node, Payload};
use crate::raft::queue::{ProposeReply, TransferReply};
use crate::raft::RaftError;

/// A proposal waiting for raft to accept proposals.
struct HeldProposal {
    payload: Payload,
    reply: ProposeReply,
    deadline: Instant,
}

/// Proposals waiting for a leader, oldest first; and when the current leader was elected.
#[derive(Default)]
pub(super) struct Held {
    proposals: VecDeque<HeldProposal>,
    leader_id: u64,
    /// When this member first saw `leader_id` lead (etcd's `leadElectedTime`).
    leader_elected_at: Option<Instant>,
}

impl Held {
    pub(super) fn is_empty(&self) -> bool {
        self.proposals.is_empty()
    }
}

impl Node {
    /// Whether raft would take a proposal now rather than drop it: it knows a leader, and if
    /// that is this member, it is not transferring the leadership.
    pub(super) fn accepts_proposals(&self) -> bool {
        let raft = &self.raw.raft;
        raft.leader_id != raft::INVALID_ID
            && !(raft.state == StateRole::Leader && raft.lead_transferee.is_some())
    }

    /// Keeps a proposal until raft accepts proposals (module doc).
    pub(super) fn hold(&mut self, payload: Payload, reply: ProposeReply, deadline: Instant) {
        if self.held.proposals.len() >= self.cfg.proposal_queue_depth {
            let _ = reply.send(Err(RaftError::Overloaded {
                depth: self.cfg.proposal_queue_depth,
            }));
            return;
        }
        self.held.proposals.push_back(HeldProposal {
            payload,
            reply,
            deadline,
        });
    }

    /// Proposes the held proposals, oldest first, while raft accepts them.
    pub(super) fn release_held(&mut self) {
        let leader_id = self.raw.raft.leader_id;
        if leader_id != raft::INVALID_ID && leader_id != self.held.leader_id {
            self.held.leader_id = leader_id;
            self.held.leader_elected_at = Some(Instant::now());
        }
        while self.accepts_proposals() {
            let Some(p) = self.held.proposals.pop_front() else {
                return;
            };
            // Its caller has given up (a client's deadline): as in etcd, whose `Propose` gives
            // up with the caller's context, it is never proposed.
            if p.reply.is_canceled() {
                continue;
            }
            self.propose_now(p.payload, p.reply, p.deadline);
        }
    }

    /// What a proposal with this deadline that timed out waiting for its entry is told: etcd's
    /// rule (`parseProposeCtxErr`) blames a leader failure when the proposal was made in the
    /// two election timeouts before the current leader was elected: it most likely went to the
    /// failed leader and was lost with it.
    pub(super) fn timeout_error(&self, deadline: Instant) -> RaftError {
        let started = deadline.checked_sub(self.cfg.request_timeout);
        let window = 2 * self.cfg.election_timeout;
        match (started, self.held.leader_elected_at) {
            (Some(started), Some(elected))
                if started < elected && elected.saturating_duration_since(started) < window =>
            {
                RaftError::TimeoutLeaderFail
            }
            _ => RaftError::Timeout,
        }
    }

    /// Answers `NoLeaderTimeout` to held proposals whose deadline has passed.
    pub(super) fn expire_held(&mut self, now: Instant) {
        let (expired, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.held.proposals)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.held.proposals = kept;
        for p in expired {
            let _ = p.reply.send(Err(RaftError::NoLeaderTimeout));
        }
    }

    /// Answers every held proposal with `error()` (the loop is stopping).
    pub(super) fn fail_held(&mut self, error: impl Fn() -> RaftError) {
        for p in std::mem::take(&mut self.held.proposals) {
            let _ = p.reply.send(Err(error()));
        }
    }

    /// Starts handing the leadership to `target`; answers once raft has started (the caller
    /// watches the status for the outcome: raft-rs gives up after an election timeout if the
    /// target does not catch up and campaign). Only a leader can, only to a voter; to itself
    /// it is a no-op, as in etcd.
    pub(super) fn transfer_leader(&mut self, target: u64, reply: TransferReply) {
        let raft = &self.raw.raft;
        let result = if raft.state != StateRole::Leader {
            Err(RaftError::NotLeader {
                leader_id: raft.leader_id,
            })
        } else if !raft.prs().conf().voters().contains(target) {
            Err(RaftError::BadTransferee { target })
        } else {
            if target != self.cfg.member_id {
                self.raw.transfer_leader(target);
            }
            Ok(())
        };
        let _ = reply.send(result);
    }
}
