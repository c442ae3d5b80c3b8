//! One child process: spawned from `executableName`, fed JSON lines on stdin, read line
//! by line on stdout, its stderr drained into the log. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::protocol::{ChildLine, FromChild, parse_child_line};

/// How to start a child: the command line and its working directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// The working directory (the properties file's folder).
    pub working_dir: PathBuf,
}

impl ChildSpec {
    /// Splits `executableName` on blanks, as the Java daemon does (no shell, no
    /// quoting). A bare program name that names a file in `working_dir` runs that
    /// file (`sample_kclpy_app.py` next to the properties file), otherwise it is
    /// looked up on `PATH` (`python3 app.py`).
    pub fn from_executable_name(executable_name: &str, working_dir: &Path) -> Option<ChildSpec> {
        let mut command: Vec<String> = executable_name
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let program = command.first_mut()?;
        if !program.contains('/') && working_dir.join(&*program).is_file() {
            *program = format!("./{program}");
        }
        Some(ChildSpec {
            command,
            working_dir: working_dir.to_path_buf(),
        })
    }
}

impl ChildSpec {
    /// Checks that the program can be found (next to the properties file, by path, or
    /// on `PATH`) and is executable, so that a typo is one clear error at start rather
    /// than a failing child on every shard.
    pub fn check(&self, path_var: Option<&std::ffi::OsStr>) -> Result<(), String> {
        let program = self.command.first().ok_or("executableName is empty")?;
        let candidates: Vec<PathBuf> = if program.contains('/') {
            vec![self.working_dir.join(program)]
        } else {
            path_var
                .map(|p| std::env::split_paths(p).map(|d| d.join(program)).collect())
                .unwrap_or_default()
        };
        let executable = |p: &PathBuf| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if candidates.iter().any(executable) {
            return Ok(());
        }
        Err(if program.contains('/') {
            format!(
                "executableName: {program} is not an executable file (in {})",
                self.working_dir.display()
            )
        } else {
            format!(
                "executableName: {program} is neither a file next to the properties nor a program on PATH"
            )
        })
    }
}

/// Why talking to a child failed.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The program could not be started.
    #[error("cannot start {command:?} in {dir}: {source}")]
    Spawn {
        /// The command line.
        command: Vec<String>,
        /// The working directory.
        dir: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The child's stdin is closed (it exited or closed it).
    #[error("cannot write to the child: {0}")]
    Write(std::io::Error),
    /// The child's stdout ended: it exited.
    #[error("the child process exited (its stdout closed)")]
    Exited,
}

/// A running child. Dropping it kills the process.
pub struct ChildProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    messages: mpsc::Receiver<FromChild>,
    shard_id: String,
}

// A stderr fragment without a newline is logged once the child has been quiet this
// long, so logs without line ends (kclpy's sample writes them) still show up whole.
const STDERR_QUIET: Duration = Duration::from_millis(50);
// Upper bound on one stdout line (a protocol message) kept in memory.
const MAX_LINE: usize = 1 << 20;
// Upper bound on one logged stderr line.
const MAX_LOG_LINE: usize = 64 << 10;

impl ChildProcess {
    /// Starts the child for `shard_id`.
    pub fn spawn(spec: &ChildSpec, shard_id: &str) -> Result<ChildProcess, ChildError> {
        let spawn_error = |source| ChildError::Spawn {
            command: spec.command.clone(),
            dir: spec.working_dir.display().to_string(),
            source,
        };
        let (program, args) = spec
            .command
            .split_first()
            .ok_or_else(|| spawn_error(std::io::Error::other("empty command")))?;
        let mut child = Command::new(program)
            .args(args)
            .current_dir(&spec.working_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(shard = %shard_id, child_pid = pid, command = ?spec.command, "started child process");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, messages) = mpsc::channel(16);
        tokio::spawn(read_stdout(stdout, tx, shard_id.to_string()));
        tokio::spawn(drain_stderr(stderr, shard_id.to_string()));
        Ok(ChildProcess {
            stdin: child.stdin.take(),
            child,
            messages,
            shard_id: shard_id.to_string(),
        })
    }

