//! The lessor alone: expiry on a stepped clock, promotion and demotion, renewals, the expiry
//! order of listings, and rebuilding attachments from the store at open.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::page_store::{PageStore, PageStoreConfig, SimDisk};

fn lessor() -> (Arc<SimClock>, Lessor) {
    let clock = Arc::new(SimClock::default());
    let lessor = Lessor::new(clock.clone());
    (clock, lessor)
}

fn grant(id: i64, ttl_secs: i64) -> LeaseEffect {
    LeaseEffect::Grant { id, ttl_secs }
}

#[test]
fn min_ttl_is_etcds() {
    assert_eq!(LeaseConfig::default().ttl_min_secs, 2);
    let ms = Duration::from_millis;
    // 3/2 * 10 ticks of 300 ms = 4.5 s -> 5 s; ticks are whole (1100 / 100 = 11 -> 16 ticks).
    assert_eq!(LeaseConfig::for_raft(ms(300), ms(3000)).ttl_min_secs, 5);
    assert_eq!(LeaseConfig::for_raft(ms(100), ms(1100)).ttl_min_secs, 2);
    assert_eq!(LeaseConfig::for_raft(ms(10), ms(50)).ttl_min_secs, 1);
}

#[test]
fn leases_expire_only_while_primary() {
    let (clock, lessor) = lessor();
    lessor.apply(vec![grant(1, 5)]);
    clock.advance(Duration::from_secs(60));
    assert!(lessor.take_expired(10, Duration::from_secs(3)).is_empty());
    assert_eq!(
        lessor.renew(1).unwrap_err().to_string(),
        "not a primary lessor"
    );

    lessor.promote(1, Duration::from_secs(1));
    let ttl = lessor.time_to_live(1, false).unwrap();
    assert_eq!((ttl.granted_ttl_secs, ttl.remaining_secs), (5, 6));
    clock.advance(Duration::from_millis(5999));
    assert!(lessor.take_expired(10, Duration::from_secs(3)).is_empty());
    clock.advance(Duration::from_millis(1));
    assert_eq!(lessor.take_expired(10, Duration::from_secs(3)), [1]);
    // Reported once per retry interval, and renewing it is too late.
    assert!(lessor.take_expired(10, Duration::from_secs(3)).is_empty());
    assert!(matches!(lessor.renew(1), Err(LeaseError::NotFound)));
    clock.advance(Duration::from_secs(3));
    assert_eq!(lessor.take_expired(10, Duration::from_secs(3)), [1]);

    lessor.demote();
    clock.advance(Duration::from_secs(100));
    assert!(lessor.take_expired(10, Duration::from_secs(3)).is_empty());
}

#[test]
fn renew_and_grant_while_primary() {
    let (clock, lessor) = lessor();
    lessor.promote(1, Duration::ZERO);
    lessor.apply(vec![grant(7, 10), grant(8, 4)]);
    clock.advance(Duration::from_secs(3));
    assert_eq!(lessor.renew(7).unwrap(), 10);
    assert_eq!(lessor.time_to_live(7, false).unwrap().remaining_secs, 10);
    assert_eq!(lessor.time_to_live(8, false).unwrap().remaining_secs, 1);
    // Soonest expiry first.
    assert_eq!(lessor.leases(), [8, 7]);
    clock.advance(Duration::from_millis(1500));
    assert_eq!(lessor.time_to_live(8, false).unwrap().remaining_secs, 0);
    assert_eq!(lessor.take_expired(10, Duration::from_secs(3)), [8]);
    assert!(matches!(lessor.renew(9), Err(LeaseError::NotFound)));
}

#[test]
fn take_expired_is_bounded_and_ordered() {
    let (clock, lessor) = lessor();
    lessor.promote(1, Duration::ZERO);
    lessor.apply((1..=10).map(|id| grant(id, 12 - id)).collect());
    clock.advance(Duration::from_secs(100));
    assert_eq!(
        lessor.take_expired(4, Duration::from_secs(3)),
        [10, 9, 8, 7]
    );
    assert_eq!(lessor.take_expired(4, Duration::from_secs(3)), [6, 5, 4, 3]);
    assert_eq!(lessor.take_expired(4, Duration::from_secs(3)), [2, 1]);
}

