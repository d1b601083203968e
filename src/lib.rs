//! corepop: a thread-per-core POP3 server for Maildir.
//!
//! Layering (see `docs/architecture.md`): [`runtime`] drives everything and is the only
//! module that names glommio; [`protocol`] is the sans-I/O POP3 engine and depends on nothing
//! else in the crate; [`mailbox`] is the Maildir store and [`auth`] the passwd-file and
//! password schemes, and neither knows about sessions or sockets; [`config`] turns TOML into a
//! validated [`config::Config`].

pub mod auth;
pub mod config;
pub mod demo;
pub mod loadgen;
pub mod mailbox;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod runtime;
pub mod tls;
