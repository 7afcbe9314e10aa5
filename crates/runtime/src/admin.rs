//! The plain-HTTP admin port: `/healthz` (the process answers), `/readyz` (ready for work, or
//! why not), `/metrics` (OpenMetrics text). A server of its own, apart from the work, so probes
//! answer even while the work is slow.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::task::JoinHandle;

/// What a binary reports on its admin port.
pub trait Health: Send + Sync + 'static {
    /// `Ok` when ready for work; otherwise why not, the body of a 503 from `/readyz`.
    fn ready(&self) -> Result<(), String>;
    /// The metrics, in OpenMetrics text.
    fn metrics(&self) -> String;
}

/// A bound, serving admin port.
pub struct AdminPort {
    /// The address it listens on (the port the system chose, when asked for port 0).
    pub addr: SocketAddr,
    /// The server; it ends only if serving fails.
    pub task: JoinHandle<()>,
}

/// Binds `addr` and serves the admin endpoints from `health`; returns once it listens.
pub async fn serve(addr: SocketAddr, health: Arc<dyn Health>) -> Result<AdminPort> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin port {addr}"))?;
    let addr = listener
        .local_addr()
        .with_context(|| format!("reading the address of the admin port {addr}"))?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health)).await {
            tracing::error!(error = %e, "the admin port stopped");
        }
    });
    Ok(AdminPort { addr, task })
}

/// The admin endpoints, for a server of the caller's own.
pub fn router(health: Arc<dyn Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<dyn Health>>) -> impl IntoResponse {
    match health.ready() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics(State(health): State<Arc<dyn Health>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;

    struct Fake {
        ready: AtomicBool,
    }

    impl Health for Fake {
        fn ready(&self) -> Result<(), String> {
            if self.ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("caches not synced".to_owned())
            }
        }
        fn metrics(&self) -> String {
            "fake_total 1\n# EOF\n".to_owned()
        }
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn probes_follow_readiness_and_metrics_are_openmetrics() {
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(false),
        });
        let app = router(fake.clone());
        let (status, _, body) = get(&app, "/healthz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, _, body) = get(&app, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
        );
        fake.ready.store(true, Ordering::SeqCst);
        let (status, _, body) = get(&app, "/readyz").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, content_type, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            content_type.as_deref(),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert_eq!(body, "fake_total 1\n# EOF\n");
        assert_eq!(get(&app, "/other").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn serve_binds_a_free_port_and_names_a_taken_one() {
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(true),
        });
        let port = serve(SocketAddr::from(([127, 0, 0, 1], 0)), fake.clone())
            .await
            .unwrap();
        assert_ne!(port.addr.port(), 0);
        let taken = serve(port.addr, fake).await.err().unwrap();
        assert!(
            format!("{taken:#}").contains(&format!("binding the admin port {}", port.addr)),
            "{taken:#}"
        );
        port.task.abort();
    }
}
