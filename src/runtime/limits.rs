//! Connection limits shared by all cores: total, per client address, per user, and the
//! RFC 2449 LOGIN-DELAY bookkeeping.
//!
//! Owns: one table behind a short `Mutex`, touched only when a connection opens or closes
//! and at login (never per command), so the lock is not on the hot path. Counts are released
//! by dropping the slot objects, so every way a connection ends gives its place back.
//!
//! The client address is the one the PROXY header carried when the listener speaks PROXY.
//! `max_connections_per_ip` counts an IPv4 address as itself whether it arrives as IPv4 or
//! IPv4-mapped IPv6 (`::ffff:a.b.c.d`, how a dual-stack listener sees IPv4 clients), and IPv6
//! clients by their /64: one host usually owns a whole /64 and can pick any address in it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::penalty::address_key;
use crate::config::Limits as LimitsCfg;

/// The live limit values (replaced on reload).
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub max_connections: u32,
    pub max_per_ip: u32,
    pub max_per_user: u32,
    pub login_delay: Duration,
}

impl Settings {
    pub fn from_config(l: &LimitsCfg) -> Self {
        Self {
            max_connections: l.max_connections,
            max_per_ip: l.max_connections_per_ip,
            max_per_user: l.max_connections_per_user,
            login_delay: Duration::from_secs(l.login_delay_secs),
        }
    }
}

#[derive(Default)]
struct Table {
    settings: Settings,
    total: u32,
    /// By [`address_key`].
    per_ip: HashMap<u128, u32>,
    per_user: HashMap<String, u32>,
    /// When each user last logged in (only kept while a login delay applies).
    last_login: HashMap<String, Instant>,
}

/// The shared table.
#[derive(Default)]
pub struct ConnLimits {
    table: Mutex<Table>,
}

/// Why a connection or login is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
    PerUser,
    /// LOGIN-DELAY: too soon after the user's last login.
    LoginDelay,
}

impl ConnLimits {
    pub fn new(settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table {
                settings,
                ..Table::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the limit values; connections already open stay.
    pub fn update(&self, settings: Settings) {
        self.lock().settings = settings;
    }

    pub fn settings(&self) -> Settings {
        self.lock().settings
    }

    /// Takes a place for a new connection from `ip`.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let ip = address_key(ip, PER_IP_V6_PREFIX_BITS);
        let mut t = self.lock();
        let s = t.settings;
        if s.max_connections > 0 && t.total >= s.max_connections {
            return Err(Refused::Total);
        }
        let n = t.per_ip.get(&ip).copied().unwrap_or(0);
        if s.max_per_ip > 0 && n >= s.max_per_ip {
            return Err(Refused::PerIp);
        }
        t.total += 1;
        t.per_ip.insert(ip, n + 1);
        Ok(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Checks LOGIN-DELAY and the per-user limit for `user`, whose credentials were just
    /// verified, and takes a place in the per-user count. `delay` overrides the configured
    /// LOGIN-DELAY. The delay starts only at [`UserSlot::logged_in`]: a login refused later
    /// (`[IN-USE]`, an I/O error) does not make the user's retry wait.
    pub fn login(
        self: &Arc<Self>,
        user: &str,
        delay: Option<Duration>,
    ) -> Result<UserSlot, Refused> {
        let mut t = self.lock();
        let s = t.settings;
        let delay = delay.unwrap_or(s.login_delay);
        let now = Instant::now();
        if !delay.is_zero() {
            if let Some(last) = t.last_login.get(user) {
                if now.duration_since(*last) < delay {
                    return Err(Refused::LoginDelay);
                }
            }
        }
        let n = t.per_user.get(user).copied().unwrap_or(0);
        if s.max_per_user > 0 && n >= s.max_per_user {
            return Err(Refused::PerUser);
        }
        t.per_user.insert(user.to_owned(), n + 1);
        Ok(UserSlot {
            limits: self.clone(),
            user: user.to_owned(),
            delay,
        })
    }
}

/// `max_connections_per_ip` counts IPv6 clients by their /64 (IPv4 ones one by one).
const PER_IP_V6_PREFIX_BITS: u32 = 64;

/// A connection's place in the table; dropping it gives the place back.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: u128,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut t = self.limits.lock();
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A logged-in session's place in the per-user count.
pub struct UserSlot {
    limits: Arc<ConnLimits>,
    user: String,
    /// The user's LOGIN-DELAY.
    delay: Duration,
}

impl UserSlot {
    /// The login went through (maildrop locked and read): the user's LOGIN-DELAY runs from
    /// now.
    pub fn logged_in(&self) {
        if self.delay.is_zero() {
            return;
        }
        let mut t = self.limits.lock();
        let now = Instant::now();
        if t.last_login.len() > 100_000 {
            // Forget entries whose delay has passed, so the map cannot grow without bound.
            let keep = self.delay.max(t.settings.login_delay);
            t.last_login.retain(|_, at| now.duration_since(*at) < keep);
        }
        t.last_login.insert(self.user.clone(), now);
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut t = self.limits.lock();
        if let Some(n) = t.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                t.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_total_and_user_limits_release_on_drop() {
        let l = ConnLimits::new(Settings {
            max_connections: 3,
            max_per_ip: 2,
            max_per_user: 1,
            login_delay: Duration::ZERO,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.connect(a).unwrap();
        let _s2 = l.connect(a).unwrap();
        assert_eq!(l.connect(a).err(), Some(Refused::PerIp));
        let _s3 = l.connect(b).unwrap();
        assert_eq!(l.connect(b).err(), Some(Refused::Total));
        drop(s1);
        let _s4 = l.connect(a).unwrap();
        let u = l.login("alice", None).unwrap();
        assert_eq!(l.login("alice", None).err(), Some(Refused::PerUser));
        drop(u);
        let _u = l.login("alice", None).unwrap();
    }

    #[test]
    fn login_delay_per_user() {
        let l = ConnLimits::new(Settings {
            login_delay: Duration::from_secs(3600),
            ..Settings::default()
        });
        // A login that failed after the password (the maildrop in use, an I/O error) does
        // not start the delay: the retry goes through.
        drop(l.login("alice", None).unwrap());
        let u = l.login("alice", None).unwrap();
        u.logged_in();
        drop(u);
        assert_eq!(l.login("alice", None).err(), Some(Refused::LoginDelay));
        l.login("bob", None).unwrap().logged_in();
        // A per-user override of 0 lets the user in at once.
        drop(l.login("alice", Some(Duration::ZERO)).unwrap());
    }

    #[test]
    fn per_ip_counts_mapped_ipv4_as_ipv4_and_ipv6_by_slash_64() {
        let l = ConnLimits::new(Settings {
            max_per_ip: 1,
            ..Settings::default()
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        let _v4 = l.connect(ip("192.0.2.1")).unwrap();
        assert_eq!(
            l.connect(ip("::ffff:192.0.2.1")).err(),
            Some(Refused::PerIp)
        );
        // One IPv6 host owns a whole /64 and can pick any address in it.
        let v6 = l.connect(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            l.connect(ip("2001:db8:1:2:dead:beef::9")).err(),
            Some(Refused::PerIp)
        );
        let _other = l.connect(ip("2001:db8:1:3::1")).unwrap();
        drop(v6);
        let _again = l.connect(ip("2001:db8:1:2::7")).unwrap();
        assert!(l.lock().per_ip.len() == 3);
    }
}
