//! The `cosam` command; everything it does lives in the library, `cli` only parses,
//! calls and reports.

mod cli;

fn main() -> std::process::ExitCode {
    quiet_mesa();
    cli::run()
}

/// Mesa's software drivers print "XDG_RUNTIME_DIR is invalid or not set" on stderr when a
/// wgpu adapter is opened in a session without one (containers, CI, cron). Point it at a
/// private folder before any thread starts, so the batch's stderr holds only cosam's own
/// messages.
fn quiet_mesa() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let dir = std::env::temp_dir().join("cosam-runtime");
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        if std::fs::DirBuilder::new().mode(0o700).create(&dir).is_err() && !dir.is_dir() {
            return;
        }
    }
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
}
