//! Tuning profiles: where each server component runs and how large its batches, caches and
//! queues are. Profiles are TOML (`tuning/*.toml`); the two built-in ones are embedded in the
//! binary, and `--tuning-profile` may instead name a file. Every limit is bounded and non-zero.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// Built-in profiles by name, embedded so an installed binary needs no data files.
const BUILT_IN: &[(&str, &str)] = &[
    ("small", include_str!("../../tuning/small.toml")),
    ("dedicated", include_str!("../../tuning/dedicated.toml")),
];

/// At or above this many cores the default profile is `dedicated`, below it `small`.
pub const DEDICATED_MIN_CORES: usize = 8;

/// Where a component's executor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorePlacement {
    /// Pinned to this core index (as numbered by the OS, from 0).
    Core(usize),
    /// Not pinned: the OS schedules it on any core.
    Shared,
}

impl<'de> Deserialize<'de> for CorePlacement {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Core(usize),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Core(core) => Ok(CorePlacement::Core(core)),
            Raw::Word(word) if word == "shared" => Ok(CorePlacement::Shared),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "core placement must be a core index or \"shared\", not {word:?}"
            ))),
        }
    }
}

impl CorePlacement {
    /// The core index, or `None` when not pinned.
    pub fn core(self) -> Option<usize> {
        match self {
            CorePlacement::Core(core) => Some(core),
            CorePlacement::Shared => None,
        }
    }
}

impl fmt::Display for CorePlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorePlacement::Core(core) => write!(f, "core {core}"),
            CorePlacement::Shared => f.write_str("shared"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub raft: CorePlacement,
    pub wal: CorePlacement,
    pub page_store: CorePlacement,
    pub grpc: CorePlacement,
}

/// Group commit bounds: a WAL batch is written and fdatasync'ed when any bound is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalBatch {
    pub batch_bytes_max: u64,
    pub batch_records_max: u64,
    /// How long the writer waits for more records after the first one arrives.
    pub batch_delay_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageStoreTuning {
    pub cache_bytes: u64,
    /// How often the background checkpointer makes published pages durable.
    pub checkpoint_interval_ms: u64,
    /// Bound on published-but-unwritten pages (at least two pages).
    pub dirty_bytes_max: u64,
    /// Most segments one background cleaner step moves.
    pub background_clean_segments: u64,
    /// The background cleaner works while dead bytes exceed this percentage of the live bytes.
    pub clean_garbage_percent: u32,
    /// The cleaner takes segments whose live share is below this percentage (at most 100).
    pub clean_live_percent_max: u32,
}

impl PageStoreTuning {
    /// The smallest `dirty_bytes_max` the page store accepts: two 4 KiB pages.
    pub const DIRTY_BYTES_MIN: u64 = 8192;
}

/// Bounded channel depths; a full queue applies back-pressure to its producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queues {
    /// Client proposals waiting for the raft loop.
    pub proposal_queue_depth: usize,
}

/// Keys profiles once had, with why they are gone; a profile that still has one is refused
/// with this explanation rather than only "unknown field".
const REMOVED_KEYS: &[(&str, &str)] = &[(
    "apply_queue_depth",
    "queues.apply_queue_depth was removed: committed entries are applied inline by the raft \
     loop, through no queue; delete the line",
)];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TuningProfile {
    pub placement: Placement,
    pub wal: WalBatch,
    pub page_store: PageStoreTuning,
    pub queues: Queues,
}

/// Which profile was chosen and from where, for messages and `--print-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    BuiltIn(&'static str),
    File(PathBuf),
}

impl fmt::Display for ProfileSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSource::BuiltIn(name) => f.write_str(name),
            ProfileSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("cannot read tuning profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tuning profile {profile} is malformed: {message}")]
    Parse { profile: String, message: String },
    #[error("tuning profile {profile}: {field} must be greater than 0")]
    Zero {
        profile: String,
        field: &'static str,
    },
    #[error("tuning profile {profile}: {field} must be {bound}")]
    OutOfRange {
        profile: String,
        field: &'static str,
        bound: &'static str,
    },
    #[error("tuning profile {profile} pins {component} to core {core}, but this machine has {cores} cores")]
    NoSuchCore {
        profile: String,
        component: &'static str,
        core: usize,
        cores: usize,
    },
}

