//! The cache of successful password verifications.
//!
//! A polling client logs in every few minutes with the same password; verifying an ARGON2ID
//! or SHA512-CRYPT hash each time costs milliseconds of CPU. After one successful
//! verification, the same (user, password, stored hash) is accepted for `ttl` from memory.
//!
//! # What is stored
//! Only keys: `SHA-256(process key ‖ user ‖ passwd-file generation ‖ stored hash ‖ password)`
//! with a random key made at process start, never the password. A changed password in the
//! file (a different stored hash, so a different key), a reloaded passwd-file (a new
//! generation) or a different presented password all miss. Failed verifications are never
//! inserted. Lookups happen only after the user was found, so the cache says nothing about
//! which users exist; a hit needs the right password.
//!
//! # Bounds
//! At most `capacity` entries; when full the oldest insertion is evicted (FIFO, which with a
//! TTL behaves like a clock cache for this access pattern). One `Mutex` shared by every
//! core: a login is not the per-command hot path and the critical section is a hash-map
//! probe.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A cache key (a keyed hash; see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

/// See the module docs.
pub struct AuthCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Instant>,
    order: VecDeque<(CacheKey, Instant)>,
    hits: u64,
    misses: u64,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl AuthCache {
    /// A cache keeping successes for `ttl`, at most `capacity` of them. `None` when either
    /// is zero (caching disabled).
    pub fn new(ttl: Duration, capacity: usize) -> Option<AuthCache> {
        if ttl.is_zero() || capacity == 0 {
            return None;
        }
        Some(AuthCache {
            ttl,
            capacity,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The key for a verification of `secret` for `user` against `stored`.
    pub fn key(&self, user: &str, generation: u64, stored: &str, secret: &[u8]) -> CacheKey {
        let mut h = Sha256::new();
        h.update(super::process_key());
        for part in [
            user.as_bytes(),
            &generation.to_le_bytes(),
            stored.as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(secret);
        CacheKey(h.finalize().into())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (plain inserts/removes).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` was verified within the TTL.
    pub fn hit(&self, key: &CacheKey, now: Instant) -> bool {
        let mut g = self.lock();
        let hit = match g.map.get(key) {
            Some(&at) if now.saturating_duration_since(at) < self.ttl => true,
            Some(_) => {
                g.map.remove(key);
                false
            }
            None => false,
        };
        if hit {
            g.hits += 1;
        } else {
            g.misses += 1;
        }
        hit
    }

    /// Records a successful verification.
    pub fn insert(&self, key: CacheKey, now: Instant) {
        let mut g = self.lock();
        while g.map.len() >= self.capacity || g.order.len() >= 2 * self.capacity {
            let Some((old, at)) = g.order.pop_front() else {
                break;
            };
            // Remove only if the map still holds this insertion (not a later refresh).
            if g.map.get(&old) == Some(&at) {
                g.map.remove(&old);
            }
        }
        g.map.insert(key, now);
        g.order.push_back((key, now));
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (hits, misses) so far.
    pub fn stats(&self) -> (u64, u64) {
        let g = self.lock();
        (g.hits, g.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_by_zero() {
        assert!(AuthCache::new(Duration::ZERO, 10).is_none());
        assert!(AuthCache::new(Duration::from_secs(1), 0).is_none());
    }

    #[test]
    fn keys_depend_on_everything() {
        let c = AuthCache::new(Duration::from_secs(60), 10).unwrap();
        let k = c.key("alice", 1, "{PLAIN}x", b"x");
        assert!(k == c.key("alice", 1, "{PLAIN}x", b"x"));
        assert!(k != c.key("alice", 2, "{PLAIN}x", b"x"));
        assert!(k != c.key("alicE", 1, "{PLAIN}x", b"x"));
        assert!(k != c.key("alice", 1, "{PLAIN}y", b"x"));
        assert!(k != c.key("alice", 1, "{PLAIN}x", b"y"));
        // Field boundaries are unambiguous.
        assert!(c.key("ab", 1, "c", b"") != c.key("a", 1, "bc", b""));
    }

    #[test]
    fn ttl_and_capacity() {
        let c = AuthCache::new(Duration::from_secs(10), 2).unwrap();
        let t0 = Instant::now();
        let k = |i: u8| c.key("u", 0, "s", &[i]);
        assert!(!c.hit(&k(1), t0));
        c.insert(k(1), t0);
        assert!(c.hit(&k(1), t0 + Duration::from_secs(9)));
        assert!(!c.hit(&k(1), t0 + Duration::from_secs(10)), "expired");
        c.insert(k(1), t0);
        c.insert(k(2), t0);
        c.insert(k(3), t0);
        assert_eq!(c.len(), 2);
        assert!(!c.hit(&k(1), t0), "oldest evicted");
        assert!(c.hit(&k(2), t0) && c.hit(&k(3), t0));
        for i in 0..100 {
            c.insert(k(i), t0);
        }
        assert!(c.len() <= 2);
    }
}
