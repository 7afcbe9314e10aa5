//! `virtual-cluster-operator`: once a VirtualCluster reaches `AllNodeReady`, it runs one bare
//! executor Job per plugin (which the plugin webhook turns into an install), checks the webhook's
//! mark on each, tracks them, and sets the VirtualCluster `Completed` when every plugin succeeded.
//!
//! - [`plan`]: the decisions, pure, unit-tested;
//! - [`jobs`]: bare executor Jobs and what the operator reads back from Jobs and Pods;
//! - [`controller`]: the reconciler that observes, plans and carries the plan out ([`settle`]
//!   is its step loop), with what it observes and writes in their own modules: [`kubeconfig`],
//!   [`readiness`], [`finalizer`], [`status`], [`events`]; [`context`] and [`error`] are what
//!   every reconciliation shares;
//! - [`server`]: the flags, the admin port and leader election around the controller; `start`
//!   runs it in-process (main.rs is only flags, logging and the shutdown signal).
//!
//! [`settle`]: controller#settle

pub mod context;
pub mod controller;
pub mod error;
pub mod events;
pub mod finalizer;
pub mod jobs;
pub mod kubeconfig;
pub mod mark_keys;
pub mod metrics;
pub mod plan;
pub mod readiness;
pub mod server;
pub mod status;
pub mod triggers;
