//! The load generator: `oha` (crates.io), pinned to its own core, over HTTP/1.1 or h2, with
//! keep-alive or a new connection (and TLS handshake) per request, saturated or at a fixed rate;
//! its JSON summary read back. The benchmarks and the certificate drills both use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::proc;

/// HTTP version of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, one request in flight per connection.
    H1,
    /// h2, several streams per connection.
    H2,
}

impl Protocol {
    /// The name in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::H1 => "HTTP/1.1",
            Self::H2 => "h2",
        }
    }
}

/// One run of the load generator.
#[derive(Clone, Debug)]
pub struct Load<'a> {
    /// The oha binary.
    pub oha: &'a Path,
    /// Full URL.
    pub url: String,
    /// The request body (an AdmissionReview).
    pub body: PathBuf,
    /// HTTP version.
    pub protocol: Protocol,
    /// Requests in flight: connections for HTTP/1.1, connections x streams for h2.
    pub concurrency: usize,
    /// Requests per second; `None` saturates.
    pub rate: Option<u32>,
    /// How long to send.
    pub duration: Duration,
    /// Reuse connections (HTTP/1.1 keep-alive); `false` opens a connection, with its own TLS
    /// handshake, for every request (HTTP/1.1 only).
    pub keep_alive: bool,
    /// CA certificates (PEM) the server's certificate must chain to; `None` accepts any
    /// certificate (the benchmarks measure the server, not the trust).
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM) to present, e.g. to an apiserver.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Bound on each request. With a bound, requests still open when `duration` ends are waited
    /// for (and fail when they pass it) instead of being cut off uncounted.
    pub request_timeout: Option<Duration>,
}

/// The oha binary: `$BENCH_OHA` when set (`make bench` and `make test` set it), else what
/// `bench/tools.sh oha` prints (it builds oha once into its cache, a few minutes, then answers at
/// once).
pub fn oha_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("BENCH_OHA")
        && !path.is_empty()
    {
        if let Some(why) = path.strip_prefix("unavailable:") {
            bail!("oha is unavailable: {why}");
        }
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools.sh");
    let output = std::process::Command::new(&script)
        .arg("oha")
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} oha failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("BENCH_OHA="))
        .map(PathBuf::from)
        .with_context(|| format!("{} oha printed no BENCH_OHA line", script.display()))
}

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// Completed requests per second.
    pub rps: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Responses with any other status, and requests that failed.
    pub failed: u64,
    /// Mean response body size in bytes.
    pub response_bytes: f64,
}

impl Load<'_> {
    /// Runs oha once on the load core and returns its summary. Fails when a request failed or
    /// was not answered with a 2xx status: a benchmark of errors measures nothing, and a drill
    /// counts every failure.
    pub fn run(&self) -> Result<Outcome> {
        let mut command = proc::pinned(proc::LOAD_CORE, self.oha);
        command
            .args(["--no-tui", "--output-format", "json"])
            .args(["-m", "POST", "-T", "application/json", "-D"])
            .arg(&self.body)
            .arg("-z")
            .arg(format!("{}ms", self.duration.as_millis()));
        match &self.ca_cert {
            Some(ca) => command.arg("--cacert").arg(ca),
            None => command.arg("--insecure"),
        };
        if let Some((cert, key)) = &self.client_cert {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if !self.keep_alive {
            command.arg("--disable-keepalive");
        }
        if let Some(timeout) = self.request_timeout {
            command
                .arg("-t")
                .arg(format!("{}ms", timeout.as_millis()))
                .arg("--wait-ongoing-requests-after-deadline");
        }
        match self.protocol {
            Protocol::H1 => {
                command.arg("-c").arg(self.concurrency.to_string());
            }
            Protocol::H2 => {
                // Four connections, the rest as streams, as a Go client with a pool would do.
                let connections = self.concurrency.clamp(1, 4);
                let streams = self.concurrency.div_ceil(connections);
                command
                    .arg("--http2")
                    .arg("-c")
                    .arg(connections.to_string())
                    .arg("-p")
                    .arg(streams.to_string());
            }
        }
        if let Some(rate) = self.rate {
            // Latency measured from when each request was due, not when it was sent, so a slow
            // server cannot hide its queue (coordinated omission).
            command
                .arg("-q")
                .arg(rate.to_string())
                .arg("--latency-correction");
        }
        command.arg(&self.url);
        let output = command
            .output()
            .with_context(|| format!("running {}", self.oha.display()))?;
        if !output.status.success() {
            bail!(
                "oha against {} failed ({}): {}",
                self.url,
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let json: Value = serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "oha printed no JSON: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })?;
        let outcome = parse(&json)?;
        if outcome.failed > 0 || outcome.ok == 0 {
            bail!(
                "oha against {}: {} answered 2xx, {} did not: {}",
                self.url,
                outcome.ok,
                outcome.failed,
                json.get("statusCodeDistribution")
                    .zip(json.get("errorDistribution"))
                    .map(|(s, e)| format!("status {s}, errors {e}"))
                    .unwrap_or_default()
            );
        }
        Ok(outcome)
    }
}

/// Reads oha's JSON summary (seconds) into milliseconds and counts.
pub fn parse(json: &Value) -> Result<Outcome> {
    let number = |pointer: &str| -> Result<f64> {
        json.pointer(pointer)
            .and_then(Value::as_f64)
            .with_context(|| format!("oha's JSON has no number at {pointer}"))
    };
    let statuses = json
        .get("statusCodeDistribution")
        .and_then(Value::as_object)
        .context("oha's JSON has no statusCodeDistribution")?;
    let mut ok = 0;
    let mut failed = 0;
    for (status, count) in statuses {
        let count = count.as_u64().unwrap_or_default();
        if status.starts_with('2') {
            ok += count;
        } else {
            failed += count;
        }
    }
    // Requests cut off by the end of the run are not failures of the server.
    failed += json
        .get("errorDistribution")
        .and_then(Value::as_object)
        .map(|errors| {
            errors
                .iter()
                .filter(|(e, _)| !e.contains("aborted due to deadline"))
                .map(|(_, n)| n.as_u64().unwrap_or_default())
                .sum::<u64>()
        })
        .unwrap_or_default();
    // A run in which no request succeeded has no latencies (null): not a parse error, the
    // failures are what the caller must see.
    let latency_ms = |pointer: &str| number(pointer).map_or(f64::NAN, |s| s * 1000.0);
    Ok(Outcome {
        rps: ok as f64 / number("/summary/total")?,
        p50_ms: latency_ms("/latencyPercentiles/p50"),
        p99_ms: latency_ms("/latencyPercentiles/p99"),
        p999_ms: latency_ms("/latencyPercentiles/p99.9"),
        ok,
        failed,
        response_bytes: number("/summary/sizePerRequest").unwrap_or_default(),
    })
}
