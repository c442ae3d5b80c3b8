//! A local AWS (`delivery-app local [--data-dir ...]`) as a separate process, so that a
//! run can restart it mid-flight: same loopback ports, same data folder, nothing lost.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kcl::aws::Endpoints;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::ScenarioError;

/// How long a start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `delivery-app local` process.
#[derive(Debug)]
pub struct LocalAwsProcess {
    exe: PathBuf,
    data_dir: Option<PathBuf>,
    log: PathBuf,
    kinesis_port: u16,
    dynamodb_port: u16,
    child: Option<Child>,
    restarts: usize,
    strict: Option<StrictNames>,
}

/// Strict mode of a local AWS process: the stream and application its IAM policies
/// (docs/iam-policy.md, one principal per command, see [`crate::principals`]) name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrictNames {
    /// `STREAM` in the policies.
    pub stream: String,
    /// `APP` in the policies.
    pub app: String,
}

impl LocalAwsProcess {
    /// Starts `exe local` on two free loopback ports, keeping its state in
    /// `data_dir` (in memory without) and appending its stderr to `log`; with `strict`,
    /// as `local --strict` (AWS's read, control-plane and write limits enforced, and each
    /// command's documented IAM policy for its principal, on these names).
    pub async fn start(
        exe: &Path,
        data_dir: Option<&Path>,
        log: &Path,
        strict: Option<StrictNames>,
    ) -> Result<Self, ScenarioError> {
        let mut process = LocalAwsProcess {
            exe: exe.to_path_buf(),
            data_dir: data_dir.map(Path::to_path_buf),
            log: log.to_path_buf(),
            kinesis_port: free_port()?,
            dynamodb_port: free_port()?,
            child: None,
            restarts: 0,
            strict,
        };
        process.spawn().await?;
        Ok(process)
    }

    /// Where it serves.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints::local(
            format!("http://127.0.0.1:{}", self.kinesis_port),
            format!("http://127.0.0.1:{}", self.dynamodb_port),
        )
    }

    /// Restarts so far.
    pub fn restarts(&self) -> usize {
        self.restarts
    }

    /// Stops the process (SIGTERM: it closes its stores) and starts it again on the same
    /// ports and data. Returns how long the services were down. An in-memory process
    /// cannot be restarted without losing everything, so that is refused.
    pub async fn restart(&mut self) -> Result<Duration, ScenarioError> {
        if self.data_dir.is_none() {
            return Err(
                "an in-memory local AWS cannot be restarted without losing its state".into(),
            );
        }
        let down = std::time::Instant::now();
        self.stop().await;
        let stopped = down.elapsed();
        self.spawn().await?;
        self.restarts += 1;
        tracing::info!(
            stop_ms = stopped.as_millis() as u64,
            total_ms = down.elapsed().as_millis() as u64,
            "local AWS restarted"
        );
        Ok(down.elapsed())
    }

    /// Stops the process: SIGTERM, SIGKILL after 30 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on the pid of a child we have not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    async fn spawn(&mut self) -> Result<(), ScenarioError> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.exe);
        command
            .arg("local")
            .args(["--kinesis-port", &self.kinesis_port.to_string()])
            .args(["--dynamodb-port", &self.dynamodb_port.to_string()]);
        if let Some(names) = &self.strict {
            command
                .arg("--strict")
                .args(["--stream", &names.stream, "--app", &names.app]);
        }
        if let Some(dir) = &self.data_dir {
            std::fs::create_dir_all(dir)?;
            command.arg("--data-dir").arg(dir);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        self.child = Some(child);
        // It prints one line when both services listen (a port still held by the
        // previous process makes it fail instead, and we say so).
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line.starts_with("local AWS ready") => {
                // Keep draining stdout so that the process never blocks on it, into the
                // log: what strict mode enforces, and its refusal counts at the stop.
                let mut log = std::fs::OpenOptions::new().append(true).open(&self.log)?;
                tokio::spawn(async move {
                    use std::io::Write;
                    let _ = writeln!(log, "{line}");
                    while let Ok(Some(line)) = lines.next_line().await {
                        let _ = writeln!(log, "{line}");
                    }
                });
                Ok(())
            }
            other => Err(format!(
                "local AWS did not start (see {}): {other:?}",
                self.log.display()
            )
            .into()),
        }
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
