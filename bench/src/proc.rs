//! Processes the benchmarks start: pinned to a core, stopped when dropped, measured from /proc.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// The core the servers under test run on, and the core of the load generator (or client).
/// The machine has two; each side gets one of its own so they do not steal each other's time.
pub const SERVER_CORE: usize = 0;
/// See [`SERVER_CORE`].
pub const LOAD_CORE: usize = 1;

/// A command to run pinned to `core` with `taskset`, when the machine has more than one core
/// (a single-core machine runs it unpinned, and the report says so through `pinned`).
pub fn pinned(core: usize, program: &Path) -> Command {
    if cores() > core {
        let mut command = Command::new("taskset");
        command.arg("-c").arg(core.to_string()).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A child process that is killed (and reaped) when this is dropped, so an error in the middle
/// of a run never leaves a server behind.
pub struct Server {
    /// What it is, for messages.
    pub name: String,
    child: Child,
}

impl Server {
    /// Starts `command` with its output in `log`.
    pub fn start(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// The process id (taskset execs the program, so it is the server's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        status_field(self.pid(), "VmRSS")
    }

    /// CPU time used so far (user + system), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field in KiB from /proc/<pid>/status (VmRSS, VmHWM).
pub fn status_field(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("{path} has no {field}"))
}

/// User + system CPU seconds of a process, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces; the fields we need follow its closing parenthesis.
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} is not a stat line"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i - 3)
            .with_context(|| format!("{path} is short"))?
            .parse::<f64>()?)
    };
    // Linux reports in USER_HZ, which is 100 on every architecture we run on.
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(server: &mut Server, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        server.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not listen on {addr} within {timeout:?}",
                server.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
