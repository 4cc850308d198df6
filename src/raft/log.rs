//! The slog logger handed to raft-rs: warnings and above to stderr, the rest dropped (raft-rs
//! logs every election and every ready at info/debug level).

use slog::{Drain, Level, Never, OwnedKVList, Record};

struct StderrDrain {
    member_id: u64,
}

impl Drain for StderrDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), Never> {
        if record.level().is_at_least(Level::Warning) {
            eprintln!(
                "raft[{:x}] {}: {}",
                self.member_id,
                record.level().as_short_str(),
                record.msg()
            );
        }
        Ok(())
    }
}

pub fn logger(member_id: u64) -> slog::Logger {
    slog::Logger::root(StderrDrain { member_id }, slog::o!())
}
