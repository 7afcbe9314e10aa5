//! The ceiling: the least a TLS admission endpoint can do. rustls with the webhook's own TLS
//! settings, hyper serving HTTP/1.1 and h2, and every request answered with a fixed body (the
//! webhook's own answer to the same review, captured once), so the only difference to the webhook
//! is the work of reading the review and computing the answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kosmos_webhook::tls;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Flags of `kosmos-bench ceiling`.
#[derive(Clone, Debug, clap::Args)]
pub struct CeilingArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Serving certificate (PEM).
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// Serving key (PEM).
    #[arg(long)]
    pub tls_key: PathBuf,
    /// `NAME=FILE`: answer requests whose query is `review=NAME` with the bytes of FILE; the
    /// first is also the answer to any other request.
    #[arg(long = "body", required = true)]
    pub bodies: Vec<String>,
}

/// Serves until killed.
pub fn run(args: &CeilingArgs) -> Result<()> {
    let mut bodies = HashMap::new();
    let mut first = None;
    for spec in &args.bodies {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--body {spec}: expected NAME=FILE"))?;
        let bytes = Bytes::from(std::fs::read(file).with_context(|| format!("reading {file}"))?);
        first.get_or_insert_with(|| bytes.clone());
        bodies.insert(format!("review={name}"), bytes);
    }
    let fallback = first.context("no --body given")?;
    let loaded = tls::load(&args.tls_cert, &args.tls_key)?;
    let config = tls::server_config(Arc::new(tls::CertResolver::new(loaded.key)), None)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let bodies = Arc::new((bodies, fallback));
    // The webhook's runtime: tokio's multi-threaded scheduler with one worker per usable core.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        loop {
            let (tcp, _) = listener.accept().await?;
            // As the webhook does: without it the last TLS record of an answer can wait for a
            // delayed ACK.
            tcp.set_nodelay(true)?;
            let (acceptor, bodies) = (acceptor.clone(), bodies.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let bodies = bodies.clone();
                    async move {
                        let key = request.uri().query().unwrap_or_default().to_owned();
                        // Read the whole review, as any webhook must before answering.
                        let _ = request.into_body().collect().await;
                        let body = bodies.0.get(&key).unwrap_or(&bodies.1).clone();
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    })
}
