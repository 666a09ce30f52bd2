//! Records the git commit (and whether the tree had uncommitted changes) for `--version`.
//!
//! A build outside a git checkout (a source tarball, `cargo install` from a `.crate`) has no
//! commit to record; it says so instead of failing. Distributions that build from a tarball can
//! name the commit with `RCAH_GIT_COMMIT`. (Not `RC_AUDIT_HEC_*`: that prefix is the config's, and
//! cargo also sets `rustc-env` variables for the tests, whose child processes would read it.)
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=RCAH_GIT_COMMIT");
    // Sources whose edits change the dirty flag (listing any path turns off cargo's default of
    // re-running on every file of the package, so name them all).
    for path in ["build.rs", "Cargo.toml", "Cargo.lock", "src"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let described = if let Ok(commit) = std::env::var("RCAH_GIT_COMMIT") {
        commit
    } else if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        // A new commit moves HEAD or the branch it points at; staging changes the index.
        for file in ["HEAD", "index"] {
            if let Some(p) = git(&["rev-parse", "--git-path", file]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            for file in [reference.as_str(), "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", file]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
        }
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        if dirty {
            format!("{commit}, dirty")
        } else {
            commit
        }
    } else {
        "git commit unknown: built outside a git checkout".to_string()
    };
    println!("cargo:rustc-env=RCAH_BUILD_DESCRIPTION={described}");
}
