//! The quota check before a write is proposed (etcd's `quotaKVServer`): a put or txn whose
//! cost does not fit under `--quota-backend-bytes` is refused with `NoSpace` and raises the
//! NOSPACE alarm for this member, as does a write the applier answered `NoSpace`.

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

/// Proposes NOSPACE for this member unless it is raised already. Best effort, as in etcd: the
/// write is refused whether or not the alarm gets through.
pub async fn raise_nospace(ctx: &Context) {
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
