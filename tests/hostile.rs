//! Hostile and malformed inputs: every crafted file is generated here, in a
//! temp folder (bombs are never committed), and must give a clear per-input error or a
//! warning, never an abort, unbounded memory, a write outside -o or a silent wrong answer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cosam::io::{self, Limits, ReadError};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use serde_json::Value;

use crate::util::{cosam, demo, report, root, text};

// ---------------------------------------------------------------- NIfTI crafting

/// A little-endian NIfTI-1 single-file header: `dims` voxels of `datatype`/`bitpix`,
/// 1 mm voxels, an identity sform (code 1), no qform, data at `vox_offset`.
fn nifti_header(dims: [u16; 3], datatype: i16, bitpix: i16, vox_offset: f32) -> Vec<u8> {
    let mut h = vec![0u8; 348];
    put_i32(&mut h, 0, 348);
    let dim = [
        3i16,
        dims[0] as i16,
        dims[1] as i16,
        dims[2] as i16,
        1,
        1,
        1,
        1,
    ];
    for (i, d) in dim.iter().enumerate() {
        put_i16(&mut h, 40 + 2 * i, *d);
    }
    put_i16(&mut h, 70, datatype);
    put_i16(&mut h, 72, bitpix);
    for (i, p) in [1.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
        .iter()
        .enumerate()
    {
        put_f32(&mut h, 76 + 4 * i, *p);
    }
    put_f32(&mut h, 108, vox_offset);
    put_f32(&mut h, 112, 1.0); // scl_slope
    h[123] = 2; // xyzt_units: mm
    put_i16(&mut h, 252, 0); // qform_code
    put_i16(&mut h, 254, 1); // sform_code
    set_sform(
        &mut h,
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ],
    );
    h[344..348].copy_from_slice(b"n+1\0");
    h
}

fn set_sform(h: &mut [u8], rows: [[f32; 4]; 3]) {
    for (r, row) in rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put_f32(h, 280 + 16 * r + 4 * c, *v);
        }
    }
}

/// qform_code 1 with quaternion (b, c, d) and offset 0.
fn set_qform(h: &mut [u8], b: f32, c: f32, d: f32) {
    put_i16(h, 252, 1);
    put_f32(h, 256, b);
    put_f32(h, 260, c);
    put_f32(h, 264, d);
}

