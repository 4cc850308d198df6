//! Acknowledged-write bookkeeping for the SIGKILL tests: writers that record every put the
//! server acknowledged, until the server dies or a bound is reached, and the check that each
//! one is readable afterwards at its revision with its value.

use ringkv_proto::etcdserverpb::kv_client::KvClient;
use ringkv_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::Channel;

/// One acknowledged put.
pub struct Ack {
    pub key: String,
    pub value: String,
    pub revision: i64,
}

pub async fn connect(endpoint: String) -> Option<KvClient<Channel>> {
    let channel = Channel::from_shared(endpoint).ok()?.connect().await.ok()?;
    Some(KvClient::new(channel))
}

/// Puts over `keys` keys of its own until the first error (the server died) or `puts_max`;
/// returns what was acknowledged.
pub async fn writer(
    endpoint: String,
    client: usize,
    cycle: usize,
    keys: u64,
    puts_max: u64,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    let Some(mut kv) = connect(endpoint).await else {
        return acks;
    };
    for seq in 0..puts_max {
        let key = format!("c{client}-k{}", seq % keys);
        let value = format!("cycle{cycle}-seq{seq}");
        let req = PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
            ..PutRequest::default()
        };
        match kv.put(req).await {
            Ok(resp) => acks.push(Ack {
                key,
                value,
                revision: resp.into_inner().header.unwrap().revision,
            }),
            Err(_) => break,
        }
    }
    acks
}

/// Every acknowledged put is readable at its revision, with its value and that mod_revision;
/// `context` (a seed, say) goes into the failure messages.
pub async fn assert_all_readable(endpoint: String, acks: &[Ack], context: &str) {
    let mut kv = connect(endpoint)
        .await
        .expect("connect after the last restart");
    for ack in acks {
        let req = RangeRequest {
            key: ack.key.clone().into_bytes(),
            revision: ack.revision,
            ..RangeRequest::default()
        };
        let resp = kv
            .range(req)
            .await
            .unwrap_or_else(|e| panic!("read {} at {}: {e} ({context})", ack.key, ack.revision))
            .into_inner();
        let kv = resp.kvs.first().unwrap_or_else(|| {
            panic!(
                "acknowledged {}={} at revision {} is lost ({context})",
                ack.key, ack.value, ack.revision
            )
        });
        assert_eq!(
            (String::from_utf8_lossy(&kv.value), kv.mod_revision),
            (ack.value.as_str().into(), ack.revision),
            "{} at revision {} ({context})",
            ack.key,
            ack.revision
        );
    }
}
