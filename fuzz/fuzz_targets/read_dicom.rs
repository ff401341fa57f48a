//! libFuzzer target: arbitrary bytes as a `.dcm` file through `cosam::io::read_with_limits`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("case.dcm");
    if std::fs::write(&path, data).is_ok() {
        let limits = cosam::io::Limits::default()
        .with_max_voxels(1 << 24)
        .with_max_memory_bytes(1 << 30);
        let _ = cosam::io::read_with_limits(&path, &limits);
    }
});
