//! etcd's simple tokens: `<16 random letters>.<raft index>`, issued when an `Authenticate` entry
//! is applied, kept in this member's memory only (a restart forgets them, as etcd does), each
//! valid for `--auth-token-ttl` seconds after its last use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::Rng;

/// etcd's `defaultSimpleTokenLength`.
const PREFIX_LETTERS: usize = 16;

/// Live tokens are bounded: past this, expired tokens are swept, then the ones closest to
/// expiry are dropped (their clients re-authenticate, as after a TTL).
pub const TOKENS_MAX: usize = 65_536;

/// The random part of a token, chosen by the member that proposes the `Authenticate` entry.
pub fn random_prefix() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    (0..PREFIX_LETTERS)
        .map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char)
        .collect()
}

/// Tokens to user names, with their deadlines.
#[derive(Debug)]
pub struct SimpleTokens {
    ttl: Duration,
    tokens: HashMap<String, (String, Instant)>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        assert!(
            !ttl.is_zero(),
            "a token TTL of zero would refuse every token"
        );
        SimpleTokens {
            ttl,
            tokens: HashMap::new(),
        }
    }

    /// Issues `<prefix>.<index>` for `user` and returns it.
    pub fn assign(&mut self, prefix: &str, index: u64, user: &str, now: Instant) -> String {
        if self.tokens.len() >= TOKENS_MAX {
            self.tokens.retain(|_, (_, deadline)| *deadline > now);
            while self.tokens.len() >= TOKENS_MAX {
                let soonest = self
                    .tokens
                    .iter()
                    .min_by_key(|(_, (_, deadline))| *deadline)
                    .map(|(token, _)| token.clone())
                    .expect("the map is full, so not empty");
                self.tokens.remove(&soonest);
            }
        }
        let token = format!("{prefix}.{index}");
        self.tokens
            .insert(token.clone(), (user.to_owned(), now + self.ttl));
        token
    }

    /// The user of a live `token`, whose TTL starts over (etcd's `resetSimpleToken`).
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let (user, deadline) = self.tokens.get_mut(token)?;
        if *deadline <= now {
            self.tokens.remove(token);
            return None;
        }
        *deadline = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub fn invalidate_user(&mut self, user: &str) {
        self.tokens.retain(|_, (owner, _)| owner != user);
    }

    /// Forgets every token (auth disabled).
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_after_their_last_use_and_can_be_invalidated() {
        let start = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut tokens = SimpleTokens::new(ttl);
        let t = tokens.assign("abc", 7, "alice", start);
        assert_eq!(t, "abc.7");
        assert_eq!(tokens.user(&t, start + ttl / 2).as_deref(), Some("alice"));
        // The use above restarted the TTL.
        assert_eq!(tokens.user(&t, start + ttl).as_deref(), Some("alice"));
        assert_eq!(tokens.user(&t, start + ttl * 3), None);
        assert!(tokens.is_empty(), "an expired token is dropped");
        let a = tokens.assign("x", 8, "alice", start);
        let b = tokens.assign("y", 9, "bob", start);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user(&a, start), None);
        assert_eq!(tokens.user(&b, start).as_deref(), Some("bob"));
        tokens.clear();
        assert_eq!(tokens.user(&b, start), None);
        assert_eq!(tokens.user("nonsense", start), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut tokens = SimpleTokens::new(Duration::from_secs(1));
        for i in 0..(TOKENS_MAX as u64 + 10) {
            tokens.assign("p", i, "u", now + Duration::from_micros(i));
        }
        assert_eq!(tokens.len(), TOKENS_MAX);
        let last = format!("p.{}", TOKENS_MAX + 9);
        assert!(
            tokens.user(&last, now).is_some(),
            "the newest token is kept"
        );
        assert!(tokens.user("p.0", now).is_none(), "the oldest went first");
    }

    #[test]
    fn prefixes_are_sixteen_letters() {
        let p = random_prefix();
        assert_eq!(p.len(), 16);
        assert!(p.chars().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(p, random_prefix());
    }
}
