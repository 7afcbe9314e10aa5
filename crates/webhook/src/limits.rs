//! Bounds on what one client can hold of the admission server: a cap on open connections, and a
//! deadline on each request. Together with the TLS handshake, first-request and header read
//! timeouts set in [`crate::server`], a client that opens connections and then sends nothing (or
//! one byte a second) loses them within seconds instead of tying the server up.

use std::future::Ready;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_server::accept::Accept;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An acceptor (run before TLS) that admits at most a fixed number of open connections; one
/// more is closed at once and counted. The slot is freed when the connection's stream is dropped.
#[derive(Clone, Debug)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    open: Gauge,
    refused: Counter,
}

impl ConnectionLimit {
    /// At most `max` connections at a time (at least one); the admitted ones are counted in
    /// `open` while they last, the refused ones in `refused`.
    pub fn new(max: usize, open: Gauge, refused: Counter) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.max(1))),
            open,
            refused,
        }
    }
}

impl<I, S> Accept<I, S> for ConnectionLimit {
    type Stream = Limited<I>;
    type Service = S;
    type Future = Ready<io::Result<(Limited<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let result = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => {
                self.open.inc();
                Ok((
                    Limited {
                        inner: stream,
                        _slot: slot,
                        open: self.open.clone(),
                    },
                    service,
                ))
            }
            Err(_) => {
                self.refused.inc();
                // Dropping the stream closes the connection before any TLS work is spent on it.
                Err(io::Error::other("too many open connections"))
            }
        };
        std::future::ready(result)
    }
}

/// A stream that holds one slot of a [`ConnectionLimit`] while it lives.
#[derive(Debug)]
pub struct Limited<I> {
    inner: I,
    _slot: OwnedSemaphorePermit,
    open: Gauge,
}

impl<I> Drop for Limited<I> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Limited<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Limited<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Middleware: a request (body included) that takes longer than the deadline gets 408. The
/// header read timeout ends with the headers; this bounds a body sent one byte a second.
pub async fn request_deadline(
    State(deadline): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s to arrive and be answered\n",
                deadline.as_secs()
            ),
        )
            .into_response(),
    }
}