fn put_i16(h: &mut [u8], at: usize, v: i16) {
    h[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_i32(h: &mut [u8], at: usize, v: i32) {
    h[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(h: &mut [u8], at: usize, v: f32) {
    h[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Header, then zeros (the extension flag and any gap) up to `vox_offset`, then `data`.
fn nifti_file(header: &[u8], vox_offset: usize, data: &[u8]) -> Vec<u8> {
    let mut f = header.to_vec();
    f.resize(vox_offset.max(352), 0);
    f.extend_from_slice(data);
    f
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A .nii.gz whose header claims 1024x1024x1000 uint8 and whose body is `body_mib` MiB of
/// zeros (1000 for the real 1 GB bomb: about 1 MB on disk).
fn write_gzip_bomb(path: &Path, body_mib: usize) {
    let file = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gz.write_all(&nifti_file(
        &nifti_header([1024, 1024, 1000], 2, 8, 352.0),
        352,
        &[],
    ))
    .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..body_mib {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
}

/// A 2 MB .nii whose extension flag is set and whose first extension declares size 0,
/// followed by a long body.
fn zero_size_extension() -> Vec<u8> {
    let offset = 352 + (2 << 20);
    let mut f = nifti_file(
        &nifti_header([64, 64, 4], 2, 8, offset as f32),
        offset,
        &[7; 64 * 64 * 4],
    );
    f[348] = 1; // extension flag
                // esize 0, ecode 0: already zeros
    f
}

/// 8x6x3 int16 voxels numbered in file order (i fastest), as a file with `vox_offset`
/// and junk between the header and the voxels.
fn numbered_nifti(vox_offset: usize) -> (Vec<u8>, Vec<f32>) {
    let n = 8 * 6 * 3;
    let values: Vec<f32> = (0..n).map(|v| (v * 3) as f32).collect();
    let data: Vec<u8> = values
        .iter()
        .flat_map(|&v| (v as i16).to_le_bytes())
        .collect();
    let mut f = nifti_file(
        &nifti_header([8, 6, 3], 4, 16, vox_offset as f32),
        vox_offset,
        &data,
    );
    for b in &mut f[352..vox_offset] {
        *b = 0x7F;
    }
    f[348..352].copy_from_slice(&[0, 0, 0, 0]);
    (f, values)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err(path: &Path) -> ReadError {
    match io::read(path) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------- DICOM crafting

fn mr_small() -> PathBuf {
    root().join("tests/fixtures/io/dicom/MR_small.dcm")
}

/// MR_small (64x64, one frame) with `edit` applied, saved as `dir/name`.
fn edited_dicom(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut dicom_object::DefaultDicomObject),
) -> PathBuf {
    let mut obj = dicom_object::open_file(mr_small()).unwrap();
    edit(&mut obj);
    let p = dir.join(name);
    obj.write_to_file(&p).unwrap();
    p
}

fn put_ds(obj: &mut dicom_object::DefaultDicomObject, tag: dicom_core::Tag, value: &str) {
    obj.put(DataElement::new(tag, VR::DS, PrimitiveValue::from(value)));
}

// ---------------------------------------------------------------- reader tests

/// Item 1: the header's claim (1024x1024x1000 uint8 = 12 GB through the pipeline) is
/// refused before one byte of the body is inflated.
#[test]
fn gzip_bomb_nifti_is_refused_from_its_header() {
    let tmp = tempfile::tempdir().unwrap();
    let bomb = tmp.path().join("bomb.nii.gz");
    write_gzip_bomb(&bomb, 16);
    let t0 = Instant::now();
    let e = err(&bomb);
    assert!(matches!(e, ReadError::TooLarge { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("bomb.nii.gz") && msg.contains("memory budget"),
        "{msg}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    // a smaller budget refuses what the default accepts
    let small = write(
        tmp.path(),
        "small.nii",
        &nifti_file(
            &nifti_header([64, 64, 64], 2, 8, 352.0),
            352,
            &[1; 64 * 64 * 64],
        ),
    );
    assert!(io::read(&small).is_ok());
    let tight = Limits::default().with_max_memory_bytes(1 << 20);
    assert!(matches!(
        io::read_with_limits(&small, &tight),
        Err(ReadError::TooLarge { .. })
    ));
}

/// Item 2: a zero-size extension is an error naming it, not an endless loop of entries.
#[test]
fn zero_size_nifti_extension_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(tmp.path(), "zero_ext.nii", &zero_size_extension());
    let msg = err(&p).to_string();
    assert!(
        msg.contains("zero_ext.nii") && msg.contains("extension 1 declares 0 bytes"),
        "{msg}"
    );
    // a well-formed 32-byte extension is skipped and the voxels read after it
    let mut ok = nifti_file(&nifti_header([4, 4, 1], 2, 8, 384.0), 384, &[9; 16]);
    ok[348] = 1;
    put_i32(&mut ok, 352, 32);
    put_i32(&mut ok, 356, 4);
    let p = write(tmp.path(), "one_ext.nii", &ok);
    let v = io::read(&p).unwrap();
    assert!(v.voxels().iter().all(|&x| x == 9.0));
    // more extensions than the budget allows
    let count = 40;
    let offset = 352 + 16 * count;
    let mut many = nifti_file(
        &nifti_header([4, 4, 1], 2, 8, offset as f32),
        offset,
        &[9; 16],
    );
    many[348] = 1;
    for k in 0..count {
        put_i32(&mut many, 352 + 16 * k, 16);
    }
    let p = write(tmp.path(), "many_ext.nii", &many);
    assert!(io::read(&p).is_ok());
    let mut few = Limits::default();
    few.max_extensions = 8;
    assert!(matches!(
        io::read_with_limits(&p, &few),
        Err(ReadError::TooLarge { .. })
    ));
}

/// Item 3: NumberOfFrames = 2^31 - 1 is refused from the header, before per-frame
/// storage exists; alone and in a folder.
#[test]
fn dicom_with_two_billion_frames_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("series");
    std::fs::create_dir(&dir).unwrap();
    let p = edited_dicom(&dir, "frames.dcm", |o| {
        o.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("2147483647"),
        ));
    });
    let t0 = Instant::now();
    let e = err(&p);
    assert!(matches!(e, ReadError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("2147483647 frames"), "{e}");
    let all = io::read_inputs(&dir, &Limits::default());
    assert_eq!(all.len(), 1);
    assert!(matches!(all[0], Err(ReadError::TooLarge { .. })));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// Item 7: vox_offset is honoured in .nii.gz as in .nii (nibabel reads from it); NaN,
/// negative and fractional offsets are refused.
#[test]
fn nifti_voxels_are_read_from_vox_offset_gzip_or_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, values) = numbered_nifti(1024);
    for (name, bytes) in [("off.nii", file.clone()), ("off.nii.gz", gzip(&file))] {
        let v = io::read(&write(tmp.path(), name, &bytes)).unwrap();
        assert_eq!(v.voxels().dim(), (3, 6, 8, 1), "{name}");
        let got: Vec<f32> = v.voxels().iter().copied().collect();
        assert_eq!(got, values, "{name}: voxels not read from byte 1024");
    }
    for bad in [f32::NAN, -16.0, 400.5, f32::INFINITY] {
        let mut f = file.clone();
        put_f32(&mut f, 108, bad);
        let p = write(tmp.path(), "bad_offset.nii.gz", &gzip(&f));
        let msg = err(&p).to_string();
        assert!(msg.contains("vox_offset"), "{bad}: {msg}");
    }
}

/// Item 11: a singular sform or a non-unit quaternion is never used or written back; the
/// other transform is used with a warning, and without one the file is refused.
#[test]
fn unusable_sform_or_qform_is_refused_or_replaced_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = [5u8; 4 * 4 * 2];
    let rank1 = [
        [1.0, 1.0, 1.0, 0.0],
        [2.0, 2.0, 2.0, 0.0],
        [3.0, 3.0, 3.0, 0.0],
    ];
    // singular sform, no qform: refused
    let mut h = nifti_header([4, 4, 2], 2, 8, 352.0);
    set_sform(&mut h, rank1);
    let p = write(tmp.path(), "rank1.nii", &nifti_file(&h, 352, &data));
    let msg = err(&p).to_string();
    assert!(msg.contains("singular (rank 1)"), "{msg}");
    // singular sform, valid qform (identity): qform used, warned, sform not written back
    set_qform(&mut h, 0.0, 0.0, 0.0);
    let p = write(tmp.path(), "rank1_qform.nii", &nifti_file(&h, 352, &data));
    let v = io::read(&p).unwrap();
    assert!(
        v.warnings()
            .iter()
            .any(|w| w.contains("singular") && w.contains("qform")),
        "{:?}",
        v.warnings()
    );
    assert_eq!(v.affine().apply([1.0, 2.0, 1.0]), [1.0, 2.0, 1.0]);
    let out = tmp.path().join("mask.nii.gz");
    io::write_mask_nifti(&out, &ndarray::Array3::ones((2, 4, 4)), &v).unwrap();
    let written = io::nifti::read_header(&out).unwrap();
    assert_eq!(written.sform_code, 0, "the singular sform was written back");
    assert_eq!(io::read(&out).unwrap().affine(), v.affine());
    // non-unit quaternion, qform only: refused
    let mut h = nifti_header([4, 4, 2], 2, 8, 352.0);
    put_i16(&mut h, 254, 0);
    set_qform(&mut h, 0.9, 0.9, 0.0);
    let p = write(
        tmp.path(),
        "long_quaternion.nii",
        &nifti_file(&h, 352, &data),
    );
    let msg = err(&p).to_string();
    assert!(msg.contains("quaternion"), "{msg}");
    // with a valid sform beside it: the sform is used, the qform dropped on write
    put_i16(&mut h, 254, 1);
    let p = write(
        tmp.path(),
        "long_quaternion_sform.nii",
        &nifti_file(&h, 352, &data),
    );
    let v = io::read(&p).unwrap();
    assert!(
        v.warnings().iter().any(|w| w.contains("quaternion")),
        "{:?}",
        v.warnings()
    );
    io::write_mask_nifti(&out, &ndarray::Array3::ones((2, 4, 4)), &v).unwrap();
    assert_eq!(io::nifti::read_header(&out).unwrap().qform_code, 0);
}

/// Where cosam read a header differently from nibabel, silently (found reading the
/// reader): voxels decoded in sizeof_hdr's byte order when the rest of the header is in
/// the other; a negative pixdim mirroring the qform; a transform code outside NIfTI's
/// 0-5 trusted; a single slice with a qform and pixdim[3] 0 refused.
#[test]
fn nifti_headers_are_read_as_nibabel_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = [5u8; 4 * 4 * 2];
    let identity_qform_only = || {
        let mut h = nifti_header([4, 4, 2], 2, 8, 352.0);
        put_i16(&mut h, 254, 0);
        set_qform(&mut h, 0.0, 0.0, 0.0);
        h
    };
    // a big-endian header and voxels behind a little-endian sizeof_hdr
    let mut h = nifti_header([4, 4, 2], 4, 16, 352.0);
    let i16_at = (40..56).step_by(2).chain([70, 72, 252, 254]);
    let f32_at = (76..120).step_by(4).chain((256..328).step_by(4));
    for at in i16_at {
        h[at..at + 2].reverse();
    }
    for at in f32_at {
        h[at..at + 4].reverse();
    }
    let values: Vec<i16> = (0..32).map(|i| 100 + 7 * i).collect();
    let voxels: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let p = write(tmp.path(), "mixed_order.nii", &nifti_file(&h, 352, &voxels));
    let v = io::read(&p).unwrap();
    let read: Vec<f32> = v.voxels().iter().copied().collect();
    let mut expected: Vec<f32> = values.iter().map(|&v| f32::from(v)).collect();
    expected.sort_by(f32::total_cmp);
    let mut sorted = read.clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, expected, "voxels decoded in the wrong byte order");
    // a negative pixdim scales, it does not mirror
    let mut h = identity_qform_only();
    put_f32(&mut h, 80, -2.0);
    let v = io::read(&write(
        tmp.path(),
        "negative_pixdim.nii",
        &nifti_file(&h, 352, &data),
    ))
    .unwrap();
    assert_eq!(v.affine().apply([1.0, 0.0, 0.0]), [2.0, 0.0, 0.0]);
    // sform_code 7 is no transform code: the identity qform is used, with a warning
    let mut h = identity_qform_only();
    put_i16(&mut h, 254, 7);
    set_sform(
        &mut h,
        [
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, -1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ],
    );
    let v = io::read(&write(
        tmp.path(),
        "sform_code_7.nii",
        &nifti_file(&h, 352, &data),
    ))
    .unwrap();
    assert_eq!(v.affine().apply([1.0, 2.0, 1.0]), [1.0, 2.0, 1.0]);
    assert!(
        v.warnings().iter().any(|w| w.contains("sform_code 7")),
        "{:?}",
        v.warnings()
    );
    // one slice, a qform and pixdim[3] 0: read at 1 mm, with a warning
    let mut h = identity_qform_only();
    put_i16(&mut h, 46, 1);
    put_f32(&mut h, 88, 0.0);
    let v = io::read(&write(
        tmp.path(),
        "flat.nii",
        &nifti_file(&h, 352, &data[..16]),
    ))
    .unwrap();
    assert_eq!(v.slices(), 1);
    assert!(
        v.warnings().iter().any(|w| w.contains("pixdim[3] is 0")),
        "{:?}",
        v.warnings()
    );
}

/// Item 14: complex voxels and a datatype/bitpix disagreement are "unsupported", named,
/// without a caught panic's text.
#[test]
fn complex_and_inconsistent_nifti_are_unsupported_not_malformed() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, datatype, bitpix, what) in [
        ("complex64.nii", 32i16, 64i16, "complex"),
        ("float_bitpix8.nii", 16, 8, "bitpix is 8"),
    ] {
        let h = nifti_header([4, 4, 1], datatype, bitpix, 352.0);
        let p = write(tmp.path(), name, &nifti_file(&h, 352, &[0; 4 * 4 * 8]));
        let e = err(&p);
        assert!(matches!(e, ReadError::Unsupported { .. }), "{name}: {e}");
        let msg = e.to_string();
        assert!(
            msg.contains("unsupported input") && msg.contains(what),
            "{msg}"
        );
        assert!(
            !msg.contains("malformed") && !msg.contains("panic"),
            "{msg}"
        );
    }
}

/// Item 17: a NaN affine is named as such, not as "a zero axis".
#[test]
fn nan_affine_is_reported_as_nan() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = nifti_header([4, 4, 2], 2, 8, 352.0);
    set_sform(
        &mut h,
        [
            [f32::NAN, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0],
        ],
    );
    let p = write(tmp.path(), "nan_sform.nii", &nifti_file(&h, 352, &[1; 32]));
    let msg = err(&p).to_string();
    assert!(msg.contains("NaN") && !msg.contains("zero axis"), "{msg}");
}

/// Item 12: missing or non-positive PixelSpacing and non-orthogonal orientation are
/// warned about, not silently turned into 1 mm or a shear.
#[test]
fn untrustworthy_dicom_geometry_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let warnings = |p: &Path| io::read(p).unwrap().warnings().to_vec();
    for (name, spacing) in [
        ("zero.dcm", Some("0\\0")),
        ("neg.dcm", Some("-0.5\\0.5")),
        ("none.dcm", None),
    ] {
        let p = edited_dicom(tmp.path(), name, |o| match spacing {
            Some(s) => put_ds(o, tags::PIXEL_SPACING, s),
            None => {
                o.remove_element(tags::PIXEL_SPACING);
            }
        });
        let w = warnings(&p);
        assert!(
            w.iter()
                .any(|w| w.contains("PixelSpacing") && w.contains("1 mm assumed")),
            "{name}: {w:?}"
        );
    }
    let p = edited_dicom(tmp.path(), "sheared.dcm", |o| {
        put_ds(
            o,
            tags::IMAGE_ORIENTATION_PATIENT,
            "1\\0\\0\\0.5\\0.8660254\\0",
        );
    });
    let w = warnings(&p);
    assert!(
        w.iter()
            .any(|w| w.contains("ImageOrientationPatient") && w.contains("60.00 degrees")),
        "{w:?}"
    );
    // the untouched file has no such warning
    assert!(warnings(&mr_small()).is_empty());
}

/// Copies of MR_small at `positions` (ImagePositionPatient, mm), one file each in `dir`,
/// with `edit(k, file)` applied.
fn mr_series(
    dir: &Path,
    positions: &[[f64; 3]],
    edit: impl Fn(usize, &mut dicom_object::DefaultDicomObject),
) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, p) in positions.iter().enumerate() {
        edited_dicom(dir, &format!("s{k}.dcm"), |o| {
            put_ds(
                o,
                tags::IMAGE_POSITION_PATIENT,
                &format!("{}\\{}\\{}", p[0], p[1], p[2]),
            );
            put_ds(o, tags::IMAGE_ORIENTATION_PATIENT, "1\\0\\0\\0\\1\\0");
            o.put(DataElement::new(
                tags::SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(format!("1.2.826.0.1.3680043.2.1125.{k}")),
            ));
            edit(k, o);
        });
    }
}

