//! The webhook over TLS, in process, with certificates made by rcgen in a temp folder: a review
//! answered over HTTPS, TLS versions and ALPN, the admin endpoint, and a certificate rotated the
//! way a Secret volume rotates (a symlink swap) picked up without a restart or a failed request.
//! No cluster is needed: the client points at a closed port, so the caches never sync.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kosmos_webhook::server::{self, ServeArgs};
use kosmos_webhook::tls;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A Secret-volume-like folder: files are links through `..data`, which is swapped atomically.
fn write_secret_volume(dir: &Path, version: &str, certs: &tls::DevCerts) {
    let data = dir.join(version);
    tls::write(certs, &data).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(name);
        if !link.exists() {
            std::os::unix::fs::symlink(format!("..data/{name}"), link).unwrap();
        }
    }
}

fn args(dir: &Path) -> ServeArgs {
    ServeArgs {
        cert_poll_seconds: 1,
        ..ServeArgs::local(dir.join("tls.crt"), dir.join("tls.key"))
    }
}

/// A client that reaches no cluster: its watches fail and retry, the caches stay unsynced.
fn offline_client() -> kube::Client {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn connector(cas: &[&str], alpn: &[&[u8]], tls12_only: bool) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut config = builder
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn https_post(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    body: &[u8],
) -> std::io::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut out = Vec::new();
    // A server may close without close_notify; what was read up to then is the answer.
    let _ = tls.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

fn plain_job_review() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/reviews/plain-job.json"
    ))
    .unwrap()
}

