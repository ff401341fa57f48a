//! libFuzzer target: arbitrary bytes as `.nii` and `.nii.gz` files through
//! `cosam::io::read_with_limits` (see `fuzz/src/lib.rs` for the temporary folder and the
//! panic hook).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static PATHS: OnceLock<[PathBuf; 2]> = OnceLock::new();
    // the same bytes as a plain and as a gzip-named file (the reader sniffs gzip)
    let paths = PATHS.get_or_init(|| ["case.nii", "case.nii.gz"].map(cosam_fuzz::case_path));
    for path in paths {
        cosam_fuzz::read(path, data);
    }
});
