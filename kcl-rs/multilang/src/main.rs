//! `kcl-multilang`: the MultiLangDaemon command line.
//!
//!   kcl-multilang --properties-file sample.properties
//!   kcl-multilang -p sample.properties
//!   kcl-multilang sample.properties

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;
use kcl::aws::Clients;
use tokio_util::sync::CancellationToken;

/// Runs record processors in any language against a Kinesis stream, as the Java KCL's
/// MultiLangDaemon does, with kcl-rs underneath.
#[derive(Parser, Debug)]
#[command(name = "kcl-multilang", version)]
struct Args {
    /// The daemon's properties file.
    #[arg(short = 'p', long = "properties-file", value_name = "FILE")]
    properties_file: Option<PathBuf>,
    /// The properties file, given without the flag.
    #[arg(value_name = "FILE", conflicts_with = "properties_file")]
    file: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    let Some(path) = args.properties_file.or(args.file) else {
        eprintln!("usage: kcl-multilang --properties-file FILE");
        std::process::exit(2);
    };
    let config = match kcl_multilang::config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kcl-multilang: {}: {e}", path.display());
            std::process::exit(2);
        }
    };
    if let Err(e) = config.child.check(std::env::var_os("PATH").as_deref()) {
        eprintln!("kcl-multilang: {}: {e}", path.display());
        std::process::exit(2);
    }
    let clients = Clients::connect(&config.endpoints).await;
    let cancel = CancellationToken::new();
    tokio::spawn(stop_on_signal(cancel.clone()));
    if let Err(e) = kcl_multilang::daemon::run(config, &clients, cancel).await {
        eprintln!("kcl-multilang: {e}");
        std::process::exit(1);
    }
}

/// SIGTERM or Ctrl-C starts the graceful shutdown; a second one ends the process at
/// once (children see their stdin close).
async fn stop_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("interrupted: shutting down"),
    }
    cancel.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("kcl-multilang: second signal: exiting without waiting");
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(args: &[&str]) -> Option<PathBuf> {
        let args =
            Args::try_parse_from(std::iter::once("kcl-multilang").chain(args.iter().copied()))
                .ok()?;
        args.properties_file.or(args.file)
    }

    #[test]
    fn the_java_daemon_command_lines() {
        let table: &[(&[&str], Option<&str>)] = &[
            (&["--properties-file", "a.properties"], Some("a.properties")),
            (&["--properties-file=a.properties"], Some("a.properties")),
            (&["-p", "a.properties"], Some("a.properties")),
            (&["a.properties"], Some("a.properties")),
            (&[], None),
            (&["-p", "a.properties", "b.properties"], None),
            (&["--unknown"], None),
        ];
        for (args, expected) in table {
            assert_eq!(file(args), expected.map(PathBuf::from), "{args:?}");
        }
    }
}