/// Geometry the volume's affine cannot draw was taken silently (found reading the
/// assembly): slices beside the line through them, slices turned in their plane against
/// each other, and files of different pixel spacing are now warned about. A DICOM image
/// without position and orientation keeps its stored pixel order (DICOM's default axes),
/// where a RAS grid turned it, its PNG mask and overlay by 180 degrees. Under gantry tilt
/// a voxel's volume is the affine's determinant, not the product of the spacings (+15%
/// at 30 degrees). DICOM SEG frames take the position of the image they reference.
#[test]
fn dicom_geometry_the_affine_cannot_draw_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let line: Vec<[f64; 3]> = (0..5).map(|k| [0.0, 0.0, 2.0 * k as f64]).collect();
    let warnings = |dir: &str| {
        io::read(&tmp.path().join(dir))
            .unwrap()
            .warnings()
            .join("; ")
    };
    mr_series(&tmp.path().join("straight"), &line, |_, _| {});
    assert_eq!(warnings("straight"), "");
    let zigzag: Vec<[f64; 3]> = line
        .iter()
        .enumerate()
        .map(|(k, p)| [10.0 * (k % 2) as f64, p[1], p[2]])
        .collect();
    mr_series(&tmp.path().join("zigzag"), &zigzag, |_, _| {});
    assert!(
        warnings("zigzag").contains("slice positions stray up to 10.000 mm"),
        "{}",
        warnings("zigzag")
    );
    mr_series(&tmp.path().join("turned"), &line, |k, o| {
        if k % 2 == 1 {
            put_ds(o, tags::IMAGE_ORIENTATION_PATIENT, "-1\\0\\0\\0\\-1\\0");
        }
    });
    assert!(
        warnings("turned").contains("turned in their plane"),
        "{}",
        warnings("turned")
    );
    mr_series(&tmp.path().join("spacing"), &line, |k, o| {
        if k >= 2 {
            put_ds(o, tags::PIXEL_SPACING, "0.625\\0.625");
        }
    });
    assert!(
        warnings("spacing").contains("pixel spacing differs"),
        "{}",
        warnings("spacing")
    );
    // 30 degrees of tilt: each slice 2 mm along the normal and 1.1547 mm along y
    let tilted: Vec<[f64; 3]> = (0..4)
        .map(|k| [0.0, 1.154_700_5 * k as f64, 2.0 * k as f64])
        .collect();
    mr_series(&tmp.path().join("tilted"), &tilted, |_, _| {});
    let v = io::read(&tmp.path().join("tilted")).unwrap();
    let expected = 0.3125 * 0.3125 * 2.0;
    assert!(
        (v.voxel_volume_mm3() - expected).abs() < 1e-6,
        "{} mm^3",
        v.voxel_volume_mm3()
    );
    // uneven spacing (warned): each SEG frame sits at the image it references, not on the
    // mean grid (8 mm away at the slice at z = 4)
    let uneven: Vec<[f64; 3]> = [0.0, 1.0, 2.0, 3.0, 4.0, 15.0]
        .iter()
        .map(|&z| [0.0, 0.0, z])
        .collect();
    mr_series(&tmp.path().join("uneven"), &uneven, |_, _| {});
    let v = io::read(&tmp.path().join("uneven")).unwrap();
    let seg = tmp.path().join("uneven.seg.dcm");
    let mask = ndarray::Array3::<u8>::ones((6, 64, 64));
    io::write_dicom_seg(&seg, &mask, &v, &io::SegInfo::default()).unwrap();
    let obj = dicom_object::open_file(&seg).unwrap();
    let frames = obj
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let z: Vec<f64> = frames
        .iter()
        .map(|f| {
            let plane = &f
                .element(tags::PLANE_POSITION_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            plane
                .element(tags::IMAGE_POSITION_PATIENT)
                .unwrap()
                .to_multi_float64()
                .unwrap()[2]
        })
        .collect();
    assert_eq!(z, [0.0, 1.0, 2.0, 3.0, 4.0, 15.0]);
    // no position or orientation: DICOM's default axes, the column index toward the left
    let p = edited_dicom(tmp.path(), "no_geometry.dcm", |o| {
        o.remove_element(tags::IMAGE_POSITION_PATIENT);
        o.remove_element(tags::IMAGE_ORIENTATION_PATIENT);
    });
    let v = io::read(&p).unwrap();
    assert_eq!(v.direction()[0], [-1.0, 0.0, 0.0]);
    assert_eq!(v.direction()[1], [0.0, -1.0, 0.0]);
}

