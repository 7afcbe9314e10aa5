//! The plugin webhook: a mutating admission webhook that turns the operator's bare executor
//! Jobs into plugin installs. [`mutation`] is the pure core; the rest is the server around it.

pub mod admission;
pub mod authoring;
pub mod base64_splice;
pub mod bootstrap;
pub mod executor_env;
pub mod limits;
pub mod mark_key;
pub mod metrics;
pub mod mutation;
pub mod server;
pub mod tls;

pub use mutation::{Denial, Mutation, RecursiveReadOnly, Settings, mutate, mutate_job, parse_job};
