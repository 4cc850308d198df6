//! MVCC: to be written.