/// One image cut in another plane than `--axis` (a coronal localizer in an axial batch)
/// became 64 slices of one row each, and a box on it failed with "box lies outside the
/// 64x1 image". One image is segmented in its own plane, with a warning that says so;
/// the axial image beside it is not.
#[test]
fn a_single_image_is_segmented_in_its_own_plane() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    edited_dicom(&input, "coronal.dcm", |o| {
        put_ds(o, tags::IMAGE_ORIENTATION_PATIENT, "1\\0\\0\\0\\0\\-1");
    });
    edited_dicom(&input, "axial.dcm", |o| {
        put_ds(o, tags::IMAGE_ORIENTATION_PATIENT, "1\\0\\0\\0\\1\\0");
        // a series of its own, or the two files would be read as one volume
        o.put(DataElement::new(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.3.4.5.6.7.8.9"),
        ));
    });
    let out = tmp.path().join("out");
    let o = cosam(&[
        "segment",
        "-i",
        &text(&input),
        "-o",
        &text(&out),
        "--box",
        "12,12,52,52",
        "--threads",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let r = report(&out);
    assert_eq!(entries(&r).len(), 2, "{r}");
    for e in entries(&r) {
        assert_eq!(e["status"], "ok", "{e}");
        assert_eq!(e["slices_segmented"].as_u64(), Some(1), "{e}");
        assert!(e["mask_pixels"].as_u64().unwrap_or(0) > 0, "{e}");
        let warned = e["warnings"].to_string().contains("its own plane");
        let coronal = e["series_uid"] != "1.2.3.4.5.6.7.8.9";
        assert_eq!(warned, coronal, "{e}");
    }
    assert!(stderr.contains("single coronal image"), "{stderr}");
}

/// A .dcm file without the 128-byte preamble gets the same clear
/// error alone and in a folder, instead of "folder holds no DICOM files".
#[test]
fn dicom_without_preamble_fails_the_same_alone_and_in_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nopreamble");
    std::fs::create_dir(&dir).unwrap();
    let bytes = std::fs::read(mr_small()).unwrap();
    let p = write(&dir, "slice.dcm", &bytes[128..]);
    let alone = err(&p).to_string();
    assert!(alone.contains("preamble"), "{alone}");
    let in_folder = io::read_inputs(&dir, &Limits::default());
    assert_eq!(in_folder.len(), 1);
    let msg = in_folder[0].as_ref().unwrap_err().to_string();
    assert!(
        msg.contains("slice.dcm") && msg.contains("preamble"),
        "{msg}"
    );
    assert_eq!(io::detect_format(&p).unwrap(), io::ImageFormat::Dicom);
}

/// A binary value that is not a whole number of values (libFuzzer, 2026-11-30: MR_small
/// with SliceThickness's VR changed from DS to AT, 6 bytes) is refused by the length
/// pre-check. dicom-parser read one 4-byte tag, took the next header from the 2 bytes
/// left over and the text after them, and allocated ~800 MB for that "length".
#[test]
fn dicom_value_of_partial_binary_values_is_refused_before_the_parser() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(mr_small()).unwrap();
    let field = b"\x18\x00P\x00DS\x06\x000.8000";
    let at = bytes
        .windows(field.len())
        .position(|w| w == field)
        .expect("MR_small has SliceThickness DS 0.8000");
    bytes[at + 4..at + 6].copy_from_slice(b"AT");
    let p = write(tmp.path(), "at6.dcm", &bytes);
    let t0 = Instant::now();
    let e = err(&p);
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("(0018,0050)") && msg.contains("not a multiple of 4"),
        "{msg}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
}

/// A second file meta group inside the first (libFuzzer, session 10): the first group's
/// length ran on over the second's (0002,0000) and its transfer syntax said big endian,
/// the second's little endian. dicom-object keeps the first group length and transfer
/// syntax, the pre-check kept the last, so the parser read the data set from the middle of
/// the second group in the wrong byte order and allocated 2.65 GB for a "length" (2.9 GB
/// peak RSS in a release build). Meta elements must now ascend.
#[test]
fn a_second_file_meta_group_is_refused_before_the_parser() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(mr_small()).unwrap();
    assert_eq!(&bytes[132..140], b"\x02\x00\x00\x00UL\x04\x00");
    let group_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap());
    let meta_end = 144 + group_len as usize;
    let mut first = bytes[132..meta_end].to_vec();
    first[8..12].copy_from_slice(&(group_len + 12).to_le_bytes());
    let le = b"1.2.840.10008.1.2.1\0";
    let at = first
        .windows(le.len())
        .position(|w| w == le)
        .expect("MR_small is explicit VR little endian");
    first[at..at + le.len()].copy_from_slice(b"1.2.840.10008.1.2.2\0");
    let crafted = [&bytes[..132], &first, &bytes[132..]].concat();
    let p = write(tmp.path(), "two_meta_groups.dcm", &crafted);
    let e = err(&p);
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("two_meta_groups.dcm")
            && msg.contains(&format!(
                "(0002,0000) at byte {meta_end} repeats or is out of order"
            )),
        "{msg}"
    );
}

/// Preamble, "DICM" and a file meta group of (0002,0000) and (0002,0010) `ts` (of even
/// length), ready for a data set.
fn part10_header(ts: &[u8]) -> Vec<u8> {
    let mut meta = vec![0x02, 0x00, 0x10, 0x00, b'U', b'I'];
    meta.extend_from_slice(&(ts.len() as u16).to_le_bytes());
    meta.extend_from_slice(ts);
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    bytes.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
    bytes.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&meta);
    bytes
}

/// A transfer syntax UID with a trailing tab (found reading dicom-object's meta code after
/// the find above): dicom-object trims trailing whitespace and NUL and reads implicit VR;
/// the pre-check trimmed only NUL and space, took it for explicit VR and passed an element
/// that the parser read as 2 GB long (2.4 GB peak RSS in a release build, from 182 bytes).
#[test]
fn a_transfer_syntax_is_read_as_the_parser_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = part10_header(b"1.2.840.10008.1.2\t");
    // (0011,1010) in implicit VR: "OB" and 0xFF 0x7F are its 32-bit length
    bytes.extend_from_slice(&[0x11, 0x00, 0x10, 0x10, b'O', b'B', 0xFF, 0x7F, 0, 0, 0, 0]);
    let p = write(tmp.path(), "ts_tab.dcm", &bytes);
    let e = err(&p);
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("ts_tab.dcm")
            && msg.contains("(0011,1010) at byte 170 claims 2147435087 bytes"),
        "{msg}"
    );
}

/// An undefined-length UN element (found reading dicom-parser after the find above): the
/// pre-check stopped walking there, while dicom-parser reads it as a sequence and goes on,
/// so an element after it claiming 2 GB reached the parser (2.4 GB peak RSS in a release
/// build, from 212 bytes).
#[test]
fn elements_after_an_undefined_length_un_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(mr_small()).unwrap();
    let mut un = vec![
        0x11, 0x00, 0x10, 0x00, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    un.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    un.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    un.extend_from_slice(&[0x11, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0, 0, 0xFF, 0x7F]);
    // after MR_small's file meta group, ahead of its data set
    let meta_end = 144 + u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let crafted = [&bytes[..meta_end], &un, &bytes[meta_end..]].concat();
    let p = write(tmp.path(), "un_then_2gb.dcm", &crafted);
    let e = err(&p);
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("un_then_2gb.dcm")
            && msg.contains("(0011,1010)")
            && msg.contains("claims 2147418112 bytes"),
        "{msg}"
    );
}

/// A deflated DICOM data set counts against the memory budget: the pre-check inflated up
/// to 2 GB whatever `--max-memory-mb` said (2.4 GB peak RSS from a 2 MB file of zeros).
#[test]
fn a_deflated_data_set_is_inflated_within_the_memory_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = part10_header(b"1.2.840.10008.1.2.1.99");
    // (0011,1010) OB holding 8 MiB of zeros, deflated to a few kB
    let value = 8u32 << 20;
    let mut set = vec![0x11, 0x00, 0x10, 0x10, b'O', b'B', 0, 0];
    set.extend_from_slice(&value.to_le_bytes());
    set.resize(set.len() + value as usize, 0);
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    deflate.write_all(&set).unwrap();
    bytes.extend_from_slice(&deflate.finish().unwrap());
    assert!(bytes.len() < 64 << 10, "{} bytes on disk", bytes.len());
    let p = write(tmp.path(), "deflated.dcm", &bytes);
    let tight = Limits::default().with_max_memory_bytes(4 << 20);
    match io::read_with_limits(&p, &tight) {
        Err(ReadError::TooLarge { path, reason }) => {
            assert_eq!(path, p);
            assert!(
                reason.contains("deflated data set inflates past")
                    && reason.contains("--max-memory-mb"),
                "{reason}"
            );
        }
        other => panic!("expected TooLarge, got {:?}", other.map(|_| ())),
    }
    // within the default budget the same file gets past the pre-check (and fails later:
    // it holds no image)
    match io::read(&p) {
        Err(ReadError::TooLarge { reason, .. }) => panic!("refused within the budget: {reason}"),
        Err(_) => {}
        Ok(_) => panic!("a file without pixel data was read as an image"),
    }
}