impl TuningProfile {
    /// Resolves `--tuning-profile`: a built-in name, else a path to a TOML file. With no value,
    /// picks by core count.
    pub fn load(
        choice: Option<&str>,
        cores: usize,
    ) -> Result<(TuningProfile, ProfileSource), TuningError> {
        let choice = choice.unwrap_or(if cores < DEDICATED_MIN_CORES {
            "small"
        } else {
            "dedicated"
        });
        if let Some(&(name, text)) = BUILT_IN.iter().find(|(name, _)| *name == choice) {
            return Ok((
                TuningProfile::parse(text, name)?,
                ProfileSource::BuiltIn(name),
            ));
        }
        let path = Path::new(choice);
        let text = std::fs::read_to_string(path).map_err(|source| TuningError::Read {
            path: path.to_owned(),
            source,
        })?;
        let profile = TuningProfile::parse(&text, &path.display().to_string())?;
        Ok((profile, ProfileSource::File(path.to_owned())))
    }

    /// Parses and checks a profile; `label` names it in errors.
    pub fn parse(text: &str, label: &str) -> Result<TuningProfile, TuningError> {
        let profile: TuningProfile = toml::from_str(text).map_err(|error| {
            let mut message = error.message().to_owned();
            for (key, why) in REMOVED_KEYS {
                if message.contains(&format!("unknown field `{key}`")) {
                    message = format!("{message} ({why})");
                }
            }
            TuningError::Parse {
                profile: label.to_owned(),
                message,
            }
        })?;
        let limits = [
            ("wal.batch_bytes_max", profile.wal.batch_bytes_max),
            ("wal.batch_records_max", profile.wal.batch_records_max),
            ("page_store.cache_bytes", profile.page_store.cache_bytes),
            (
                "page_store.checkpoint_interval_ms",
                profile.page_store.checkpoint_interval_ms,
            ),
            (
                "page_store.dirty_bytes_max",
                profile.page_store.dirty_bytes_max,
            ),
            (
                "page_store.background_clean_segments",
                profile.page_store.background_clean_segments,
            ),
            (
                "page_store.clean_garbage_percent",
                u64::from(profile.page_store.clean_garbage_percent),
            ),
            (
                "page_store.clean_live_percent_max",
                u64::from(profile.page_store.clean_live_percent_max),
            ),
            (
                "queues.proposal_queue_depth",
                profile.queues.proposal_queue_depth as u64,
            ),
        ];
        if let Some((field, _)) = limits.iter().find(|(_, value)| *value == 0) {
            return Err(TuningError::Zero {
                profile: label.to_owned(),
                field,
            });
        }
        let page_store = &profile.page_store;
        let out_of_range = if page_store.clean_live_percent_max > 100 {
            Some(("page_store.clean_live_percent_max", "at most 100"))
        } else if page_store.dirty_bytes_max < PageStoreTuning::DIRTY_BYTES_MIN {
            Some(("page_store.dirty_bytes_max", "at least 8192 (two pages)"))
        } else {
            None
        };
        if let Some((field, bound)) = out_of_range {
            return Err(TuningError::OutOfRange {
                profile: label.to_owned(),
                field,
                bound,
            });
        }
        Ok(profile)
    }

