//! The environment between the mutation and `executor.sh`: every variable name the webhook sets
//! on the executor container, declared once. The mutation sets only these names, and the
//! executor-script tests check that the script reads each input and that a mutated Job carries
//! no other name.

/// `install` or `uninstall`.
pub const PLUGIN_ACTION: &str = "PLUGIN_ACTION";
/// The plugin's name, for messages.
pub const PLUGIN_NAME: &str = "PLUGIN_NAME";
/// The VirtualCluster's name (Helm values `kosmos.virtualCluster.name`, the kustomize options).
pub const VIRTUAL_CLUSTER: &str = "VIRTUAL_CLUSTER";
/// The VirtualCluster's namespace, beside its name.
pub const VIRTUAL_CLUSTER_NAMESPACE: &str = "VIRTUAL_CLUSTER_NAMESPACE";
/// How many of the VirtualCluster's `pluginOptions` follow as [`plugin_option`] variables.
pub const PLUGIN_OPTION_COUNT: &str = "PLUGIN_OPTION_COUNT";

/// The variables of one plugin option, `PLUGIN_OPTION_<i>_<part>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionPart {
    /// The option's name.
    Name,
    /// Its literal value.
    Value,
    /// The file holding its value (from a Secret or ConfigMap key), instead of `Value`.
    File,
    /// Where the file's content comes from, for messages.
    Source,
}

impl OptionPart {
    const ALL: [OptionPart; 4] = [Self::Name, Self::Value, Self::File, Self::Source];

    fn as_str(self) -> &'static str {
        match self {
            Self::Name => "NAME",
            Self::Value => "VALUE",
            Self::File => "FILE",
            Self::Source => "SOURCE",
        }
    }
}

const PLUGIN_OPTION_PREFIX: &str = "PLUGIN_OPTION_";

/// `PLUGIN_OPTION_<i>_<part>`: a variable of option `i` (the script reads them by index).
pub fn plugin_option(i: usize, part: OptionPart) -> String {
    format!("{PLUGIN_OPTION_PREFIX}{i}_{}", part.as_str())
}

/// Whether `name` is a [`plugin_option`] variable.
fn is_plugin_option(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PLUGIN_OPTION_PREFIX) else {
        return false;
    };
    let Some((index, part)) = rest.split_once('_') else {
        return false;
    };
    !index.is_empty()
        && index.bytes().all(|b| b.is_ascii_digit())
        && OptionPart::ALL.iter().any(|p| p.as_str() == part)
}
/// Bound on the whole attempt.
pub const PLUGIN_TIMEOUT_SECONDS: &str = "PLUGIN_TIMEOUT_SECONDS";
/// The writable scratch folder.
pub const PLUGIN_WORK_DIR: &str = "PLUGIN_WORK_DIR";
/// Where the script writes its outcome; unset in a pod (the default is
/// `/dev/termination-log`), set by tests that run the script on this machine.
pub const TERMINATION_LOG: &str = "TERMINATION_LOG";
/// The virtual cluster's kubeconfig.
pub const KUBECONFIG: &str = "KUBECONFIG";
/// Helm release name.
pub const CHART_RELEASE: &str = "CHART_RELEASE";
/// Namespace of the Helm release.
pub const CHART_NAMESPACE: &str = "CHART_NAMESPACE";
/// Chart repository URL (a chart from a repository instead of `CHART_PATH`).
pub const CHART_REPO: &str = "CHART_REPO";
/// Chart name in the repository.
pub const CHART_NAME: &str = "CHART_NAME";
/// Chart version in the repository.
pub const CHART_VERSION: &str = "CHART_VERSION";
/// Inline values YAML.
pub const CHART_VALUES: &str = "CHART_VALUES";
/// `true`: Helm waits for the release's resources.
pub const CHART_WAIT: &str = "CHART_WAIT";
/// Default namespace for manifests that name none.
pub const YAML_NAMESPACE: &str = "YAML_NAMESPACE";
/// Shell run until it exits 0 or the time limit passes.
pub const SUCCESS_STATE_COMMAND: &str = "SUCCESS_STATE_COMMAND";

/// The names of one file source of the install (chart, values file, manifests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file or folder the install reads.
    pub path: &'static str,
    /// Fetch this URL first.
    pub uri: &'static str,
    /// Expected SHA-256 of the fetched file.
    pub sha256: &'static str,
    /// Where the fetched file goes.
    pub download: &'static str,
    /// `true`: the download is a .tgz to unpack into the folder `path`.
    pub unpack: &'static str,
}

impl Source {
    /// Every name of this source.
    pub const fn names(&self) -> [&'static str; 5] {
        [self.path, self.uri, self.sha256, self.download, self.unpack]
    }
}

/// The chart (`spec.pluginSources.chart.storage`).
pub const CHART: Source = Source {
    path: "CHART_PATH",
    uri: "CHART_URI",
    sha256: "CHART_SHA256",
    download: "CHART_DOWNLOAD",
    unpack: "CHART_UNPACK",
};
/// The values file (`spec.pluginSources.chart.valuesFile`).
pub const VALUES: Source = Source {
    path: "VALUES_PATH",
    uri: "VALUES_URI",
    sha256: "VALUES_SHA256",
    download: "VALUES_DOWNLOAD",
    unpack: "VALUES_UNPACK",
};
/// The manifests (`spec.pluginSources.yaml.path`).
pub const YAML: Source = Source {
    path: "YAML_PATH",
    uri: "YAML_URI",
    sha256: "YAML_SHA256",
    download: "YAML_DOWNLOAD",
    unpack: "YAML_UNPACK",
};

/// The script's inputs apart from the sources' names.
pub const INPUTS: &[&str] = &[
    PLUGIN_ACTION,
    PLUGIN_NAME,
    VIRTUAL_CLUSTER,
    VIRTUAL_CLUSTER_NAMESPACE,
    PLUGIN_OPTION_COUNT,
    PLUGIN_TIMEOUT_SECONDS,
    PLUGIN_WORK_DIR,
    TERMINATION_LOG,
    KUBECONFIG,
    CHART_RELEASE,
    CHART_NAMESPACE,
    CHART_REPO,
    CHART_NAME,
    CHART_VERSION,
    CHART_VALUES,
    CHART_WAIT,
    YAML_NAMESPACE,
    SUCCESS_STATE_COMMAND,
];

/// Home folder of helm and kubectl: they write caches and configuration below it (and below
/// the XDG folders), and the image's own may be read-only.
pub const HOME: &str = "HOME";
/// Cache folder of helm and kubectl.
pub const XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// Configuration folder of helm and kubectl.
pub const XDG_CONFIG_HOME: &str = "XDG_CONFIG_HOME";
/// Data folder of helm and kubectl.
pub const XDG_DATA_HOME: &str = "XDG_DATA_HOME";

/// Set on the container but not read by the script: for the tools it runs and for people.
pub const CONTEXT: &[&str] = &[HOME, XDG_CACHE_HOME, XDG_CONFIG_HOME, XDG_DATA_HOME];

/// The file sources.
pub const SOURCES: [Source; 3] = [CHART, VALUES, YAML];

/// Whether the mutation may set `name`: one of the names above or a [`plugin_option`] variable.
pub fn is_known(name: &str) -> bool {
    INPUTS.contains(&name)
        || CONTEXT.contains(&name)
        || is_plugin_option(name)
        || SOURCES.iter().any(|source| source.names().contains(&name))
}