/// Once PixelRepresentation is 1, dicom-parser reads an element the dictionary gives as
/// US-or-SS as SS whatever VR the file writes (found reading the parser): a 1-byte "OB"
/// SmallestImagePixelValue left it a byte behind, and it took a 2 GB length from the next
/// header (2.4 GB peak RSS in a release build, from 207 bytes).
#[test]
fn us_or_ss_elements_are_read_as_the_parser_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = part10_header(b"1.2.840.10008.1.2.1\0");
    bytes.extend_from_slice(&[0x28, 0x00, 0x03, 0x01, b'U', b'S', 2, 0, 1, 0]);
    bytes.extend_from_slice(&[0x28, 0x00, 0x06, 0x01, b'O', b'B', 0, 0, 1, 0, 0, 0]);
    // one value byte to this walk; to the parser, a header whose length is 0x7F000000
    bytes.extend_from_slice(&[
        0x09, 0x00, 0x10, 0x10, b'Z', b'L', b'O', 0x04, 0, 0, 0, 0x7F, 0,
    ]);
    let p = write(tmp.path(), "signed_xs.dcm", &bytes);
    let e = err(&p);
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("signed_xs.dcm") && msg.contains("(0028,0106)") && msg.contains("VR SS"),
        "{msg}"
    );
}

/// An 8-bit grey image of `rows` x `columns` in transfer syntax `ts` (even length), its
/// encapsulated pixel data holding `fragments` (each padded to even length) after an empty
/// offset table; `trailing` follows the pixel data.
fn encapsulated_dicom(
    ts: &[u8],
    rows: u16,
    columns: u16,
    fragments: &[&[u8]],
    trailing: &[u8],
) -> Vec<u8> {
    // (0028,element) US v
    let us = |element: u16, v: u16| {
        [
            [0x28, 0x00],
            element.to_le_bytes(),
            *b"US",
            [2, 0],
            v.to_le_bytes(),
        ]
        .concat()
    };
    let mut bytes = part10_header(ts);
    bytes.extend(us(0x02, 1));
    bytes.extend_from_slice(&[0x28, 0x00, 0x04, 0x00, b'C', b'S', 12, 0]);
    bytes.extend_from_slice(b"MONOCHROME2 ");
    // rows, columns, 8 bits allocated and stored, high bit 7, unsigned
    for (element, v) in [
        (0x10, rows),
        (0x11, columns),
        (0x100, 8),
        (0x101, 8),
        (0x102, 7),
        (0x103, 0),
    ] {
        bytes.extend(us(element, v));
    }
    bytes.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    bytes.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    for fragment in fragments {
        let padded = fragment.len() + fragment.len() % 2;
        bytes.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        bytes.extend_from_slice(&(padded as u32).to_le_bytes());
        bytes.extend_from_slice(fragment);
        bytes.resize(bytes.len() + padded - fragment.len(), 0);
    }
    bytes.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    bytes.extend_from_slice(trailing);
    bytes
}

/// A Deflated Image Frame Compression file of `rows` x `columns` 8-bit grey pixels whose
/// one fragment is `frame`, deflated.
fn deflated_frame_dicom(rows: u16, columns: u16, frame: &[u8]) -> Vec<u8> {
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflate.write_all(frame).unwrap();
    let fragment = deflate.finish().unwrap();
    encapsulated_dicom(b"1.2.840.10008.1.2.8.1\0", rows, columns, &[&fragment], &[])
}

/// Deflated Image Frame Compression: dicom-transfer-syntax-registry inflates each fragment
/// with no bound (found reading the adapter: 1 MB of deflated zeros in a 1x1 image became
/// 1 GB). The fragments must inflate to no more than the declared frames; a frame that
/// does is read.
#[test]
fn deflated_frames_inflate_only_to_the_declared_size() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "deflated_frame.dcm",
        &deflated_frame_dicom(2, 2, &[0, 50, 100, 200]),
    );
    let volume = io::read(&p).unwrap();
    assert_eq!(
        volume.voxels().iter().copied().collect::<Vec<f32>>(),
        [0.0, 50.0, 100.0, 200.0]
    );
    // 1x1 pixels declared, 16 MiB inflated, from a file of a few kB
    let bomb = deflated_frame_dicom(1, 1, &vec![0; 16 << 20]);
    assert!(bomb.len() < 64 << 10, "{} bytes on disk", bomb.len());
    let p = write(tmp.path(), "deflated_frame_bomb.dcm", &bomb);
    let e = err(&p);
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("deflated_frame_bomb.dcm") && msg.contains("inflate past the 1 bytes"),
        "{msg}"
    );
}

/// The read error of a crafted file, which must be `Corrupt` and name the file.
fn crafted_error(name: &str, bytes: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let e = err(&write(tmp.path(), name, bytes));
    assert!(matches!(e, ReadError::Corrupt { .. }), "{name}: {e}");
    let msg = e.to_string();
    assert!(msg.contains(name), "{msg}");
    msg
}

/// Found reading the decoders behind dicom-pixeldata, each refused before a decoder
/// sizes anything by it: a JPEG decoder starts a frame at any SOI after the last one (a
/// second image in one fragment asked for 8 GB); openjp2 keeps state per tile (65,535
/// tiles of one pixel took 0.9 GB) and follows JP2 boxes, not the first "jp2c" bytes (a
/// fake SIZ inside an `xml ` box hid one of 64 x 8,388,608); the RLE decoder sizes its
/// output by the fragments (2,500 of them asked for 2.6 GB).
#[test]
fn compressed_pixel_data_is_checked_as_the_decoders_read_it() {
    // SOI and a baseline frame header of one 8-bit component (`code` C0, or C2 progressive)
    let jpeg = |code: u8, width: u16, height: u16| {
        let [w0, w1] = width.to_be_bytes();
        let [h0, h1] = height.to_be_bytes();
        vec![
            0xFF, 0xD8, 0xFF, code, 0, 11, 8, h0, h1, w0, w1, 1, 1, 0x11, 0,
        ]
    };
    let two = [jpeg(0xC0, 1, 1), jpeg(0xC2, 65535, 65535)].concat();
    let msg = crafted_error(
        "jpeg_inside.dcm",
        &encapsulated_dicom(b"1.2.840.10008.1.2.4.50\0", 1, 1, &[&two], &[]),
    );
    assert!(
        msg.contains("at byte 15 of the pixel data declares 65535x65535"),
        "{msg}"
    );
    // SOC and a SIZ of `width` x `height` in tiles of `tile` x `tile`, one component
    let codestream = |width: u32, height: u32, tile: u32| {
        let mut c = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
        for v in [width, height, 0, 0, tile, tile, 0, 0] {
            c.extend_from_slice(&v.to_be_bytes());
        }
        c.extend_from_slice(&[0, 1, 7, 1, 1]);
        c
    };
    let msg = crafted_error(
        "j2k_tiles.dcm",
        &encapsulated_dicom(
            b"1.2.840.10008.1.2.4.90\0",
            255,
            257,
            &[&codestream(257, 255, 1)],
            &[],
        ),
    );
    assert!(msg.contains("65535 tiles (at most 4096)"), "{msg}");
    // a JP2 file: signature, ftyp, an xml box holding "jp2c" and a 1x1 SIZ, then the
    // codestream box
    let jp2_box = |kind: &[u8], content: &[u8]| {
        [
            &((content.len() + 8) as u32).to_be_bytes()[..],
            kind,
            content,
        ]
        .concat()
    };
    let jp2 = [
        jp2_box(b"jP  ", &[0x0D, 0x0A, 0x87, 0x0A]),
        jp2_box(b"ftyp", b"jp2 \0\0\0\0jp2 "),
        jp2_box(b"xml ", &[&b"jp2c"[..], &codestream(1, 1, 1)].concat()),
        jp2_box(b"jp2c", &codestream(64, 65536, 64)),
    ]
    .concat();
    let msg = crafted_error(
        "jp2_boxes.dcm",
        &encapsulated_dicom(b"1.2.840.10008.1.2.4.90\0", 1, 1, &[&jp2], &[]),
    );
    assert!(msg.contains("declares 64x65536 pixels"), "{msg}");
    // two RLE fragments (one segment each) for one frame
    let rle = [
        &1u32.to_le_bytes()[..],
        &64u32.to_le_bytes(),
        &[0; 56],
        &[0, 0],
    ]
    .concat();
    let msg = crafted_error(
        "rle_fragments.dcm",
        &encapsulated_dicom(b"1.2.840.10008.1.2.5\0", 1, 1, &[&rle, &rle], &[]),
    );
    assert!(msg.contains("2 RLE fragments for 1 frame(s)"), "{msg}");
}

