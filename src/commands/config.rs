//! `config`: the effective configuration, secrets redacted, and where each value came from.

use std::path::Path;

use super::{Error, Report};
use crate::config::{Config, LoadEnv};
use crate::exit::{self, Code};

/// The annotated configuration, as printed.
#[derive(Debug, Clone)]
pub struct Annotated(pub String);

/// Loads the config at `path` (with its environment) for display.
pub fn command(path: &Path) -> Result<Annotated, Error> {
    Ok(Annotated(Config::load_annotated(
        path,
        &LoadEnv::from_process(),
    )?))
}

impl Code for Annotated {
    fn exit_code(&self) -> u8 {
        exit::OK
    }
}

impl Report for Annotated {
    fn print(&self) -> Result<(), Error> {
        print!("{}", self.0);
        Ok(())
    }
}
