//! The API of the plugin system: the `VirtualCluster` and `VirtualClusterPlugin` custom
//! resources (`kosmos.io/v1alpha1`), their validation, and the [`contract`] by which the operator
//! and the webhook recognise an executor Job.

pub mod bytes;
pub mod contract;
pub mod crd;
pub mod kubeconfig;
pub mod mark;
pub mod plugin;
pub mod validation;
pub mod virtual_cluster;

pub use plugin::{
    ChartSource, HostPath, PluginRef, PluginSources, Storage, VirtualClusterPlugin,
    VirtualClusterPluginSpec, YamlSource,
};
pub use validation::{FieldError, InvalidSpec, validate_plugin, validate_virtual_cluster};
pub use virtual_cluster::{
    KeyRef, OptionValueSource, PluginOption, PluginPhase, PluginSet, PluginStatus, VirtualCluster,
    VirtualClusterSpec, VirtualClusterStatus, condition, phase,
};