/// Attributes after the pixel data: the probe reads up to the pixel data, the decoder
/// the whole file, where a later element replaces an earlier one. Rows, Columns and
/// NumberOfFrames there made a JPEG decoder size its output at 4096 x 4096 x 200 from a
/// 2 kB file the probe had checked as 1 x 1 (3.6 GB peak RSS; found reading the
/// decoder). Encapsulated pixel data is refused; native pixel data is read as the probe
/// saw it, up to the pixel data.
#[test]
fn attributes_after_the_pixel_data_cannot_replace_the_checked_ones() {
    let after = [
        &[0x28, 0x00, 0x10, 0x00, b'U', b'S', 2, 0][..],
        &4096u16.to_le_bytes(),
    ]
    .concat();
    let frame = [0xFF, 0xD8, 0xFF, 0xC0, 0, 11, 8, 0, 1, 0, 1, 1, 1, 0x11, 0];
    let msg = crafted_error(
        "rows_after_pixels.dcm",
        &encapsulated_dicom(b"1.2.840.10008.1.2.4.50\0", 1, 1, &[&frame], &after),
    );
    assert!(
        msg.contains("(0028,0010)") && msg.contains("follows the pixel data out of order"),
        "{msg}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let native = [std::fs::read(mr_small()).unwrap(), after].concat();
    let v = io::read(&write(tmp.path(), "mr_rows_after_pixels.dcm", &native)).unwrap();
    assert_eq!(v.voxels().dim(), (1, 64, 64, 1));
}

/// BitsStored past BitsAllocated: dicom-pixeldata's rescale table has 2^BitsStored
/// entries (BitsStored 31 asked for 2 GB and aborted; found reading it). More than 3
/// samples per pixel is refused before a decoder sizes anything by it.
#[test]
fn pixel_attributes_are_checked_before_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let p = edited_dicom(tmp.path(), "bits_stored_31.dcm", |obj| {
        obj.put(DataElement::new(
            tags::BITS_STORED,
            VR::US,
            PrimitiveValue::from(31u16),
        ));
    });
    let e = err(&p);
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("BitsStored 31 is not from 1 to BitsAllocated (16)"),
        "{e}"
    );
    let p = edited_dicom(tmp.path(), "samples_4.dcm", |obj| {
        obj.put(DataElement::new(
            tags::SAMPLES_PER_PIXEL,
            VR::US,
            PrimitiveValue::from(4u16),
        ));
    });
    let e = err(&p);
    assert!(matches!(e, ReadError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("4 samples per pixel"), "{e}");
}

/// An RLE fragment whose header claims 2^32 - 1 segments (libFuzzer, 2026-11-30, from
/// MR_small_RLE) is refused before dicom-transfer-syntax-registry allocates an offset
/// per segment (16 GiB; a failed allocation aborts, past the panic guard).
#[test]
fn dicom_rle_segment_count_is_checked_before_the_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(root().join("tests/fixtures/io/dicom/MR_small_RLE.dcm")).unwrap();
    let header = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff";
    let at = bytes
        .windows(header.len())
        .position(|w| w == header)
        .expect("MR_small_RLE has encapsulated PixelData")
        + header.len();
    // the basic offset table item, then the first fragment's item header
    let table = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    let fragment = at + 8 + table + 8;
    assert_eq!(
        bytes[fragment..fragment + 4],
        [2, 0, 0, 0],
        "two segments (16-bit)"
    );
    bytes[fragment..fragment + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let p = write(tmp.path(), "rle_segments.dcm", &bytes);
    let e = err(&p);
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("4294967295 segments (at most 15)"), "{msg}");
}

/// The read error of DICOM fixture `name` with the bytes `old` found `offset` bytes after
/// the first occurrence of `marker` replaced by `new`.
fn patched_fixture_error(
    name: &str,
    marker: &[u8],
    offset: usize,
    old: &[u8],
    new: &[u8],
) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(root().join("tests/fixtures/io/dicom").join(name)).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap_or_else(|| panic!("{name} has no {marker:02X?}"))
        + offset;
    assert_eq!(&bytes[at..at + old.len()], old, "{name}");
    bytes[at..at + new.len()].copy_from_slice(new);
    let e = err(&write(tmp.path(), name, &bytes));
    assert!(matches!(e, ReadError::Corrupt { .. }), "{e}");
    e.to_string()
}

/// A JPEG 2000 codestream whose SIZ marker declares 64 x 67,108,928 pixels (libFuzzer,
/// 2026-11-30: openjp2 asked for 17 GB) is refused before the decoder: the codestream
/// must declare the image the DICOM header describes.
#[test]
fn dicom_jpeg_2000_size_is_checked_against_the_header_before_the_decoder() {
    // SOC, SIZ; Ysiz 12 bytes in
    let msg = patched_fixture_error(
        "MR_small_jp2klossless.dcm",
        &[0xFF, 0x4F, 0xFF, 0x51],
        12,
        &64u32.to_be_bytes(),
        &67_108_928u32.to_be_bytes(),
    );
    assert!(
        msg.contains("declares 64x67108928 pixels") && msg.contains("header says 64x64"),
        "{msg}"
    );
}

/// The same for a JPEG frame header (libFuzzer, 2026-11-30: a SOF of 12900 x 63844
/// pixels made jpeg-decoder ask for 2.5 GB).
#[test]
fn dicom_jpeg_frame_size_is_checked_against_the_header_before_the_decoder() {
    // SOF0: marker, length 17, precision 8, rows 100, columns 100, 3 components
    let msg = patched_fixture_error(
        "SC_rgb_jpeg_dcmtk.dcm",
        &[0xFF, 0xC0, 0, 17, 8, 0, 100, 0, 100, 3],
        5,
        &100u16.to_be_bytes(),
        &63_844u16.to_be_bytes(),
    );
    assert!(
        msg.contains("declares 100x63844 pixels") && msg.contains("header says 100x100"),
        "{msg}"
    );
}

/// A FIFO given as an input, or lying in a DICOM folder, is refused or skipped without
/// being opened (opening it would block forever).
#[test]
fn fifos_are_never_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("series");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(mr_small(), dir.join("a.dcm")).unwrap();
    for fifo in [dir.join("b.dcm"), tmp.path().join("pipe.nii")] {
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (d, p) = (dir.clone(), tmp.path().join("pipe.nii"));
    std::thread::spawn(move || {
        let folder = io::read_inputs(&d, &Limits::default());
        let pipe = io::read_inputs(&p, &Limits::default());
        let _ = tx.send((
            folder.iter().map(Result::is_ok).collect::<Vec<_>>(),
            pipe.into_iter()
                .map(|r| r.err().map(|e| e.to_string()))
                .collect::<Vec<_>>(),
        ));
    });
    let (folder, pipe) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("reading blocked on a FIFO");
    assert_eq!(folder, vec![true], "the folder's one real slice");
    assert!(
        pipe[0]
            .as_deref()
            .is_some_and(|m| m.contains("not a regular file")),
        "{pipe:?}"
    );
}

// ---------------------------------------------------------------- CLI tests

