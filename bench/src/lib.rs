//! Parts of the benchmarks shared by the `kosmos-bench` driver, the criterion benches and the
//! certificate drills (`tests/cert_rotation.rs`): the fixtures (plugins, VirtualClusters,
//! reviews), the load generator, the processes and the statistics.

pub mod fixture;
pub mod load;
pub mod proc;
pub mod stats;
