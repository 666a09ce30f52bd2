//! Shell completions and man pages, generated from the clap definitions so they never drift
//! from `--help`. The packages ship their output (`.ci/run` generates it at packaging time).

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;

use crate::cli::Cli;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "rc-audit-hec", out);
}

/// Writes the top-level man page (roff) to `out`.
pub fn man(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

/// Writes `rc-audit-hec.1` and one page per subcommand (`rc-audit-hec-spool-status.1`, ...)
/// into `dir`.
pub fn man_pages(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}