fn entries(report: &Value) -> &Vec<Value> {
    report["inputs"].as_array().unwrap()
}

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Item 4: case ids that are paths are refused; nothing is written outside -o.
#[test]
fn case_ids_cannot_write_outside_the_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let escaped = tmp.path().join("escaped");
    std::fs::create_dir(&escaped).unwrap();
    let out = tmp.path().join("deep/out");
    let image = text(&demo("brain_t1.png"));
    let cases = serde_json::json!({"cases": [
        {"id": "../x", "input": image, "box": [10, 10, 60, 60]},
        {"id": format!("{}/x", escaped.display()), "input": image, "box": [10, 10, 60, 60]},
        {"id": "fine", "input": image, "box": [10, 10, 60, 60]},
    ]});
    let cases_path = write(tmp.path(), "cases.json", cases.to_string().as_bytes());
    let o = cosam(&[
        "segment",
        "--cases",
        &text(&cases_path),
        "-o",
        &text(&out),
        "--threads",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let r = report(&out);
    assert_eq!((r["ok"].as_u64(), r["failed"].as_u64()), (Some(1), Some(2)));
    for e in entries(&r).iter().filter(|e| e["status"] == "failed") {
        assert!(
            e["error"].as_str().unwrap().contains("not a plain name"),
            "{e}"
        );
    }
    assert!(out.join("fine_mask.png").is_file());
    let outside: Vec<PathBuf> = files_below(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with(&out) && p != &cases_path)
        .collect();
    assert!(outside.is_empty(), "written outside -o: {outside:?}");
}

/// Runs cosam and kills it after `limit`; None when it had to be killed.
fn cosam_within(args: &[&str], limit: Duration) -> Option<std::process::Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cosam"))
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Item 5: heads.json naming a device, a FIFO or a file outside the heads folder is
/// refused without reading it; thresholds out of [0, 1] are refused.
#[test]
fn heads_files_are_confined_checked_and_range_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/heads/abdomen/heads.json")).unwrap(),
    )
    .unwrap();
    let input = text(&demo("brain_t1.png"));
    let out = text(&tmp.path().join("out"));
    for (case, file, threshold, expect) in [
        ("dev_zero", "/dev/zero", 0.5, "not a relative path"),
        (
            "passwd",
            "../../../../../../etc/passwd",
            0.5,
            "not a relative path",
        ),
        ("fifo", "fifo_link", 0.5, "not a regular file"),
        ("threshold", "decoder.onnx", 7.5, "error_threshold 7.5"),
    ] {
        let dir = tmp.path().join(case);
        std::fs::create_dir(&dir).unwrap();
        // a FIFO inside the folder (a link to one outside would be refused as outside)
        if case == "fifo" {
            let c = std::ffi::CString::new(dir.join("fifo_link").to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        let mut info = shipped.clone();
        info["error_threshold"] = serde_json::json!(threshold);
        for f in info["files"].as_array_mut().unwrap() {
            f["file"] = Value::from(file);
        }
        write(&dir, "heads.json", info.to_string().as_bytes());
        let o = cosam_within(
            &["segment", "--heads", &text(&dir), "-i", &input, "-o", &out],
            Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("{case}: cosam hung"));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{case}: {stderr}");
        assert!(stderr.contains(expect), "{case}: {stderr}");
        assert!(
            !stderr.contains("sha256"),
            "{case}: hashed before checking: {stderr}"
        );
    }
}

/// Item 9: --slices applies to --task runs, and a range past the volume fails the input.
/// Item 10: a structure named twice is a usage error.
#[test]
fn task_runs_honour_slices_and_refuse_repeated_structures() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let volume = text(&demo("ct_abdomen.nii.gz"));
    let o = cosam(&[
        "segment",
        "--task",
        "abdomen",
        "--structures",
        "liver",
        "--slices",
        "100:200",
        "-i",
        &volume,
        "-o",
        &text(&out),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let r = report(&out);
    let msg = entries(&r)[0]["error"].as_str().unwrap().to_string();
    assert!(msg.contains("200") && msg.contains("30"), "{msg}");
    let o = cosam(&[
        "segment",
        "--task",
        "abdomen",
        "--structures",
        "liver,liver",
        "-i",
        &volume,
        "-o",
        &text(&out),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'liver' twice"), "{stderr}");
}

/// Item 8: a folder with a DICOM slice, a PNG and a NIfTI gives three inputs.
/// Item 13: a file name that is not UTF-8 is segmented and reported.
#[test]
fn mixed_folder_gives_every_input_and_odd_names_are_reported() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(mr_small(), input.join("slice.dcm")).unwrap();
    std::fs::copy(demo("mr_abdomen.png"), input.join("mr.png")).unwrap();
    let (file, _) = numbered_nifti(352);
    write(&input, "vol.nii.gz", &gzip(&file));
    let odd = input.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
    std::fs::copy(demo("brain_t1.png"), &odd).unwrap();
    let out = tmp.path().join("out");
    let o = cosam(&[
        "segment",
        "-i",
        &text(&input),
        "-o",
        &text(&out),
        "--box",
        "1,1,5,4",
        "--slices",
        "0:0",
        "--threads",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    let r = report(&out);
    let names: Vec<&str> = entries(&r)
        .iter()
        .map(|e| e["input"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}\n{stderr}");
    for want in ["in", "mr.png", "vol.nii.gz", "caf\u{FFFD}.png"] {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "{want} missing: {names:?}"
        );
    }
    assert!(out.join("caf__mask.png").is_file(), "{stderr}");
    assert!(matches!(o.status.code(), Some(0) | Some(1)), "{stderr}");
}

/// A DICOM series in a subfolder beside a non-DICOM file (a thumbnail, a README) was
/// dropped without a word (found reading the input collection): it is an input too.
#[test]
fn series_in_subfolders_are_inputs_beside_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let study = tmp.path().join("study");
    std::fs::create_dir_all(study.join("series1")).unwrap();
    std::fs::copy(demo("brain_t1.png"), study.join("thumb.png")).unwrap();
    std::fs::copy(mr_small(), study.join("series1").join("slice.dcm")).unwrap();
    let out = tmp.path().join("out");
    let o = cosam(&[
        "segment",
        "-i",
        &text(&study),
        "-o",
        &text(&out),
        "--box",
        "1,1,5,4",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let r = report(&out);
    let names: Vec<&str> = entries(&r)
        .iter()
        .map(|e| e["input"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("series1")), "{names:?}");
}

/// Item 15: -o equal to the input folder is refused. Item 16: temporary files of a
/// killed run are removed at the next run.
#[test]
fn output_folder_cannot_be_the_input_folder_and_stale_partials_go() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::copy(demo("brain_t1.png"), input.join("brain.png")).unwrap();
    let o = cosam(&[
        "segment",
        "-i",
        &text(&input),
        "-o",
        &text(&input),
        "--box",
        "10,10,60,60",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("choose another -o"), "{stderr}");
    assert_eq!(std::fs::read_dir(&input).unwrap().count(), 1);

    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // a temporary name of a dead process on this host (`.partial-PID_HOST_NANOS_N-NAME`)
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    let stale = write(
        &out,
        &format!(".partial-4294967294_{host}_1_0-brain_mask.png"),
        b"half",
    );
    let o = cosam(&[
        "segment",
        "-i",
        &text(&tmp.path().join("missing.png")),
        "-o",
        &text(&out),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!stale.exists(), "stale partial file kept");
}

/// A PNG chunk: length, type, data, CRC.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    [
        &(data.len() as u32).to_be_bytes()[..],
        kind,
        data,
        &crc.sum().to_be_bytes(),
    ]
    .concat()
}

/// Raster images (found reading the reader): the size was checked after decoding, so a
/// 204-byte JPEG claiming 65535 x 65535 pixels aborted the batch in a 4 GB allocation;
/// and the decoder could allocate the whole memory budget for what comes with the
/// pixels, so a PNG's ICC profile of deflated zeros inflated to gigabytes. The size is
/// now checked from the header, and ancillary chunks get 64 MiB.
#[test]
fn raster_sizes_are_checked_before_decoding_and_profiles_are_capped() {
    let tmp = tempfile::tempdir().unwrap();
    // a baseline grey JPEG of 65535 x 65535 pixels: SOI, DQT, SOF0, a DC and an AC table
    // of one code each, SOS, 64 bytes of scan, EOI
    let segment = |marker: u8, body: &[u8]| {
        [
            &[0xFF, marker][..],
            &((body.len() + 2) as u16).to_be_bytes(),
            body,
        ]
        .concat()
    };
    let table = |class: u8| [&[class, 1][..], &[0; 15], &[0]].concat();
    let jpeg = [
        &[0xFF, 0xD8][..],
        &segment(0xDB, &[&[0][..], &[1; 64]].concat()),
        &segment(0xC0, &[8, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0]),
        &segment(0xC4, &table(0x00)),
        &segment(0xC4, &table(0x10)),
        &segment(0xDA, &[1, 1, 0, 0, 63, 0]),
        &[0; 64],
        &[0xFF, 0xD9],
    ]
    .concat();
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "huge.jpg", &jpeg);
    // a 64 x 64 grey PNG with an ICC profile inflating to 1 GiB
    let mut profile = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        profile.write_all(&zeros).unwrap();
    }
    let iccp = [&b"icc\0\0"[..], &profile.finish().unwrap()].concat();
    let rows: Vec<u8> = (0..64u8)
        .flat_map(|y| std::iter::once(0).chain((0..64u8).map(move |x| x.wrapping_mul(3) ^ y)))
        .collect();
    let mut pixels = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    pixels.write_all(&rows).unwrap();
    let pixels = pixels.finish().unwrap();
    let png = |profile: &[u8]| {
        [
            &b"\x89PNG\r\n\x1a\n"[..],
            &png_chunk(b"IHDR", &[0, 0, 0, 64, 0, 0, 0, 64, 8, 0, 0, 0, 0]),
            &png_chunk(b"iCCP", profile),
            &png_chunk(b"IDAT", &pixels),
            &png_chunk(b"IEND", &[]),
        ]
        .concat()
    };
    write(&dir, "profile_bomb.png", &png(&iccp));
    // the same image with a profile of 1 kB: what a PNG costs here (the model's RSS
    // depends on the provider)
    let control = tmp.path().join("control");
    std::fs::create_dir(&control).unwrap();
    let mut small = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    small.write_all(&zeros[..1024]).unwrap();
    write(
        &control,
        "control.png",
        &png(&[&b"icc\0\0"[..], &small.finish().unwrap()].concat()),
    );
    let run = |input: &Path, out: &Path| {
        cosam_measured(
            &[
                "segment",
                "--box",
                "8,8,40,40",
                "-i",
                &text(input),
                "-o",
                &text(out),
            ],
            6 << 30,
            Duration::from_secs(120),
        )
    };
    let (code, stderr, baseline) = run(&control, &tmp.path().join("out_control"));
    assert_eq!(code, Some(0), "{stderr}");
    let out = tmp.path().join("out");
    let (code, stderr, peak) = run(&dir, &out);
    assert_eq!(code, Some(1), "{stderr}");
    let r = report(&out);
    let by_name = |name: &str| {
        entries(&r)
            .iter()
            .find(|e| e["input"].as_str().is_some_and(|i| i.ends_with(name)))
            .unwrap_or_else(|| panic!("{name} missing from {r}"))
            .clone()
    };
    let huge = by_name("huge.jpg");
    assert!(
        huge["error"]
            .as_str()
            .unwrap_or_default()
            .contains("[65535, 65535, 3]"),
        "{huge}"
    );
    assert_eq!(by_name("profile_bomb.png")["status"], "ok");
    // the 1 GiB profile may cost its 64 MiB allowance, not a gigabyte
    assert!(
        peak < baseline + (256 << 20),
        "peak RSS {} MB against {} MB for the same image with a small profile",
        peak >> 20,
        baseline >> 20
    );
}

// ---------------------------------------------------------------- the mixed batch

/// Runs cosam with its address space capped at `cap_bytes`, killed after `limit`; the
/// exit code (None when killed by a signal), stderr, and the child's peak RSS in bytes.
fn cosam_measured(args: &[&str], cap_bytes: u64, limit: Duration) -> (Option<i32>, String, u64) {
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let err_path = tmp.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cosam"));
    cmd.args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: cap_bytes as libc::rlim_t,
                rlim_max: cap_bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // reaped by wait4 below, which also gives its resource usage
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let t0 = Instant::now();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value to be filled in
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waiting for our own child with valid out-pointers
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed");
        if t0.elapsed() > limit {
            // SAFETY: signalling our own child
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    // ru_maxrss is in KiB on Linux
    (code, stderr, usage.ru_maxrss as u64 * 1024)
}

/// Every crafted input with good ones in one batch, under the 6 GB address-space
/// cap: the run finishes (exit 1), every good input is written, every bad one is listed
/// in report.json with a clear error, and peak RSS stays under 3 GB.
#[test]
fn batch_of_every_crafted_input_finishes_within_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    // good
    std::fs::copy(demo("mr_abdomen.png"), dir.join("good_mr.png")).unwrap();
    std::fs::copy(demo("brain_t1.png"), dir.join("good_brain.png")).unwrap();
    let mut disk = vec![0i16; 64 * 64 * 2];
    for (n, v) in disk.iter_mut().enumerate() {
        let (r, c) = ((n / 64) % 64, n % 64);
        let d2 = (r as i32 - 32).pow(2) + (c as i32 - 30).pow(2);
        *v = if d2 < 15 * 15 { 400 } else { 20 };
    }
    let data: Vec<u8> = disk.iter().flat_map(|v| v.to_le_bytes()).collect();
    let h = nifti_header([64, 64, 2], 4, 16, 1024.0);
    write(
        &dir,
        "good_offset.nii.gz",
        &gzip(&nifti_file(&h, 1024, &data)),
    );
    // bad
    write_gzip_bomb(&dir.join("bomb.nii.gz"), 1000);
    write(&dir, "zero_ext.nii", &zero_size_extension());
    edited_dicom(&dir, "frames.dcm", |o| {
        o.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from("2147483647"),
        ));
    });
    let mut h = nifti_header([4, 4, 2], 2, 8, 352.0);
    put_f32(&mut h, 108, f32::NAN);
    write(&dir, "nan_offset.nii", &nifti_file(&h, 352, &[1; 32]));
    let h = nifti_header([4, 4, 1], 32, 64, 352.0);
    write(&dir, "complex.nii", &nifti_file(&h, 352, &[0; 128]));
    let mut h = nifti_header([4, 4, 2], 2, 8, 352.0);
    set_sform(
        &mut h,
        [
            [1.0, 1.0, 1.0, 0.0],
            [2.0, 2.0, 2.0, 0.0],
            [3.0, 3.0, 3.0, 0.0],
        ],
    );
    write(&dir, "rank1.nii", &nifti_file(&h, 352, &[1; 32]));
    let mut h = nifti_header([4, 4, 2], 2, 8, 352.0);
    put_i16(&mut h, 254, 0);
    set_qform(&mut h, 0.9, 0.9, 0.0);
    write(&dir, "long_quaternion.nii", &nifti_file(&h, 352, &[1; 32]));
    let bad = [
        ("bomb.nii.gz", "memory budget"),
        ("zero_ext.nii", "extension 1"),
        ("frames.dcm", "frames"),
        ("nan_offset.nii", "vox_offset"),
        ("complex.nii", "complex"),
        ("rank1.nii", "singular"),
        ("long_quaternion.nii", "quaternion"),
    ];
    let out = tmp.path().join("out");
    let (code, stderr, peak) = cosam_measured(
        &[
            "segment",
            "-i",
            &text(&dir),
            "-o",
            &text(&out),
            "--box",
            "10,10,60,60",
            "--device",
            "cpu",
            "--threads",
            "2",
        ],
        6 << 30,
        Duration::from_secs(600),
    );
    println!("peak RSS {} MiB", peak >> 20);
    assert_eq!(code, Some(1), "{stderr}");
    let r = report(&out);
    for good in ["good_mr.png", "good_brain.png", "good_offset.nii.gz"] {
        let e = entries(&r)
            .iter()
            .find(|e| e["input"].as_str().unwrap().ends_with(good))
            .unwrap_or_else(|| panic!("{good} not in the report"));
        assert_eq!(e["status"], "ok", "{e}");
        for f in e["outputs"].as_array().unwrap() {
            assert!(Path::new(f.as_str().unwrap()).exists(), "{f}");
        }
    }
    // frames.dcm makes the folder a DICOM folder: its series entry is named by the folder
    for (name, reason) in bad {
        let e = entries(&r)
            .iter()
            .find(|e| {
                e["input"].as_str().unwrap().ends_with(name)
                    || e["error"].as_str().is_some_and(|m| m.contains(name))
            })
            .unwrap_or_else(|| panic!("{name} not in the report: {r}"));
        assert_eq!(e["status"], "failed", "{name}: {e}");
        let msg = e["error"].as_str().unwrap();
        assert!(msg.contains(name) && msg.contains(reason), "{name}: {msg}");
    }
    assert!(peak < 3 << 30, "peak RSS {} MiB", peak >> 20);
}

/// NIfTI-1 sizes are signed 16-bit numbers: a size whose top bit is set is negative, not a
/// size past 32767 (which the nifti crate's unsigned field would make of it).
#[test]
fn negative_nifti_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let h = nifti_header([43108, 1, 1], 2, 8, 352.0);
    let p = write(
        tmp.path(),
        "negative_dim.nii",
        &nifti_file(&h, 352, &[1; 64]),
    );
    let msg = err(&p).to_string();
    assert!(msg.contains("dimension 1 has size -22428"), "{msg}");
}
