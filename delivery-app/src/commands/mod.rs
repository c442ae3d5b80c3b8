//! One module per subcommand.

pub mod local;
pub mod smoke;

/// Errors of a subcommand, printed as one line.
pub type CommandError = Box<dyn std::error::Error + Send + Sync>;
