//! Shared by the fuzz targets: a temporary folder made once per process, and a read that
//! treats only panics escaping `cosam::io::read_with_limits` as crashes.
//!
//! The readers take paths, so each input is written to a file in that folder (in
//! /dev/shm where it exists, so no disk I/O); a folder per input cost more than the read.
//!
//! `cosam::io` runs the third-party DICOM decoders under `catch_unwind` and turns their
//! panics into `ReadError::Corrupt` (`src/io/dicom/decode.rs`, `guard`). libfuzzer-sys's
//! panic hook aborts on every panic, caught or not, so it would report those handled
//! panics as crashes. [`install_panic_hook`] replaces it with a hook that only remembers
//! the message; [`read`] prints it and re-raises when a panic reaches the caller, and
//! libfuzzer-sys then aborts (a crash, with the input saved as an artifact).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Replaces the abort-on-every-panic hook (once per process).
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if let Ok(mut last) = LAST_PANIC.lock() {
                *last = info.to_string();
            }
        }));
    });
}

/// The temporary folder of this process.
pub fn case_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("cosam-fuzz-");
        if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .expect("temporary folder for the fuzz input")
    })
    .path()
}

/// `name` in [`case_dir`].
pub fn case_path(name: &str) -> PathBuf {
    case_dir().join(name)
}

/// Writes `data` to `path` and reads it with the fuzzing budget (2^24 voxels, 1 GiB).
/// Errors are the expected outcome; a panic that escapes the reader is re-raised.
pub fn read(path: &Path, data: &[u8]) {
    install_panic_hook();
    if std::fs::write(path, data).is_err() {
        return;
    }
    let limits = cosam::io::Limits::default()
        .with_max_voxels(1 << 24)
        .with_max_memory_bytes(1 << 30);
    let outcome = std::panic::catch_unwind(|| {
        let _ = cosam::io::read_with_limits(path, &limits);
    });
    if let Err(payload) = outcome {
        let message = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
        eprintln!("panic escaped cosam::io::read_with_limits: {message}");
        std::panic::resume_unwind(payload);
    }
}
