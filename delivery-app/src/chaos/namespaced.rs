//! `chaos --hosts` from the host's side: build the run's network namespaces, run the
//! chaos run itself inside the aws one (`ip netns exec`), and remove every namespace
//! afterwards, whatever happened: a normal end, a failed run, an error here, Ctrl-C
//! or SIGTERM (the [`Network`] guard's drop covers panics and early returns).

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;

use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use super::hosts::{Network, Topology};
use crate::scenario::ScenarioError;

/// How the inner run ended.
#[derive(Debug)]
pub enum Ended {
    /// It exited (its status says whether every check held).
    Exited(ExitStatus),
    /// A signal (named) came first; the run was killed.
    Interrupted(&'static str),
}

/// Checks what the hosts mode needs, in the order a user would fix it.
pub fn check_prerequisites() -> Result<(), ScenarioError> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "chaos --hosts needs root: it creates network namespaces, veth pairs \
                    and tc queues (run it as root, e.g. in CI)"
                .into(),
        );
    }
    let ip = std::process::Command::new("ip").arg("-V").output();
    let tc = std::process::Command::new("tc").arg("-V").output();
    if !matches!(ip, Ok(ref o) if o.status.success()) || tc.is_err() {
        return Err(
            "chaos --hosts needs iproute2 (`ip` and `tc`); install it (apt-get \
                    install iproute2)"
                .into(),
        );
    }
    Ok(())
}

/// Builds the namespaces of `topology`, runs `exe` with `args` inside the aws one, and
/// removes the namespaces at the end.
pub async fn run(
    topology: Topology,
    exe: &Path,
    args: Vec<OsString>,
) -> Result<Ended, ScenarioError> {
    check_prerequisites()?;
    let mut network = Network::create(topology)
        .map_err(|e| format!("chaos --hosts cannot create its network namespaces: {e}"))?;
    let ended = run_inside(&network.topology, exe, args).await;
    network.cleanup();
    ended
}

async fn run_inside(
    topology: &Topology,
    exe: &Path,
    args: Vec<OsString>,
) -> Result<Ended, ScenarioError> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &topology.aws_ns()])
        .arg(exe)
        .args(args)
        .kill_on_drop(true)
        .spawn()?;
    // Ends when the run exits or a signal comes; the run has its own deadlines.
    let signal = tokio::select! {
        status = child.wait() => return Ok(Ended::Exited(status?)),
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    // The workers and the local AWS inside the namespaces die with them (cleanup).
    let _ = child.kill().await;
    Ok(Ended::Interrupted(signal))
}
