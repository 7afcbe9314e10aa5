//! Why a reconciliation failed, as one type whose `reason` labels the error metric.

/// Why a reconciliation failed; `reason` labels the error metric.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted, naming the object.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The object was changed by someone else between read and write; read again.
    #[error("{0} changed while being reconciled; retrying")]
    Conflict(String),
    /// The operator built a request it cannot send (a bug: please report it).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Label for the error metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube_api",
            Self::Conflict(_) => "conflict",
            Self::Internal(_) => "internal",
        }
    }
}

pub(crate) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| match &source {
        kube::Error::Api(s) if s.code == 409 => Error::Conflict(what),
        _ => Error::Kube { what, source },
    }
}

pub(crate) fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == code)
}
