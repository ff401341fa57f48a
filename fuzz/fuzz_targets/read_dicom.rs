//! libFuzzer target: arbitrary bytes as a `.dcm` file through `cosam::io::read_with_limits`
//! (see `fuzz/src/lib.rs` for the temporary folder and the panic hook).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    cosam_fuzz::read(PATH.get_or_init(|| cosam_fuzz::case_path("case.dcm")), data);
});
