//! What machine a run was on and when, for the report: absolute figures mean little without it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

/// The machine and the moment of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// UTC time the run started, RFC 3339.
    pub date: String,
    /// CPU model.
    pub cpu: String,
    /// Cores usable by this process.
    pub cores: usize,
    /// Kernel.
    pub kernel: String,
    /// One-minute load average when the run started: others' work shares these cores.
    pub load_average: f64,
}

impl Machine {
    /// Reads /proc.
    pub fn now() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| format!("Linux {}", s.trim()))
            .unwrap_or_default();
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or_default();
        Self {
            date: utc_now(),
            cpu,
            cores: crate::proc::cores(),
            kernel,
            load_average,
        }
    }

    /// One line for the report.
    pub fn line(&self) -> String {
        format!(
            "{} · {} × {} · {} · load average {:.1} at the start",
            self.date, self.cores, self.cpu, self.kernel, self.load_average
        )
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Status code of a plain-HTTP GET on loopback (admin ports), or an error.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let text = http_get(addr, path)?;
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path} on {addr}: no status line"))
}

/// The whole answer (status line, headers, body) of a plain-HTTP GET on loopback (admin ports).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}
