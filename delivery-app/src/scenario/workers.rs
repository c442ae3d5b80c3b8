//! Statistics workers as separate processes (`delivery-app worker ...`): started,
//! crashed with SIGKILL, stopped with SIGTERM, restarted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::worker::WorkerFlags;

/// One worker process.
#[derive(Debug)]
pub struct WorkerProcess {
    /// Its worker id.
    pub id: String,
    child: Child,
}

impl WorkerProcess {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGKILL`) to the process.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        let Some(pid) = self.child.id() else {
            return Ok(()); // already reaped
        };
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        if unsafe { libc::kill(pid as i32, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Waits up to `deadline` for the process to exit.
    pub async fn wait(&mut self, deadline: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// SIGKILL, and wait (up to 10 s) until it is gone.
    pub async fn kill(&mut self) -> std::io::Result<()> {
        self.signal(libc::SIGKILL)?;
        self.wait(Duration::from_secs(10)).await;
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) -> Option<ExitStatus> {
        let _ = self.signal(libc::SIGTERM);
        if let Some(status) = self.wait(grace).await {
            return Some(status);
        }
        let _ = self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(5)).await
    }
}

/// How to start workers: the executable and the arguments every worker gets.
#[derive(Clone, Debug)]
pub struct WorkerLauncher {
    /// The `delivery-app` executable.
    pub exe: PathBuf,
    /// Arguments after `worker` common to all: endpoints and names.
    pub args: Vec<OsString>,
    /// The worker flags common to all (timings); each worker's id and audit log are
    /// added to them.
    pub flags: WorkerFlags,
    /// Where each worker's stderr goes (`<id>.log`); inherited when `None`.
    pub log_dir: Option<PathBuf>,
    /// Where each worker writes its audit log (`<id>.jsonl`); none when `None`.
    pub audit_dir: Option<PathBuf>,
    /// The access key id workers sign with (`AWS_ACCESS_KEY_ID`); inherited when `None`.
    pub access_key_id: Option<String>,
    /// Worker `wN` (and its restarts `wN-rM`) serves metrics at this port plus N.
    pub metrics_base: Option<std::net::SocketAddr>,
}

/// Where worker `id` serves its metrics, from `base`: port + N for `wN` and `wN-rM`,
/// so a restarted worker takes its predecessor's port. `None` for other ids.
pub fn metrics_addr(base: std::net::SocketAddr, id: &str) -> Option<std::net::SocketAddr> {
    let slot: u16 = id.strip_prefix('w')?.split('-').next()?.parse().ok()?;
    Some(std::net::SocketAddr::new(
        base.ip(),
        base.port().checked_add(slot)?,
    ))
}

impl WorkerLauncher {
    /// Starts worker `id`.
    pub fn spawn(&self, id: &str) -> std::io::Result<WorkerProcess> {
        self.spawn_in(id, &[])
    }

    /// Starts worker `id` through `prefix` (e.g. `ip netns exec NS`, which execs the
    /// worker, so the pid spawned is the worker's); directly when `prefix` is empty.
    pub fn spawn_in(&self, id: &str, prefix: &[String]) -> std::io::Result<WorkerProcess> {
        let stderr = match &self.log_dir {
            Some(dir) => Stdio::from(open_log(dir, id)?),
            None => Stdio::inherit(),
        };
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.exe);
                command
            }
            None => Command::new(&self.exe),
        };
        let flags = WorkerFlags {
            worker_id: Some(id.to_string()),
            audit_file: self
                .audit_dir
                .as_ref()
                .map(|dir| dir.join(format!("{id}.jsonl"))),
            metrics_addr: self.metrics_base.and_then(|base| metrics_addr(base, id)),
            ..self.flags.clone()
        };
        command
            .arg("worker")
            .args(&self.args)
            .args(flags.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        if let Some(key) = &self.access_key_id {
            command.env("AWS_ACCESS_KEY_ID", key);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        Ok(WorkerProcess {
            id: id.to_string(),
            child: command.spawn()?,
        })
    }
}

fn open_log(dir: &Path, id: &str) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{id}.log")))
}
