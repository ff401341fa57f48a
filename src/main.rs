//! The `cosam` command; everything it does lives in the library, `cli` only parses,
//! calls and reports.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
