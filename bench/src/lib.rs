//! Parts of the benchmarks shared by the `kosmos-bench` driver and the criterion benches: the
//! fixtures (plugins, VirtualClusters, reviews) and the statistics.

pub mod fixture;
pub mod stats;
