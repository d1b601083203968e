//! The POP3 protocol engine, sans I/O.
//!
//! Owns: framing command lines ([`line`](mod@line)), parsing commands ([`command`]) and the
//! session state machine with every reply's wire text ([`session`]).
//!
//! Architecture invariant: this module depends on nothing else in the crate and on no I/O
//! crate (no sockets, files, clocks, glommio or rustls). It is fed bytes and results and
//! emits replies and [`Step`]s; a test (`tests/layering.rs`) enforces the import rule.

pub mod command;
pub mod line;
pub mod sasl;
pub mod session;
pub mod spare;

pub use command::{Command, MsgNum, ParseError};
pub use line::{Line, LineDecoder, MAX_LINE};
pub use sasl::{Mechanism, Mechanisms, SaslError, MAX_SASL_LINE};
pub use session::{
    AbortReason, ConnInfo, LoginRequest, LoginRequestBox, LoginResult, Maildrop, RetrieveError,
    SaslChallenge, Session, SessionConfig, Stats, Step, FLUSH_AT,
};

#[cfg(test)]
mod tests;
