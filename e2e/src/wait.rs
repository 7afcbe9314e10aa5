//! Bounded polling: no test waits forever.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};

/// Long enough for the job controller and the garbage collector on a busy 2-core machine, short
/// enough that a broken test fails within a minute.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Calls `probe` until it returns `Ok(Some(_))`, returns its first error, or fails after
/// `timeout` naming `what` was awaited. Each call is itself cut off at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => return Err(error.context(format!("while waiting for {what}"))),
            Err(_) => bail!("timed out after {timeout:?} waiting for {what}"),
        }
        if tokio::time::Instant::now() + POLL_INTERVAL >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_value() -> Result<()> {
        let mut calls = 0;
        let value = wait_for("the third call", Duration::from_secs(5), || {
            calls += 1;
            let now = calls;
            async move { Ok((now >= 3).then_some(now)) }
        })
        .await?;
        assert_eq!(value, 3);
        Ok(())
    }

    #[tokio::test]
    async fn times_out_naming_what_it_waited_for() {
        let result: Result<()> =
            wait_for("nothing", Duration::from_millis(600), || async { Ok(None) }).await;
        let message = format!("{:#}", result.expect_err("must time out"));
        assert!(message.contains("waiting for nothing"), "{message}");
    }

    #[tokio::test]
    async fn stops_at_the_first_error() {
        let result: Result<()> = wait_for("an error", Duration::from_secs(5), || async {
            bail!("boom")
        })
        .await;
        let message = format!("{:#}", result.expect_err("must fail"));
        assert!(
            message.contains("boom") && message.contains("an error"),
            "{message}"
        );
    }
}
