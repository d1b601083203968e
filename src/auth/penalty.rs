//! Per-IP failed-login penalties (like Dovecot's anvil: 2 → 4 → 8 → 15 s).
//!
//! A [`Penalties`] table counts failed logins per client address: IPv4 addresses one by
//! one, IPv6 by /48 like Dovecot's `auth-penalty.c` (`PENALTY_IPV6_MASK_BITS`), so a client
//! given a /48 cannot start afresh from each of its 65,536 /64s. The delay for `n` failures is
//! `base · 2^(n-1)`, at most `max`; a quiet period of `reset_after` since the last failure
//! forgets the address; a successful login clears it.
//!
//! Pure data: no clock (the caller passes `Instant`s), no locks, no I/O. The runtime keeps
//! one table per core and tells the other cores about each failure, so a client that
//! reconnects to another core finds its penalty there too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Most addresses remembered; past this, forgotten (decayed) entries are dropped first, then
/// the least-penalised ones.
pub const MAX_ENTRIES: usize = 100_000;

/// How penalties grow and decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PenaltyPolicy {
    /// Delay after the first failure; zero disables penalties.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Quiet time after which an address's failures are forgotten.
    pub reset_after: Duration,
}

impl PenaltyPolicy {
    /// The delay for `level` failures.
    pub fn delay_for(&self, level: u32) -> Duration {
        if level == 0 || self.base.is_zero() {
            return Duration::ZERO;
        }
        let factor = 1u32 << (level - 1).min(20);
        self.base
            .saturating_mul(factor)
            .min(self.max.max(self.base))
    }
}

/// Bits of an IPv6 address that name its penalty entry (Dovecot's `PENALTY_IPV6_MASK_BITS`).
pub const IPV6_PREFIX_BITS: u32 = 48;

/// The key of an address: IPv4 (and IPv4-mapped IPv6) exact, IPv6 by its /48.
pub fn ip_key(ip: IpAddr) -> u128 {
    address_key(ip, IPV6_PREFIX_BITS)
}

/// An address as a number that groups clients: IPv4 (also IPv4-mapped IPv6, how a
/// dual-stack listener sees IPv4 clients) exact, IPv6 by its first `v6_prefix_bits` bits
/// (one site, or one host, owns a whole prefix and can use any address in it). The penalty
/// table and the per-address connection limit use it.
pub fn address_key(ip: IpAddr, v6_prefix_bits: u32) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) & !u128::MAX.checked_shr(v6_prefix_bits).unwrap_or(0),
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// One core's table. See the module docs.
#[derive(Debug)]
pub struct Penalties {
    policy: PenaltyPolicy,
    map: HashMap<u128, Entry>,
}

impl Penalties {
    /// An empty table.
    pub fn new(policy: PenaltyPolicy) -> Self {
        Self {
            policy,
            map: HashMap::new(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &PenaltyPolicy {
        &self.policy
    }

    /// Failures counted for `key` that have not decayed by `now`.
    pub fn level(&self, key: u128, now: Instant) -> u32 {
        match self.map.get(&key) {
            Some(e) if now.saturating_duration_since(e.last) < self.policy.reset_after => {
                e.failures
            }
            _ => 0,
        }
    }

    /// The delay owed by `key` now (before any reply to its next attempt).
    pub fn delay(&self, key: u128, now: Instant) -> Duration {
        self.policy.delay_for(self.level(key, now))
    }

    /// Counts a failure of `key` at `at`; returns the new level.
    pub fn failure(&mut self, key: u128, at: Instant) -> u32 {
        if self.map.len() >= MAX_ENTRIES && !self.map.contains_key(&key) {
            self.prune(at);
        }
        let reset = self.policy.reset_after;
        let e = self.map.entry(key).or_insert(Entry {
            failures: 0,
            last: at,
        });
        if at.saturating_duration_since(e.last) >= reset {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = e.last.max(at);
        e.failures
    }

    /// A successful login from `key`: forget its failures.
    pub fn success(&mut self, key: u128) {
        self.map.remove(&key);
    }

    /// Addresses remembered.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn prune(&mut self, now: Instant) {
        let reset = self.policy.reset_after;
        self.map
            .retain(|_, e| now.saturating_duration_since(e.last) < reset);
        if self.map.len() >= MAX_ENTRIES {
            // Still full of live entries: keep the most penalised half.
            let mut levels: Vec<u32> = self.map.values().map(|e| e.failures).collect();
            levels.sort_unstable();
            let cut = levels[levels.len() / 2];
            self.map.retain(|_, e| e.failures > cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dovecot() -> PenaltyPolicy {
        PenaltyPolicy {
            base: Duration::from_secs(2),
            max: Duration::from_secs(15),
            reset_after: Duration::from_secs(300),
        }
    }

    #[test]
    fn grows_like_dovecot() {
        let p = dovecot();
        let d: Vec<u64> = (0..7).map(|l| p.delay_for(l).as_secs()).collect();
        assert_eq!(d, [0, 2, 4, 8, 15, 15, 15]);
        let off = PenaltyPolicy {
            base: Duration::ZERO,
            ..p
        };
        assert_eq!(off.delay_for(5), Duration::ZERO);
        assert_eq!(p.delay_for(u32::MAX), Duration::from_secs(15));
    }

    #[test]
    fn counts_decays_and_clears() {
        let mut t = Penalties::new(dovecot());
        let ip = ip_key("192.0.2.7".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(t.delay(ip, t0), Duration::ZERO);
        assert_eq!(t.failure(ip, t0), 1);
        assert_eq!(t.failure(ip, t0 + Duration::from_secs(1)), 2);
        assert_eq!(
            t.delay(ip, t0 + Duration::from_secs(2)),
            Duration::from_secs(4)
        );
        // Another address is unaffected.
        assert_eq!(t.level(ip_key("192.0.2.8".parse().unwrap()), t0), 0);
        // Quiet for reset_after: forgotten, and the next failure starts again at 1.
        let later = t0 + Duration::from_secs(1 + 300);
        assert_eq!(t.level(ip, later), 0);
        assert_eq!(t.failure(ip, later), 1);
        t.success(ip);
        assert_eq!(t.level(ip, later), 0);
        // An event from another core that arrives late does not move `last` backwards.
        t.failure(ip, later);
        t.failure(ip, t0);
        assert_eq!(t.level(ip, later + Duration::from_secs(299)), 2);
    }

    #[test]
    fn ipv6_by_slash_48_and_mapped_v4() {
        // Dovecot's auth-penalty.c: PENALTY_IPV6_MASK_BITS 48, so a client holding a /48
        // (65,536 /64s) cannot start afresh from each of its subnets.
        let a = ip_key("2001:db8:1:2::1".parse().unwrap());
        let b = ip_key("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = ip_key("2001:db8:1:3::1".parse().unwrap());
        let d = ip_key("2001:db8:1:ffff::1".parse().unwrap());
        let e = ip_key("2001:db8:2::1".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, d);
        assert_ne!(a, e);
        assert_eq!(
            ip_key("::ffff:192.0.2.1".parse().unwrap()),
            ip_key("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn bounded() {
        let mut t = Penalties::new(dovecot());
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u128 + 10) {
            t.failure(i, t0);
        }
        assert!(t.len() <= MAX_ENTRIES);
    }
}
