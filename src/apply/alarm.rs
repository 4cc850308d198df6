//! etcd's alarms (NOSPACE, CORRUPT): the replicated set of raised alarms, applied from
//! `Alarm` entries and kept in MVCC's aux table (`alarms`) in the same commit as the entry, so
//! they survive restarts and replay. Encoding of the aux value: `(member id u64 BE, alarm type
//! i32 BE)` per alarm, sorted by type then member (the order `alarm list` prints).

use std::collections::BTreeSet;

use ringkv_proto::etcdserverpb::{AlarmMember, AlarmType};

/// The aux-table name of the alarm set.
pub const AUX_ALARMS: &[u8] = b"alarms";
const ENTRY_BYTES: usize = 12;

/// Raised alarms, ordered by (type, member).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmSet {
    raised: BTreeSet<(i32, u64)>,
}

impl AlarmSet {
    /// Decodes the aux value; `None` for a malformed one.
    pub fn decode(bytes: &[u8]) -> Option<AlarmSet> {
        if bytes.len() % ENTRY_BYTES != 0 {
            return None;
        }
        let raised = bytes
            .chunks_exact(ENTRY_BYTES)
            .map(|e| {
                let member = u64::from_be_bytes(e[..8].try_into().expect("8 bytes"));
                let alarm = i32::from_be_bytes(e[8..].try_into().expect("4 bytes"));
                (alarm, member)
            })
            .collect();
        Some(AlarmSet { raised })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.raised.len() * ENTRY_BYTES);
        for (alarm, member) in &self.raised {
            out.extend_from_slice(&member.to_be_bytes());
            out.extend_from_slice(&alarm.to_be_bytes());
        }
        out
    }

    /// Raises `alarm` for `member`; returns whether it was new.
    pub fn activate(&mut self, member: u64, alarm: i32) -> bool {
        self.raised.insert((alarm, member))
    }

    /// Clears it; returns whether it was raised.
    pub fn deactivate(&mut self, member: u64, alarm: i32) -> bool {
        self.raised.remove(&(alarm, member))
    }

    /// The alarms of type `alarm`, or all of them for `NONE` (etcd's `alarmStore.Get`).
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.raised
            .iter()
            .filter(|(a, _)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
            .collect()
    }

    pub fn has(&self, alarm: AlarmType) -> bool {
        self.raised.iter().any(|(a, _)| *a == alarm as i32)
    }

    pub fn is_empty(&self) -> bool {
        self.raised.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_filters() {
        let mut set = AlarmSet::default();
        assert!(set.activate(7, AlarmType::Nospace as i32));
        assert!(!set.activate(7, AlarmType::Nospace as i32));
        assert!(set.activate(3, AlarmType::Corrupt as i32));
        let back = AlarmSet::decode(&set.encode()).unwrap();
        assert_eq!(back, set);
        assert_eq!(set.get(AlarmType::None as i32).len(), 2);
        assert_eq!(set.get(AlarmType::Corrupt as i32)[0].member_id, 3);
        assert!(set.has(AlarmType::Nospace));
        assert!(set.deactivate(7, AlarmType::Nospace as i32));
        assert!(!set.has(AlarmType::Nospace));
        assert_eq!(AlarmSet::decode(&[1, 2, 3]), None);
    }
}