#[tokio::test]
async fn reviews_are_answered_over_tls_with_h2_and_http11() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::generate(&tls::dev_names("plugin-webhook", "kosmos-system"), 30).unwrap();
    write_secret_volume(dir.path(), "v1", &certs);
    let running = server::start(&args(dir.path()), offline_client())
        .await
        .unwrap();

    let answer = https_post(
        running.addr,
        &connector(&[&certs.ca_pem], &[b"http/1.1"], false),
        &plain_job_review(),
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"allowed\":true"), "{answer}");
    assert!(
        answer.contains("a06c3d85-3f9e-4081-8e31-6c4b9f5e2d43"),
        "{answer}"
    );

    // TLS 1.2 is accepted too (older apiservers), and h2 is offered by ALPN.
    let answer = https_post(
        running.addr,
        &connector(&[&certs.ca_pem], &[b"http/1.1"], true),
        &plain_job_review(),
    )
    .await
    .unwrap();
    assert!(answer.contains("\"allowed\":true"), "{answer}");
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let stream = connector(&[&certs.ca_pem], &[b"h2", b"http/1.1"], false)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // A client that does not trust the CA is refused.
    let other = tls::generate(&tls::dev_names("x", "y"), 1).unwrap();
    assert!(
        https_post(
            running.addr,
            &connector(&[&other.ca_pem], &[b"http/1.1"], false),
            b"{}"
        )
        .await
        .is_err()
    );

    // Admin port: alive, not ready (no cluster to sync from), metrics with the expiry.
    assert!(
        http_get(running.admin_addr, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let ready = http_get(running.admin_addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("not synced"), "{ready}");
    let metrics = http_get(running.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("plugin_webhook_certificate_expiry_timestamp_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("plugin_webhook_admission_reviews_total{decision=\"ignored\"} 2"),
        "{metrics}"
    );
    running.shutdown(Duration::from_secs(1));
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_dropping_requests() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let names = tls::dev_names("plugin-webhook", "kosmos-system");
    let old = tls::generate(&names, 30).unwrap();
    write_secret_volume(dir.path(), "v1", &old);
    let running = server::start(&args(dir.path()), offline_client())
        .await
        .unwrap();
    let addr = running.addr;
    let new = tls::generate(&names, 60).unwrap();

    // Requests keep flowing (trusting both CAs, as an apiserver does during a CA rollover)
    // while the certificate is swapped underneath.
    let both = connector(&[&old.ca_pem, &new.ca_pem], &[b"http/1.1"], false);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let body = plain_job_review();
            while !stop.load(Ordering::Relaxed) {
                match https_post(addr, &both, &body).await {
                    Ok(answer) if answer.contains("\"allowed\":true") => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_secret_volume(dir.path(), "v2", &new);

    let only_new = connector(&[&new.ca_pem], &[b"http/1.1"], false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if https_post(addr, &only_new, &plain_job_review())
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    assert!(ok.load(Ordering::Relaxed) > 0);
    // The old certificate is no longer served.
    let only_old = connector(&[&old.ca_pem], &[b"http/1.1"], false);
    assert!(https_post(addr, &only_old, b"{}").await.is_err());
    let metrics = http_get(running.admin_addr, "/metrics").await;
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("plugin_webhook_certificate_expiry_timestamp_seconds "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        expiry > now + 45 * 86400,
        "the metric follows the new certificate"
    );
    running.shutdown(Duration::from_secs(1));
}

/// Sends `head` and then `body_part` (which may be shorter than the Content-Length it declares)
/// and returns what the server answered, without waiting for the rest of the body to be sent.
async fn https_raw(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    head: &str,
    body_part: &[u8],
) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    let mut request = head.as_bytes().to_vec();
    request.extend_from_slice(body_part);
    // Written beside the read: a server that stops reading must not block the answer.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut out))
        .await
        .expect("answered within 10 s")
        .unwrap_or(0);
    writer.abort();
    String::from_utf8_lossy(&out[..n]).into_owned()
}

fn reviews_answered(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("plugin_webhook_admission_reviews_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A body over the limit is refused with 413 from its Content-Length alone, before a byte of it
/// is read or parsed; one sent without a length is cut off at the limit. Neither is reviewed.
#[tokio::test]
async fn an_oversized_review_is_refused_before_parsing() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::generate(&tls::dev_names("plugin-webhook", "kosmos-system"), 30).unwrap();
    write_secret_volume(dir.path(), "v1", &certs);
    let running = server::start(&args(dir.path()), offline_client())
        .await
        .unwrap();
    let client = connector(&[&certs.ca_pem], &[b"http/1.1"], false);
    let limit = kosmos_webhook::admission::MAX_REVIEW_BYTES;

    // Declares one byte too many and sends 16 bytes: answered at once, the rest never awaited.
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        limit + 1
    );
    let started = Instant::now();
    let answer = https_raw(running.addr, &client, &head, b"{\"apiVersion\":\"a").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Chunked, no length: read up to the limit, then refused.
    let head = "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = vec![b' '; 1024 * 1024];
    let mut body = Vec::new();
    for _ in 0..(limit / chunk.len() + 2) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let answer = https_raw(running.addr, &client, head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A body just under the limit is read and reviewed (as malformed here).
    let mut big = b"{\"pad\":\"".to_vec();
    big.resize(limit - 2, b'x');
    big.extend_from_slice(b"\"}");
    let answer = https_post(running.addr, &client, &big).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..200.min(answer.len())]
    );
    assert!(answer.contains("\"allowed\":false"), "{answer}");

    let metrics = http_get(running.admin_addr, "/metrics").await;
    assert_eq!(
        reviews_answered(&metrics),
        1,
        "only the last body was reviewed: {metrics}"
    );
    running.shutdown(Duration::from_secs(1));
}

/// Latencies of `n` sequential valid reviews, sorted.
async fn valid_latencies(
    addr: SocketAddr,
    client: &tokio_rustls::TlsConnector,
    n: usize,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let answer = https_post(addr, client, &plain_job_review()).await.unwrap();
        latencies.push(started.elapsed());
        assert!(answer.contains("\"allowed\":true"), "{answer}");
    }
    latencies.sort();
    latencies
}

/// Malformed reviews sent as fast as four clients can (each a 1 MiB document that turns out
/// broken only at its end, so the whole of it is parsed) do not hold up valid ones: every valid
/// review is still answered, the slowest within 2 s and the median within a few times the
/// quiet median.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_malformed_reviews_does_not_slow_valid_ones() {
    provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::generate(&tls::dev_names("plugin-webhook", "kosmos-system"), 30).unwrap();
    write_secret_volume(dir.path(), "v1", &certs);
    let running = server::start(&args(dir.path()), offline_client())
        .await
        .unwrap();
    let addr = running.addr;
    let client = connector(&[&certs.ca_pem], &[b"http/1.1"], false);
    let quiet = valid_latencies(addr, &client, 30).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut malformed = b"{\"request\":{\"object\":[".to_vec();
    while malformed.len() < 1024 * 1024 {
        malformed.extend_from_slice(b"{\"a\":[1,2,3,\"xxxxxxxx\"]},");
    }
    malformed.extend_from_slice(b"}}}");
    let malformed = Arc::new(malformed);
    let mut burst = Vec::new();
    for _ in 0..4 {
        let (stop, sent, malformed, client) = (
            stop.clone(),
            sent.clone(),
            malformed.clone(),
            client.clone(),
        );
        burst.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = https_post(addr, &client, &malformed).await.unwrap();
                assert!(
                    answer.contains("malformed AdmissionReview"),
                    "{}",
                    &answer[..300.min(answer.len())]
                );
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = valid_latencies(addr, &client, 30).await;
    stop.store(true, Ordering::Relaxed);
    for task in burst {
        task.await.unwrap();
    }
    let sent = sent.load(Ordering::Relaxed);
    let median = |l: &[Duration]| l[l.len() / 2];
    eprintln!(
        "quiet median {:?} max {:?}; during {sent} malformed reviews: median {:?} max {:?}",
        median(&quiet),
        quiet[quiet.len() - 1],
        median(&loaded),
        loaded[loaded.len() - 1]
    );
    assert!(sent >= 8, "the burst sent only {sent} malformed reviews");
    assert!(
        loaded[loaded.len() - 1] < Duration::from_secs(2),
        "{loaded:?}"
    );
    assert!(
        median(&loaded) < median(&quiet) * 5 + Duration::from_millis(250),
        "quiet {quiet:?}\nloaded {loaded:?}"
    );
    running.shutdown(Duration::from_secs(1));
}
