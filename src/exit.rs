//! The exit codes of the contract (ARCHITECTURE.md, "Commands and exit codes") and the one
//! mapping from a command's outcome to its code.
//!
//! A leaf: every command's report and every error that ends a command says which code it means
//! through [`Code`], so no command carries its own ladder of `if`s and no error is told apart by
//! downcasting at the edge ([`crate::commands::Error`]).

/// Success.
pub const OK: u8 = 0;
/// Runtime failure.
pub const FAILURE: u8 = 1;
/// Usage error (clap's own, and a range or account name `backfill` cannot use).
pub const USAGE: u8 = 2;
/// `once` or `backfill` finished but records remain spooled (`EX_TEMPFAIL`).
pub const TEMPFAIL: u8 = 75;
/// Bad configuration (`EX_CONFIG`): systemd's `RestartPreventExitStatus=78` stops retrying.
pub const CONFIG: u8 = 78;

/// What a command's outcome (a report or the error that ended it) means for the exit code.
pub trait Code {
    /// The process exit code.
    fn exit_code(&self) -> u8;
}

/// How bad an outcome is, in the order a command reports it: a configuration problem outranks
/// a runtime failure, which outranks records left spooled. Commands collect what happened
/// and take the worst ([`Outcome::worst`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Outcome {
    /// Everything done.
    #[default]
    Ok,
    /// Finished, but records remain spooled (75).
    RecordsRemain,
    /// Something failed at run time (1).
    Failed,
    /// A configuration problem that retrying will not fix (78).
    Config,
}

impl Outcome {
    /// The worst of `outcomes` (`Ok` when empty).
    pub fn worst(outcomes: impl IntoIterator<Item = Outcome>) -> Outcome {
        outcomes.into_iter().max().unwrap_or_default()
    }
}

impl Code for Outcome {
    fn exit_code(&self) -> u8 {
        match self {
            Outcome::Ok => OK,
            Outcome::RecordsRemain => TEMPFAIL,
            Outcome::Failed => FAILURE,
            Outcome::Config => CONFIG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_outcome_decides_the_code() {
        use Outcome::*;
        assert_eq!(Outcome::worst([]).exit_code(), OK);
        assert_eq!(Outcome::worst([Ok, RecordsRemain]).exit_code(), TEMPFAIL);
        assert_eq!(Outcome::worst([RecordsRemain, Failed]).exit_code(), FAILURE);
        assert_eq!(Outcome::worst([Failed, Config, Ok]).exit_code(), CONFIG);
    }
}
