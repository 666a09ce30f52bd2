//! Shell completions and man pages, generated from the clap definitions so they never drift
//! from `--help`. The packages ship their output (`.ci/run` generates it at packaging time).
//!
//! The definitions come in as a [`clap::Command`] (`Cli::command()`), so this module does not
//! depend on the CLI that calls it.

use std::io::Write;
use std::path::Path;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, mut command: clap::Command, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut command, "rc-audit-hec", out);
}

/// Writes the top-level man page (roff) to `out`.
pub fn man(command: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(command).render(out)
}

/// Writes `rc-audit-hec.1` and one page per subcommand (`rc-audit-hec-spool-status.1`, ...)
/// into `dir`.
pub fn man_pages(command: clap::Command, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command, dir)
}

/// `completions SHELL`: the script on stdout.
pub fn completions_command(shell: clap_complete::Shell, command: clap::Command) -> super::Done {
    completions(shell, command, &mut std::io::stdout());
    super::Done
}

/// `man [--dir DIR]`: the top-level page on stdout, or every page into `dir`.
pub fn man_command(
    command: clap::Command,
    dir: Option<&Path>,
) -> Result<super::Done, super::Error> {
    use anyhow::Context;
    match dir {
        None => man(command, &mut std::io::stdout()).map_err(|e| super::Error::Other(e.into()))?,
        Some(dir) => man_pages(command, dir)
            .with_context(|| format!("cannot write man pages into {}", dir.display()))?,
    }
    Ok(super::Done)
}
