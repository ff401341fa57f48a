//! examples/c/segment.c compiled with `cc` against include/cosam.h and libcosam.so, run on
//! the demo CT slice with the ct_liver box: it must exit 0, and its mask must be the
//! library's mask for the same pixels and box.
//!
//! Needs libcosam.so: `cargo build --release -p cosam-c` first (CI does).

use std::path::{Path, PathBuf};
use std::process::Command;

use cosam_lib::{BoxXyxy, Modality, Prompts, Segmenter, SegmenterOptions};

/// target/release (or debug): the folder holding this test's deps/ folder.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

#[test]
fn c_example_builds_runs_and_matches_the_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lib_dir = profile_dir();
    assert!(
        lib_dir.join("libcosam.so").is_file(),
        "{} has no libcosam.so: run cargo build --release -p cosam-c first",
        lib_dir.display()
    );
    let volume = cosam_lib::io::read(&root.join("data/demo/ct_abdomen_slice.dcm")).unwrap();
    let (rows, cols) = volume.slice_size();
    let pixels = volume
        .voxels()
        .index_axis(ndarray::Axis(0), 0)
        .index_axis(ndarray::Axis(2), 0)
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("slice.f32");
    let bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&raw, bytes).unwrap();

    let exe = dir.path().join("segment");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(root.join("examples/c/segment.c"))
        .arg("-L")
        .arg(&lib_dir)
        .arg("-lcosam")
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cc}: {e}"));
    assert!(
        status.success(),
        "{cc} failed to build examples/c/segment.c"
    );

    let b = [102.0, 194.0, 283.0, 379.0];
    let mask_out = dir.path().join("mask.u8");
    let out = Command::new(&exe)
        .arg(&raw)
        .args([rows.to_string(), cols.to_string(), "1".into()])
        .args(b.iter().map(|v| v.to_string()))
        .arg(&mask_out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "examples/c/segment.c exited {}",
        out.status
    );
    assert!(stdout.contains("click latency") && stdout.ends_with("ok\n"));

    let seg = Segmenter::new(SegmenterOptions::default()).unwrap();
    let embedded = seg
        .embed_pixels(pixels.view(), Some(Modality::Ct), None, None)
        .unwrap();
    let prompts = Prompts::from_box(BoxXyxy::new(b[0], b[1], b[2], b[3]).unwrap());
    let expected = seg.predict(&embedded, &prompts, None).unwrap();
    let from_c = std::fs::read(&mask_out).unwrap();
    assert_eq!(from_c.len(), rows * cols);
    let differing = from_c
        .iter()
        .zip(expected.mask.0.iter())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differing, 0,
        "{differing} pixels differ from the library's mask"
    );
}
