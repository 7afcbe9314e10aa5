//! Clients that connect and then send nothing, or one byte a second, lose their connection
//! within the header read timeout (TLS handshake, first request, headers of a later request on a
//! kept-alive connection) or the request timeout (a trickled body); open connections are capped,
//! and a slot comes back when a connection goes. In process, no cluster needed.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kosmos_webhook::server::{self, ServeArgs};
use kosmos_webhook::tls;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the server gives a client for its headers in these tests.
const HEADER_TIMEOUT: u64 = 2;
/// How long the server gives a whole request in these tests.
const REQUEST_TIMEOUT: u64 = 3;
/// A connection still open this long after the slow client started was not cut off.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(8);

struct Webhook {
    running: server::Running,
    certs: tls::DevCerts,
    _dir: tempfile::TempDir,
}

async fn start(max_connections: usize) -> Webhook {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::generate(&tls::dev_names("plugin-webhook", "kosmos-system"), 1).unwrap();
    tls::write(&certs, dir.path()).unwrap();
    let args = ServeArgs {
        header_read_timeout_seconds: HEADER_TIMEOUT,
        request_timeout_seconds: REQUEST_TIMEOUT,
        max_connections,
        ..ServeArgs::local(dir.path().join("tls.crt"), dir.path().join("tls.key"))
    };
    // A client that reaches no cluster: the caches stay unsynced, which these tests do not need.
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let running = server::start(&args, client).await.unwrap();
    Webhook {
        running,
        certs,
        _dir: dir,
    }
}

impl Webhook {
    async fn tls(&self) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.certs.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(self.running.addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    fn addr(&self) -> SocketAddr {
        self.running.addr
    }
}

fn review() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/reviews/plain-job.json"
    ))
    .unwrap()
}

fn request_head(body_len: usize, keep_alive: bool) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {body_len}\r\nConnection: {}\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
}

/// Reads one HTTP/1.1 response (headers and a Content-Length body).
async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "response cut short"
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.unwrap();
    buf.extend_from_slice(&body);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Sends `bytes` one a second on `stream` while reading from it; returns what was read and how
/// long after the start the server closed the connection (None: still open after the last byte).
async fn trickle<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    bytes: &[u8],
) -> (String, Option<Duration>) {
    let started = Instant::now();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let read = tokio::spawn(async move {
        let mut out = Vec::new();
        // EOF or an error (reset) both mean the server closed the connection.
        let _ = reader.read_to_end(&mut out).await;
        (
            String::from_utf8_lossy(&out).into_owned(),
            started.elapsed(),
        )
    });
    for byte in bytes {
        if read.is_finished() || started.elapsed() > CUT_OFF_WITHIN {
            break;
        }
        // A failed write means the server is gone; the reader says when.
        let _ = writer.write_all(&[*byte]).await;
        let _ = writer.flush().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match tokio::time::timeout(Duration::from_secs(1), read).await {
        Ok(Ok((text, at))) => (text, Some(at)),
        _ => (String::new(), None),
    }
}

fn assert_cut_off(what: &str, closed: Option<Duration>) {
    let at = closed.unwrap_or_else(|| panic!("{what}: the server kept the connection open"));
    assert!(
        at <= CUT_OFF_WITHIN,
        "{what}: the server closed the connection only after {at:?}"
    );
    assert!(
        at >= Duration::from_secs(HEADER_TIMEOUT) - Duration::from_millis(200),
        "{what}: closed after {at:?}, before the timeout"
    );
}

#[tokio::test]
async fn one_byte_a_second_is_cut_off_at_every_stage() {
    let webhook = start(64).await;
    let head = request_head(10, true).into_bytes();

    // During the TLS handshake: bytes that never make a ClientHello.
    let tcp = TcpStream::connect(webhook.addr()).await.unwrap();
    let (_, closed) = trickle(tcp, &[0x16; 30]).await;
    assert_cut_off("TLS handshake", closed);

    // The first request's headers.
    let stream = webhook.tls().await.unwrap();
    let (_, closed) = trickle(stream, &head).await;
    assert_cut_off("first request", closed);

    // The headers of a second request on a kept-alive connection.
    let mut stream = webhook.tls().await.unwrap();
    let body = review();
    stream
        .write_all(request_head(body.len(), true).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let (_, closed) = trickle(stream, &head).await;
    assert_cut_off("second request", closed);

    // A body sent one byte a second: answered 408 at the request timeout.
    let mut stream = webhook.tls().await.unwrap();
    stream
        .write_all(request_head(1000, false).as_bytes())
        .await
        .unwrap();
    let (answer, closed) = trickle(stream, &[b' '; 30]).await;
    assert_cut_off("request body", closed);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Meanwhile, and after, a client that sends its request at once is answered.
    let mut stream = webhook.tls().await.unwrap();
    stream
        .write_all(request_head(body.len(), false).as_bytes())
        .await
        .unwrap();
    stream.write_all(&body).await.unwrap();
    let answer = read_response(&mut stream).await;
    assert!(answer.contains("\"allowed\":true"), "{answer}");
    webhook.running.shutdown(Duration::from_secs(1));
}

#[tokio::test]
async fn open_connections_are_capped_and_slots_come_back() {
    let webhook = start(2).await;
    let first = webhook.tls().await.unwrap();
    let second = webhook.tls().await.unwrap();

    // A third connection is closed before the handshake completes.
    let refused = webhook.tls().await;
    assert!(refused.is_err(), "a third connection was accepted");
    let metrics = {
        let mut tcp = TcpStream::connect(webhook.running.admin_addr)
            .await
            .unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(
        metrics.contains("plugin_webhook_connections_refused_total 1"),
        "{metrics}"
    );
    // The two held connections are counted as open; the refused one never was.
    assert!(
        metrics.contains("plugin_webhook_connections_open 2"),
        "{metrics}"
    );

    // Closing one frees its slot at once.
    drop(first);
    let body = review();
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // The server notices the close asynchronously; retry briefly.
            if let Ok(mut stream) = webhook.tls().await {
                stream
                    .write_all(request_head(body.len(), false).as_bytes())
                    .await
                    .unwrap();
                stream.write_all(&body).await.unwrap();
                return read_response(&mut stream).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap();
    assert!(answered.contains("\"allowed\":true"), "{answered}");

    // An idle connection holds its slot only until the header read timeout.
    let mut idle = second;
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(CUT_OFF_WITHIN, idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "an idle connection stayed open: {closed:?}"
    );
    // Every slot came back: nothing is counted open any more.
    let open = &webhook.running.state.metrics.connections_open;
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while open.get() != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "{} connections still counted open",
        open.get()
    );
    webhook.running.shutdown(Duration::from_secs(1));
}