    /// The OS process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Writes one line (the caller includes the newline).
    pub async fn send_line(&mut self, line: &str) -> Result<(), ChildError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| ChildError::Write(std::io::Error::other("stdin closed")))?;
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(ChildError::Write)?;
        stdin.flush().await.map_err(ChildError::Write)
    }

    /// The next protocol message; [`ChildError::Exited`] once stdout is closed.
    pub async fn next_message(&mut self) -> Result<FromChild, ChildError> {
        self.messages.recv().await.ok_or(ChildError::Exited)
    }

    /// Ends the child: closes its stdin (kclpy's loop ends at end of input), waits up
    /// to `grace` for it to exit, then kills it.
    pub async fn finish(mut self, grace: Duration) {
        self.stdin = None;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(shard = %self.shard_id, %status, "child process exited")
            }
            Ok(Err(e)) => {
                tracing::warn!(shard = %self.shard_id, error = %e, "waiting for the child failed")
            }
            Err(_) => {
                tracing::warn!(shard = %self.shard_id, ?grace, "child did not exit in time; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

async fn read_stdout(
    stdout: tokio::process::ChildStdout,
    tx: mpsc::Sender<FromChild>,
    shard_id: String,
) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(shard = %shard_id, error = %e, "reading the child's stdout failed");
                return;
            }
        }
        let line = String::from_utf8_lossy(&buf);
        match parse_child_line(&line) {
            ChildLine::Message(message) => {
                if tx.send(message).await.is_err() {
                    return;
                }
            }
            ChildLine::Blank => {}
            ChildLine::Other(text) => {
                let shown: String = text.chars().take(500).collect();
                tracing::info!(shard = %shard_id, line = %shown, "skipping a non-protocol line on the child's stdout")
            }
        }
    }
}

async fn drain_stderr(mut stderr: tokio::process::ChildStderr, shard_id: String) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let log = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        if !text.is_empty() {
            tracing::info!(target: "kcl_multilang::child_stderr", shard = %shard_id, "{text}");
        }
    };
    loop {
        let read = if pending.is_empty() {
            stderr.read(&mut chunk).await
        } else {
            match tokio::time::timeout(STDERR_QUIET, stderr.read(&mut chunk)).await {
                Ok(read) => read,
                Err(_) => {
                    log(&pending);
                    pending.clear();
                    continue;
                }
            }
        };
        match read {
            Ok(0) | Err(_) => {
                log(&pending);
                return;
            }
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    log(&pending[..end]);
                    pending.drain(..=end);
                }
                if pending.len() > MAX_LOG_LINE {
                    log(&pending);
                    pending.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_name_is_split_on_blanks_and_resolved_next_to_the_properties() {
        let dir = std::env::temp_dir().join(format!("kcl-multilang-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app.py"), "").unwrap();
        let spec = |name: &str| ChildSpec::from_executable_name(name, &dir).map(|s| s.command);
        assert_eq!(spec("app.py"), Some(vec!["./app.py".to_string()]));
        assert_eq!(
            spec("python3  app.py --x"),
            Some(vec!["python3".into(), "app.py".into(), "--x".into()])
        );
        assert_eq!(
            spec("/usr/bin/env x"),
            Some(vec!["/usr/bin/env".into(), "x".into()])
        );
        assert_eq!(spec("missing.py"), Some(vec!["missing.py".to_string()]));
        assert_eq!(spec("   "), None);

        // What check() finds: an executable next to the properties, or on PATH.
        use std::os::unix::fs::PermissionsExt;
        let path = std::ffi::OsString::from("/bin:/usr/bin");
        let check = |name: &str| {
            ChildSpec::from_executable_name(name, &dir)
                .unwrap()
                .check(Some(&path))
        };
        assert!(check("app.py").is_err(), "not executable");
        std::fs::set_permissions(dir.join("app.py"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        assert_eq!(check("app.py"), Ok(()));
        assert_eq!(check("sh -c true"), Ok(()));
        assert!(check("missing.py").unwrap_err().contains("missing.py"));
        assert!(
            check("./missing.py")
                .unwrap_err()
                .contains("not an executable file")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
