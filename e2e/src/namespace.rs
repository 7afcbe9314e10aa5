//! One throw-away namespace per test, so tests can run in parallel and leave nothing behind.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client, Config};

use crate::{Cluster, wait_for};

/// Label on every test namespace, so leftovers of a killed run can be found and deleted with
/// `kubectl delete ns -l e2e.kosmos.io/test`.
pub const TEST_NAMESPACE_LABEL: &str = "e2e.kosmos.io/test";

/// Bound on deleting a namespace from `Drop` (the request only; the namespace controller
/// finishes the deletion in the background).
const DROP_DELETE_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound on the serviceaccount controller creating a new namespace's `default` account.
const DEFAULT_SERVICE_ACCOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// A namespace with a unique name, deleted by [`TestNamespace::delete`] or, if a test fails
/// before that, when dropped.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    config: Config,
    deleted: bool,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique suffix>` in `cluster`, labelled with [`TEST_NAMESPACE_LABEL`],
    /// and waits until its `default` ServiceAccount exists so pods can be created in it.
    pub async fn create(cluster: Cluster, prefix: &str) -> Result<Self> {
        let config = crate::config(cluster).await?;
        let client = Client::try_from(config.clone())?;
        let name = unique_name(prefix);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), sanitize(prefix))].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating test namespace {name}"))?;
        let this = Self {
            name,
            config,
            deleted: false,
        };
        // Pods cannot be created before the serviceaccount controller made `default`; waiting
        // here keeps that race out of every test (the job controller would retry with backoff).
        let accounts: Api<ServiceAccount> = Api::namespaced(client, &this.name);
        wait_for(
            &format!("serviceaccount {}/default", this.name),
            DEFAULT_SERVICE_ACCOUNT_TIMEOUT,
            || async { Ok(accounts.get_opt("default").await?) },
        )
        .await?;
        Ok(this)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace (without waiting for its contents to go).
    pub async fn delete(mut self) -> Result<()> {
        self.deleted = true;
        let client = Client::try_from(self.config.clone())?;
        delete_namespace(client, &self.name).await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        let name = self.name.clone();
        let config = self.config.clone();
        crate::cleanup_on_drop(
            &format!("test namespace {name}"),
            DROP_DELETE_TIMEOUT,
            move || async move { delete_namespace(Client::try_from(config)?, &name).await },
        );
    }
}

async fn delete_namespace(client: Client, name: &str) -> Result<()> {
    match Api::<Namespace>::all(client)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        // Already gone (deleted twice, or by hand): nothing left to do.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error).with_context(|| format!("deleting test namespace {name}")),
    }
}

/// Lower-case alphanumerics and dashes, at most 40 characters, never empty: a valid start for a
/// DNS-1123 label.
fn sanitize(prefix: &str) -> String {
    let mut out: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(40);
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() {
        "e2e".to_owned()
    } else {
        out
    }
}

/// `<prefix>-<pid><counter><time>` in base 36: unique across the tests of one process (counter)
/// and across processes and runs (pid, time), and at most 63 characters.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!(
        "{}-{}{}{}",
        sanitize(prefix),
        base36(u64::from(std::process::id())),
        base36(u64::from(count)),
        base36(u64::from(nanos))
    )
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_valid_labels() {
        let a = unique_name("Job Controller_test!");
        let b = unique_name("Job Controller_test!");
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(name.len() <= 63, "{name}");
            assert!(name.starts_with("job-controller-test-"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
        }
        assert!(unique_name(&"x".repeat(100)).len() <= 63);
        assert!(unique_name("--").starts_with("e2e-"));
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
