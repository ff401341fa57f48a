//! libFuzzer target: arbitrary bytes as `.nii` and `.nii.gz` files through
//! `cosam::io::read_with_limits`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let limits = cosam::io::Limits::default()
        .with_max_voxels(1 << 24)
        .with_max_memory_bytes(1 << 30);
    // the same bytes as a plain and as a gzip-named file (the reader sniffs gzip)
    for name in ["case.nii", "case.nii.gz"] {
        let path = dir.path().join(name);
        if std::fs::write(&path, data).is_ok() {
            let _ = cosam::io::read_with_limits(&path, &limits);
        }
    }
});
