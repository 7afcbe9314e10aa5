//! What `virtual-cluster-operator` and `plugin-webhook` both run around their own work, written
//! once so the two binaries have one shape: logging ([`LogFormat`], [`init_logging`]), the
//! shutdown signal ([`shutdown_signal`]) and the plain-HTTP admin port ([`admin`]: `/healthz`,
//! `/readyz`, `/metrics`). Each binary's own wiring is a library function (`server::start` in
//! both crates) that returns a running handle, so tests run it in-process.

pub mod admin;
mod logging;
mod shutdown;

pub use logging::{LogFormat, init_logging};
pub use shutdown::shutdown_signal;
