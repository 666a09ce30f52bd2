//! The commands, one file each. A command returns a typed report that prints itself (data on
//! stdout, summaries on stderr) and knows its exit code ([`Report`], [`Code`]); the error that
//! ends a command is an [`Error`], whose variant decides its code. `cli` only parses and
//! dispatches; the exit codes themselves are [`crate::exit`]'s.

pub mod actions;
pub mod backfill;
pub mod check;
pub mod config;
pub mod demo;
pub mod dry_run;
pub mod dynamodb;
pub mod healthcheck;
pub mod once;
pub mod packaging;
pub mod run;
pub mod spool;

use crate::backfill::BackfillError;
use crate::config::{Config, ConfigError, LoadEnv};
use crate::exit::{self, Code};
use crate::pipeline::AppError;
use crate::spool::SpoolError;
use dry_run::DryRunError;

/// What a command did: printed where its contract says, then its exit code ends the process.
pub trait Report: Code {
    /// Writes the report (stdout and/or stderr).
    fn print(&self) -> Result<(), Error>;
}

/// A command that has nothing to say beyond success (it printed as it went, or prints nothing).
#[derive(Debug, Clone, Copy, Default)]
pub struct Done;

impl Code for Done {
    fn exit_code(&self) -> u8 {
        exit::OK
    }
}

impl Report for Done {
    fn print(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// The error that ended a command, classified by what it means for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration: exit 78.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A range or account name the command cannot use: exit 2, like clap's own usage errors.
    #[error(transparent)]
    Usage(#[from] BackfillError),
    /// The spool: exit 78 when this user cannot use the state directory (a setup problem,
    /// which systemd's `RestartPreventExitStatus=78` stops retrying), else 1.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// Starting the pipeline failed (the spool's cause is classified as [`Error::Spool`]).
    #[error(transparent)]
    App(#[from] AppError),
    /// The dry run could not read the spool or start (classified like the spool's error).
    #[error(transparent)]
    DryRun(#[from] DryRunError),
    /// Anything else: exit 1.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl Code for Error {
    fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Usage(_) => exit::USAGE,
            Error::Spool(e)
            | Error::App(AppError::Spool(e))
            | Error::DryRun(DryRunError::Spool(e) | DryRunError::App(AppError::Spool(e))) => {
                spool_error_code(e)
            }
            Error::App(_) | Error::DryRun(_) | Error::Other(_) => exit::FAILURE,
        }
    }
}

/// 78 when the state directory is unusable by this user (permissions, a read-only file
/// system): a setup problem, not a passing failure. Otherwise 1.
fn spool_error_code(e: &SpoolError) -> u8 {
    let unusable = match e {
        SpoolError::Dir { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::ReadOnlyFilesystem
                | std::io::ErrorKind::NotADirectory
        ),
        SpoolError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => matches!(
            f.code,
            rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen
        ),
        _ => false,
    };
    if unusable {
        exit::CONFIG
    } else {
        exit::FAILURE
    }
}

/// Loads the config with its secrets and starts logging as it says.
pub fn load_config(path: &std::path::Path) -> Result<Config, Error> {
    let config = Config::load(path, &LoadEnv::from_process())?;
    crate::telemetry::init_logging(config.log.format, &config.log.level);
    Ok(config)
}

/// Prints `report` and returns its exit code.
pub fn finish(report: &dyn Report) -> Result<u8, Error> {
    report.print()?;
    Ok(report.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unusable_dir() -> SpoolError {
        SpoolError::Dir {
            dir: "/state".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        }
    }

    #[test]
    fn each_error_kind_means_its_exit_code() {
        let usage = crate::backfill::parse_time("--from", "bogus", chrono::Utc::now())
            .expect_err("not a time");
        assert_eq!(Error::Usage(usage).exit_code(), exit::USAGE);
        assert_eq!(Error::Spool(unusable_dir()).exit_code(), exit::CONFIG);
        assert_eq!(
            Error::App(AppError::Spool(unusable_dir())).exit_code(),
            exit::CONFIG
        );
        assert_eq!(
            Error::DryRun(DryRunError::Spool(unusable_dir())).exit_code(),
            exit::CONFIG
        );
        let busy = SpoolError::Dir {
            dir: "/state".into(),
            source: std::io::Error::from(std::io::ErrorKind::Interrupted),
        };
        assert_eq!(Error::Spool(busy).exit_code(), exit::FAILURE);
        assert_eq!(
            Error::App(AppError::Http("tls".into())).exit_code(),
            exit::FAILURE
        );
        assert_eq!(
            Error::Other(anyhow::anyhow!("anything")).exit_code(),
            exit::FAILURE
        );
    }
}
