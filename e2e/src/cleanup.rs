//! Cleanup that must happen even when a test fails: from `Drop`, which may run while the test's
//! runtime is shutting down (after a panic), and a kube `Client` belongs to the runtime that made
//! it. So the work runs on a fresh runtime on a thread of its own, with a new client, bounded.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::DeleteParams;
use kube::{Api, Client};

/// Runs `work` to the end on a fresh runtime on its own thread, within `timeout`; a failure is
/// printed naming `what`, never raised (this is called from `Drop`).
pub fn cleanup_on_drop<F, Fut>(what: &str, timeout: Duration, work: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>>,
{
    let outcome = std::thread::spawn(move || -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            tokio::time::timeout(timeout, work())
                .await
                .context("timed out")?
        })
    })
    .join();
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("cleanup of {what} failed: {error:#}"),
        Err(_) => eprintln!("cleanup of {what} panicked"),
    }
}

/// Deletes MutatingWebhookConfiguration `name` from the host cluster; already gone is fine.
pub async fn delete_webhook_configuration(client: Client, name: &str) -> Result<()> {
    match Api::<MutatingWebhookConfiguration>::all(client)
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error).with_context(|| format!("deleting webhook configuration {name}")),
    }
}

/// From `Drop`: deletes MutatingWebhookConfiguration `name`, so a failed test leaves no
/// registration pointing at a server that is gone.
pub fn delete_webhook_configuration_on_drop(name: &str) {
    let owned = name.to_owned();
    cleanup_on_drop(
        &format!("webhook configuration {name}"),
        Duration::from_secs(15),
        move || async move { delete_webhook_configuration(crate::host().await?, &owned).await },
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use super::*;

    // Drop runs inside a test's runtime: the cleanup must work from there too.
    #[tokio::test]
    async fn runs_the_work_to_the_end_from_inside_a_runtime() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        cleanup_on_drop("a flag", Duration::from_secs(5), move || async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        assert!(done.load(Ordering::SeqCst));
    }

    #[test]
    fn a_hanging_cleanup_is_cut_off() {
        let started = Instant::now();
        cleanup_on_drop("a hang", Duration::from_millis(100), || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        });
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