#[test]
fn attachments_follow_effects() {
    let (_, lessor) = lessor();
    lessor.apply(vec![
        grant(1, 10),
        LeaseEffect::Attach {
            id: 1,
            key: b"b".to_vec(),
        },
        LeaseEffect::Attach {
            id: 1,
            key: b"a".to_vec(),
        },
    ]);
    assert_eq!(lessor.keys(1).unwrap(), [b"a".to_vec(), b"b".to_vec()]);
    let ttl = lessor.time_to_live(1, true).unwrap();
    assert_eq!(ttl.keys, [b"a".to_vec(), b"b".to_vec()]);
    lessor.apply(vec![
        LeaseEffect::Detach {
            id: 1,
            key: b"a".to_vec(),
        },
        LeaseEffect::Detach {
            id: 1,
            key: b"b".to_vec(),
        },
        LeaseEffect::Revoke { id: 1 },
    ]);
    assert!(!lessor.contains(1) && lessor.is_empty());
}

#[test]
#[should_panic(expected = "revoked with 1 keys still attached")]
fn revoking_a_lease_with_keys_is_a_bug() {
    let (_, lessor) = lessor();
    lessor.apply(vec![
        grant(1, 10),
        LeaseEffect::Attach {
            id: 1,
            key: b"a".to_vec(),
        },
        LeaseEffect::Revoke { id: 1 },
    ]);
}

#[test]
fn open_rebuilds_leases_and_attachments() {
    let store = PageStore::open_on(Arc::new(SimDisk::new()), PageStoreConfig::default()).unwrap();
    let mvcc = Mvcc::open(store).unwrap();
    let mut batch = mvcc.batch();
    persist(&[grant(5, 30), grant(-3, 60)], &mut batch).unwrap();
    let mut txn = batch.txn();
    txn.put(b"x", b"1", 5).unwrap();
    txn.put(b"y", b"2", 0).unwrap();
    txn.put(b"z", b"3", -3).unwrap();
    txn.end();
    let mut txn = batch.txn();
    txn.put(b"y", b"2", 5).unwrap();
    txn.delete_range(b"z", b"").unwrap();
    txn.end();
    batch.finish(1).unwrap();

    let lessor = Lessor::open(&mvcc, Arc::new(SimClock::default())).unwrap();
    assert_eq!(lessor.len(), 2);
    assert_eq!(lessor.keys(5).unwrap(), [b"x".to_vec(), b"y".to_vec()]);
    assert_eq!(lessor.keys(-3).unwrap(), Vec::<Vec<u8>>::new());
    assert!(!lessor.is_primary());
    assert_eq!(lessor.time_to_live(-3, false).unwrap().granted_ttl_secs, 60);
}

#[test]
fn a_new_term_refreshes_every_expiry() {
    let (clock, lessor) = lessor();
    lessor.promote(1, Duration::ZERO);
    lessor.apply(vec![grant(1, 10)]);
    clock.advance(Duration::from_secs(8));
    // The same term again changes nothing.
    lessor.promote(1, Duration::from_secs(1));
    assert_eq!(lessor.time_to_live(1, false).unwrap().remaining_secs, 2);
    // A new term (another leader renewed what this one never saw): TTL + extend from now.
    lessor.promote(2, Duration::from_secs(1));
    assert_eq!(lessor.time_to_live(1, false).unwrap().remaining_secs, 11);
    clock.advance(Duration::from_secs(10));
    assert!(lessor.take_expired(10, Duration::from_secs(3)).is_empty());
    clock.advance(Duration::from_secs(1));
    assert_eq!(lessor.take_expired(10, Duration::from_secs(3)), [1]);
}
