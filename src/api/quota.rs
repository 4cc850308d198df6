//! The quota check before a write is proposed (etcd's `quotaKVServer`): a put or txn whose
//! cost does not fit under `--quota-backend-bytes` is refused with `NoSpace` and raises the
//! NOSPACE alarm for this member, as does a write the applier answered `NoSpace`.

use std::sync::atomic::{AtomicBool, Ordering};

use prost::Message;
use ringkv_proto::etcdserverpb::alarm_request::AlarmAction;
use ringkv_proto::etcdserverpb::{AlarmRequest, AlarmType};

use crate::apply::alarm::{self, AlarmSet, AUX_ALARMS};
use crate::apply::entry::{ApplyError, Proposal, ProposalRequest};

use super::{ApiError, Context};

/// Refuses a write of `cost` bytes that does not fit, raising NOSPACE first.
pub async fn check(ctx: &Context, cost: u64) -> Result<(), ApiError> {
    let size = ctx.mvcc.page_store().space().file_bytes;
    if alarm::available(size, cost, ctx.limits.quota_backend_bytes) {
        return Ok(());
    }
    raise_nospace(ctx).await;
    Err(ApiError::Apply(ApplyError::NoSpace))
}

/// The raised alarms as of the latest commit.
pub fn alarms(ctx: &Context) -> AlarmSet {
    match ctx.mvcc.aux(AUX_ALARMS) {
        Ok(Some(bytes)) => AlarmSet::decode(&bytes).unwrap_or_default(),
        _ => AlarmSet::default(),
    }
}

/// Set while this process has a NOSPACE proposal in flight. Until that proposal applies, the
/// stored alarm set does not show the alarm, so without this every write refused meanwhile
/// proposed it again (hundreds of "NOSPACE alarm raised" lines under a 500-client load). One
/// member per process, so one flag per process.
static NOSPACE_PROPOSING: AtomicBool = AtomicBool::new(false);

/// Clears `NOSPACE_PROPOSING` when the proposal ends, however it ends (even if the request
/// future is dropped part-way).
struct Proposing;

impl Drop for Proposing {
    fn drop(&mut self) {
        NOSPACE_PROPOSING.store(false, Ordering::Release);
    }
}

/// Proposes NOSPACE for this member unless it is raised already or being raised. Best effort,
/// as in etcd: the write is refused whether or not the alarm gets through.
pub async fn raise_nospace(ctx: &Context) {
    if alarms(ctx).has(AlarmType::Nospace) || NOSPACE_PROPOSING.swap(true, Ordering::AcqRel) {
        return;
    }
    let _proposing = Proposing;
    // Another request's proposal may have applied between the check and the swap.
    if alarms(ctx).has(AlarmType::Nospace) {
        return;
    }
    let request = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: ctx.member_id,
        alarm: AlarmType::Nospace as i32,
    };
    let data = Proposal::new(ProposalRequest::Alarm(request)).encode_to_vec();
    if let Err(error) = ctx.consensus.propose(data).await {
        eprintln!("ringkv: warning: cannot raise the NOSPACE alarm: {error}");
    } else {
        eprintln!("ringkv: warning: database space exceeded: NOSPACE alarm raised");
    }
}