    /// Fails if the profile pins a component to a core this machine does not have.
    pub fn check_cores(&self, source: &ProfileSource, cores: usize) -> Result<(), TuningError> {
        let placement = &self.placement;
        let components = [
            ("raft", placement.raft),
            ("wal", placement.wal),
            ("page_store", placement.page_store),
            ("grpc", placement.grpc),
        ];
        for (component, place) in components {
            if let CorePlacement::Core(core) = place {
                if core >= cores {
                    let profile = source.to_string();
                    return Err(TuningError::NoSuchCore {
                        profile,
                        component,
                        core,
                        cores,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_parse() {
        let (small, source) = TuningProfile::load(Some("small"), 2).unwrap();
        assert_eq!(source, ProfileSource::BuiltIn("small"));
        assert_eq!(small.placement.raft, CorePlacement::Core(0));
        assert_eq!(small.placement.wal, CorePlacement::Core(0));
        assert_eq!(small.placement.page_store, CorePlacement::Core(1));
        small.check_cores(&source, 2).unwrap();

        let (dedicated, source) = TuningProfile::load(Some("dedicated"), 2).unwrap();
        assert_eq!(dedicated.placement.grpc, CorePlacement::Shared);
        dedicated.check_cores(&source, 8).unwrap();
        let err = dedicated.check_cores(&source, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tuning profile dedicated pins wal to core 2, but this machine has 2 cores"
        );
    }

    #[test]
    fn default_depends_on_core_count() {
        assert_eq!(
            TuningProfile::load(None, 2).unwrap().1,
            ProfileSource::BuiltIn("small")
        );
        assert_eq!(
            TuningProfile::load(None, 7).unwrap().1,
            ProfileSource::BuiltIn("small")
        );
        assert_eq!(
            TuningProfile::load(None, 8).unwrap().1,
            ProfileSource::BuiltIn("dedicated")
        );
    }

    #[test]
    fn rejects_zero_limits_unknown_keys_and_bad_placement() {
        let small = BUILT_IN[0].1;
        let zero = small.replace("proposal_queue_depth = 1024", "proposal_queue_depth = 0");
        let err = TuningProfile::parse(&zero, "t").unwrap_err();
        assert_eq!(
            err.to_string(),
            "tuning profile t: queues.proposal_queue_depth must be greater than 0"
        );

        let typo = small.replace("batch_delay_us", "batch_delay_ms");
        assert!(matches!(
            TuningProfile::parse(&typo, "t"),
            Err(TuningError::Parse { .. })
        ));

        let placement = small.replace("grpc = 1", "grpc = \"everywhere\"");
        assert!(matches!(
            TuningProfile::parse(&placement, "t"),
            Err(TuningError::Parse { .. })
        ));
    }

    #[test]
    fn page_store_knobs_are_read_and_range_checked() {
        let small = BUILT_IN[0].1;
        let profile = TuningProfile::parse(small, "t").unwrap();
        assert_eq!(profile.page_store.checkpoint_interval_ms, 400);
        assert_eq!(profile.page_store.background_clean_segments, 8);
        let over = small.replace(
            "clean_live_percent_max = 75",
            "clean_live_percent_max = 101",
        );
        assert_eq!(
            TuningProfile::parse(&over, "t").unwrap_err().to_string(),
            "tuning profile t: page_store.clean_live_percent_max must be at most 100"
        );
        let tiny = small.replace("dirty_bytes_max = 67108864", "dirty_bytes_max = 4096");
        assert_eq!(
            TuningProfile::parse(&tiny, "t").unwrap_err().to_string(),
            "tuning profile t: page_store.dirty_bytes_max must be at least 8192 (two pages)"
        );
        let never = small.replace("checkpoint_interval_ms = 400", "checkpoint_interval_ms = 0");
        assert_eq!(
            TuningProfile::parse(&never, "t").unwrap_err().to_string(),
            "tuning profile t: page_store.checkpoint_interval_ms must be greater than 0"
        );
    }

    /// `queues.apply_queue_depth` named a channel between raft and apply that never existed
    /// (apply runs inline in the raft loop) and was read by nothing; a profile written before
    /// it was removed must be refused with the key named, not silently accepted.
    #[test]
    fn removed_apply_queue_depth_is_refused_by_name() {
        for (name, text) in BUILT_IN {
            assert!(!text.contains("apply_queue_depth"), "{name} still has it");
        }
        let old = format!("{}apply_queue_depth = 1024\n", BUILT_IN[0].1);
        let err = TuningProfile::parse(&old, "old.toml").unwrap_err();
        assert!(matches!(err, TuningError::Parse { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with(
                "tuning profile old.toml is malformed: unknown field `apply_queue_depth`"
            ),
            "{message}"
        );
        assert!(
            message.ends_with(
                "(queues.apply_queue_depth was removed: committed entries are applied inline \
                 by the raft loop, through no queue; delete the line)"
            ),
            "{message}"
        );
        // Another unknown key gets no such explanation.
        let typo = format!("{}proposal_queue_deep = 1\n", BUILT_IN[0].1);
        let message = TuningProfile::parse(&typo, "t").unwrap_err().to_string();
        assert!(
            message.contains("unknown field `proposal_queue_deep`"),
            "{message}"
        );
        assert!(!message.contains("removed"), "{message}");
    }

    #[test]
    fn small_split_profile_differs_from_small_only_in_placement() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
        let path = dir.join("small-split.toml");
        let (split, _) = TuningProfile::load(Some(path.to_str().unwrap()), 2).unwrap();
        let (small, _) = TuningProfile::load(Some("small"), 2).unwrap();
        assert_eq!(
            split.placement,
            Placement {
                raft: CorePlacement::Core(0),
                wal: CorePlacement::Core(1),
                page_store: CorePlacement::Core(1),
                grpc: CorePlacement::Core(1),
            }
        );
        assert_eq!(
            TuningProfile {
                placement: small.placement,
                ..split
            },
            small
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = TuningProfile::load(Some("/nonexistent/profile.toml"), 2).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("cannot read tuning profile /nonexistent/profile.toml"));
    }
}
