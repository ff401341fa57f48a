//! Writing masks and overlays. Every file is written under a temporary name beside its
//! target and renamed when complete, so a failure never leaves a half-written output.

use std::path::{Path, PathBuf};

use ::nifti::writer::WriterOptions;
use ::nifti::NiftiHeader;
use image::{GrayImage, Rgb, RgbImage};
use ndarray::{Array3, ArrayView2};

use super::{Mask, Volume};

/// Failure to write an output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The file system refused.
    #[error("{path}: cannot write")]
    Io {
        /// The target.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The encoder failed or the data does not fit the format.
    #[error("{path}: cannot encode: {reason}")]
    Encode {
        /// The target.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The output asked for cannot be made from this input (a DICOM SEG of a NIfTI file).
    #[error("{path}: {reason}")]
    Unsupported {
        /// The input.
        path: PathBuf,
        /// Why, and what to write instead.
        reason: String,
    },
}

/// Writes through `write` to a temporary sibling of `path`, then renames it into place.
/// The temporary name keeps the target's extensions (`.nii.gz`), which encoders read.
///
/// # Errors
/// Whatever `write` returns, or [`WriteError::Io`] when the rename fails; the temporary
/// file is removed in both cases.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), WriteError>,
) -> Result<(), WriteError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("{PARTIAL_PREFIX}{}-{name}", temp_token()));
    let result = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|source| WriteError::Io {
            path: path.to_path_buf(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A token no other writer of the same folder uses at the same time, `PID_HOST_NANOS_N`:
/// the process id alone is not enough when two machines (a replaced pod, a requeued task)
/// share an output folder, so the host name, the time and a per-process counter are added.
/// [`remove_stale_partials`] reads the process id and host back. No dots: the NIfTI
/// writer takes the format from the name's extensions.
fn temp_token() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}_{}_{nanos}_{}",
        std::process::id(),
        this_host(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// This machine's host name, letters and digits only (at most 32).
fn this_host() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    host.trim()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect()
}

/// Prefix of the temporary names [`write_atomic`] writes under: `.partial-TOKEN-NAME`
/// (see [`temp_token`]).
const PARTIAL_PREFIX: &str = ".partial-";
/// On systems without `/proc`, a temporary file older than this is taken as abandoned.
const STALE_PARTIAL_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes the temporary files that [`write_atomic`] left in `dir` and its subfolders
/// (two levels: per-slice PNG and trace folders) when its process was killed mid-write
/// (`kill -9`, power loss). A file is removed only when the process named in it no longer
/// runs on this host (on systems without `/proc`, or for another host's file: when it is
/// a day old), so a concurrent run writing to the same folder is left alone. Returns the
/// removed files.
pub fn remove_stale_partials(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    sweep_partials(dir, 0, &mut removed);
    removed
}

fn sweep_partials(dir: &Path, depth: usize, removed: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth < 2 {
            sweep_partials(&path, depth + 1, removed);
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let name = entry.file_name();
        let Some((pid, host)) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PARTIAL_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(token, _)| {
                let mut parts = token.split('_');
                let pid = parts.next()?.parse::<u32>().ok()?;
                Some((pid, parts.next().unwrap_or_default().to_string()))
            })
        else {
            continue;
        };
        if pid != std::process::id()
            && is_abandoned(pid, &host, &entry)
            && std::fs::remove_file(&path).is_ok()
        {
            removed.push(path);
        }
    }
}

fn is_abandoned(pid: u32, host: &str, entry: &std::fs::DirEntry) -> bool {
    let proc = Path::new("/proc");
    if proc.join("self").exists() && host == this_host() {
        return !proc.join(pid.to_string()).exists();
    }
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_PARTIAL_AGE)
}

/// Writes bytes atomically.
///
/// # Errors
/// [`WriteError::Io`].
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|source| WriteError::Io {
            path: path.to_path_buf(),
            source,
        })
    })
}

fn encode_error(path: &Path) -> impl Fn(image::ImageError) -> WriteError + '_ {
    move |e| WriteError::Encode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Writes a mask as an 8-bit PNG, foreground 255.
///
/// # Errors
/// [`WriteError`].
pub fn write_mask_png(path: &Path, mask: &Mask) -> Result<(), WriteError> {
    let (rows, cols) = mask.dim();
    let img = GrayImage::from_fn(cols as u32, rows as u32, |x, y| {
        image::Luma([if mask.0[[y as usize, x as usize]] != 0 {
            255
        } else {
            0
        }])
    });
    write_atomic(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(encode_error(path))
    })
}

/// Writes a quick-look PNG: the slice in grey (`display`, 0..255) with the mask tinted
/// red and its outline in yellow.
///
/// # Errors
/// [`WriteError`].
pub fn write_overlay_png(
    path: &Path,
    display: ArrayView2<u8>,
    mask: &Mask,
) -> Result<(), WriteError> {
    let (rows, cols) = display.dim();
    let m = &mask.0;
    let inside = |r: isize, c: isize| {
        r >= 0
            && c >= 0
            && (r as usize) < rows
            && (c as usize) < cols
            && m[[r as usize, c as usize]] != 0
    };
    let img = RgbImage::from_fn(cols as u32, rows as u32, |x, y| {
        let (r, c) = (y as isize, x as isize);
        let g = display[[y as usize, x as usize]];
        if !inside(r, c) {
            return Rgb([g, g, g]);
        }
        let edge = !(inside(r - 1, c) && inside(r + 1, c) && inside(r, c - 1) && inside(r, c + 1));
        if edge {
            Rgb([255, 220, 0])
        } else {
            let blend = |v: u8, t: u8| ((u16::from(v) * 3 + u16::from(t) * 2) / 5) as u8;
            Rgb([blend(g, 255), blend(g, 0), blend(g, 0)])
        }
    });
    write_atomic(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(encode_error(path))
    })
}

/// Writes a `[slice, row, column]` label map as NIfTI-1 (`.nii` or `.nii.gz`, from the
/// name) with the geometry of `volume`: the input's own header when it was NIfTI (so the
/// affine, qform and sform are kept exactly), else a header built from its affine.
///
/// # Errors
/// [`WriteError`].
pub fn write_mask_nifti(path: &Path, mask: &Array3<u8>, volume: &Volume) -> Result<(), WriteError> {
    let (n, rows, cols, _) = volume.voxels().dim();
    if mask.dim() != (n, rows, cols) {
        return Err(WriteError::Encode {
            path: path.to_path_buf(),
            reason: format!("mask is {:?}, volume is {n}x{rows}x{cols}", mask.dim()),
        });
    }
    // NIfTI-1 stores each dimension as a signed 16-bit number (nifti1.h `short dim[8]`);
    // a larger one would be written as a negative size that readers refuse.
    if let Some((axis, size)) = [("columns", cols), ("rows", rows), ("slices", n)]
        .into_iter()
        .find(|&(_, size)| size > i16::MAX as usize)
    {
        return Err(WriteError::Encode {
            path: path.to_path_buf(),
            reason: format!(
                "{size} {axis} do not fit NIfTI-1, whose sizes are at most {}",
                i16::MAX
            ),
        });
    }
    let mut header = match &volume.nifti_header {
        Some(h) => (**h).clone(),
        None => header_from_affine(volume),
    };
    // A label map: stored values are the labels (no scaling), whatever the input's
    // scl_slope/scl_inter were.
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    // NIFTI_INTENT_LABEL
    header.intent_code = 1002;
    header.cal_min = 0.0;
    header.cal_max = f32::from(mask.iter().copied().max().unwrap_or(0).max(1));
    header.descrip = b"cosam mask".to_vec();
    // cosam stores [slice k, row j, column i]; NIfTI wants [i, j, k].
    let data = mask.view().permuted_axes([2, 1, 0]);
    write_atomic(path, |tmp| {
        WriterOptions::new(tmp)
            .reference_header(&header)
            .write_nifti(&data)
            .map_err(|e| WriteError::Encode {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    })
}

fn header_from_affine(volume: &Volume) -> NiftiHeader {
    let a = volume.affine().0;
    let s = volume.spacing();
    let row = |r: usize| -> [f32; 4] {
        [
            a[r][0] as f32,
            a[r][1] as f32,
            a[r][2] as f32,
            a[r][3] as f32,
        ]
    };
    // pixdim from the affine's column lengths, so the qform (which scales by pixdim)
    // reproduces the sform
    let norm = |c: usize| (a[0][c] * a[0][c] + a[1][c] * a[1][c] + a[2][c] * a[2][c]).sqrt();
    let size = |c: usize, fallback: f64| {
        let n = norm(c);
        (if n > 0.0 { n } else { fallback }) as f32
    };
    let mut header = NiftiHeader {
        pixdim: [
            1.0,
            size(0, s.column_mm),
            size(1, s.row_mm),
            size(2, s.slice_mm),
            1.0,
            1.0,
            1.0,
            1.0,
        ],
        srow_x: row(0),
        srow_y: row(1),
        srow_z: row(2),
        sform_code: 1,
        qform_code: 0,
        // spatial unit millimetres (NIFTI_UNITS_MM = 2)
        xyzt_units: 2,
        ..NiftiHeader::default()
    };
    // The qform as well, for readers that prefer it, when the affine has no shear.
    if let Some(q) = quaternion_of(&a) {
        header.qform_code = 1;
        header.pixdim[0] = q.qfac as f32;
        header.quatern_b = q.b as f32;
        header.quatern_c = q.c as f32;
        header.quatern_d = q.d as f32;
        header.quatern_x = a[0][3] as f32;
        header.quatern_y = a[1][3] as f32;
        header.quatern_z = a[2][3] as f32;
    }
    header
}

struct Quaternion {
    b: f64,
    c: f64,
    d: f64,
    qfac: f64,
}

/// The NIfTI-1 quaternion of an affine's rotation (nifti1.h, "METHOD 2"), or `None` when
/// its columns are not orthogonal (a sheared, gantry-tilted grid only the sform holds).
fn quaternion_of(a: &[[f64; 4]; 4]) -> Option<Quaternion> {
    let mut col = [[0.0f64; 3]; 3];
    for (c, v) in col.iter_mut().enumerate() {
        let raw = [a[0][c], a[1][c], a[2][c]];
        let len = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
        if !(len.is_finite() && len > 0.0) {
            return None;
        }
        *v = raw.map(|x| x / len);
    }
    let dot = |p: [f64; 3], q: [f64; 3]| p[0] * q[0] + p[1] * q[1] + p[2] * q[2];
    if dot(col[0], col[1]).abs() > 1e-4
        || dot(col[0], col[2]).abs() > 1e-4
        || dot(col[1], col[2]).abs() > 1e-4
    {
        return None;
    }
    let det = col[0][0] * (col[1][1] * col[2][2] - col[2][1] * col[1][2])
        - col[1][0] * (col[0][1] * col[2][2] - col[2][1] * col[0][2])
        + col[2][0] * (col[0][1] * col[1][2] - col[1][1] * col[0][2]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    if det < 0.0 {
        col[2] = col[2].map(|x| -x);
    }
    // r[row][column]
    let r = |i: usize, j: usize| col[j][i];
    let trace = r(0, 0) + r(1, 1) + r(2, 2) + 1.0;
    let (qa, b, c, d);
    if trace > 0.5 {
        qa = 0.5 * trace.sqrt();
        b = 0.25 * (r(2, 1) - r(1, 2)) / qa;
        c = 0.25 * (r(0, 2) - r(2, 0)) / qa;
        d = 0.25 * (r(1, 0) - r(0, 1)) / qa;
    } else {
        let xd = 1.0 + r(0, 0) - (r(1, 1) + r(2, 2));
        let yd = 1.0 + r(1, 1) - (r(0, 0) + r(2, 2));
        let zd = 1.0 + r(2, 2) - (r(0, 0) + r(1, 1));
        if xd > 1.0 {
            let bb = 0.5 * xd.sqrt();
            qa = 0.25 * (r(2, 1) - r(1, 2)) / bb;
            b = bb;
            c = 0.25 * (r(0, 1) + r(1, 0)) / bb;
            d = 0.25 * (r(0, 2) + r(2, 0)) / bb;
        } else if yd > 1.0 {
            let cc = 0.5 * yd.sqrt();
            qa = 0.25 * (r(0, 2) - r(2, 0)) / cc;
            b = 0.25 * (r(0, 1) + r(1, 0)) / cc;
            c = cc;
            d = 0.25 * (r(1, 2) + r(2, 1)) / cc;
        } else {
            let dd = 0.5 * zd.sqrt();
            qa = 0.25 * (r(1, 0) - r(0, 1)) / dd;
            b = 0.25 * (r(0, 2) + r(2, 0)) / dd;
            c = 0.25 * (r(1, 2) + r(2, 1)) / dd;
            d = dd;
        }
    }
    // the standard keeps a >= 0
    let sign = if qa < 0.0 { -1.0 } else { 1.0 };
    Some(Quaternion {
        b: b * sign,
        c: c * sign,
        d: d * sign,
        qfac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quaternion_reproduces_the_affine_through_the_reader() {
        use crate::io::nifti::affine_of;
        // LPS-ish oblique grid: rotation about z by 30 degrees, x flipped, spacing 0.5/0.7/2
        let (s, c) = (30f64.to_radians().sin(), 30f64.to_radians().cos());
        let rot = [[-c, -s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]];
        let sp = [0.5, 0.7, 2.0];
        let mut a = [[0.0; 4]; 4];
        for r in 0..3 {
            for k in 0..3 {
                a[r][k] = rot[r][k] * sp[k];
            }
        }
        a[0][3] = 10.0;
        a[1][3] = -20.0;
        a[2][3] = 30.0;
        a[3][3] = 1.0;
        let q = quaternion_of(&a).unwrap();
        let h = NiftiHeader {
            qform_code: 1,
            sform_code: 0,
            pixdim: [q.qfac as f32, 0.5, 0.7, 2.0, 1.0, 1.0, 1.0, 1.0],
            quatern_b: q.b as f32,
            quatern_c: q.c as f32,
            quatern_d: q.d as f32,
            quatern_x: 10.0,
            quatern_y: -20.0,
            quatern_z: 30.0,
            ..NiftiHeader::default()
        };
        let back = affine_of(&h);
        // float32 quaternions near a 180-degree rotation lose about 1e-4 (inherent to
        // the qform; the sform written beside it is exact and read first)
        for r in 0..4 {
            for k in 0..4 {
                assert!(
                    (back.0[r][k] - a[r][k]).abs() < 1e-3,
                    "{r},{k}: {:?} vs {a:?}",
                    back.0
                );
            }
        }
        // a sheared grid has no quaternion
        let mut sheared = a;
        sheared[0][2] += 0.3;
        assert!(quaternion_of(&sheared).is_none());
    }

    #[test]
    fn sizes_past_nifti1s_signed_16_bits_are_refused_not_written_negative() {
        use crate::io::{Affine, Modality, Spacing};
        let dir = tempfile::tempdir().unwrap();
        let spacing = Spacing {
            column_mm: 1.0,
            row_mm: 1.0,
            slice_mm: 1.0,
        };
        let volume = |cols| {
            Volume::new(
                ndarray::Array4::zeros((1, 2, cols, 1)),
                spacing,
                Affine::from_spacing(spacing),
                Modality::Ct,
                "wide.dcm".into(),
            )
            .unwrap()
        };
        let fits = dir.path().join("fits.nii");
        write_mask_nifti(&fits, &Array3::zeros((1, 2, 32767)), &volume(32767)).unwrap();
        let wide = dir.path().join("wide.nii");
        let err = write_mask_nifti(&wide, &Array3::zeros((1, 2, 43108)), &volume(43108))
            .unwrap_err()
            .to_string();
        assert!(err.contains("43108 columns do not fit NIfTI-1"), "{err}");
        assert!(!wide.exists());
    }

    #[test]
    fn failed_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.png");
        let r = write_atomic(&target, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(WriteError::Encode {
                path: target.clone(),
                reason: "boom".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn stale_partials_of_dead_processes_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ct_mask_png");
        std::fs::create_dir(&sub).unwrap();
        // pid_max on Linux is at most 2^22: this process cannot exist
        let host = this_host();
        let dead = dir
            .path()
            .join(format!(".partial-4294967294_{host}_1_0-ct_mask.nii.gz"));
        let dead_nested = sub.join(format!(".partial-4294967294_{host}_1_1-slice_0001.png"));
        let live = dir
            .path()
            .join(format!(".partial-{}-report.json", temp_token()));
        // a dead pid on another machine sharing the folder: its process may well be alive
        let foreign = dir
            .path()
            .join(".partial-4294967294_otherhost_1_2-labels.nii.gz");
        let other = dir.path().join(".partial-notes");
        for p in [&dead, &dead_nested, &live, &foreign, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let mut removed = remove_stale_partials(dir.path());
        removed.sort();
        let mut want = vec![dead.clone(), dead_nested.clone()];
        want.sort();
        if Path::new("/proc/self").exists() {
            assert_eq!(removed, want);
            assert!(!dead.exists() && !dead_nested.exists());
        }
        assert!(live.exists() && foreign.exists() && other.exists());
    }

    #[test]
    fn successful_write_replaces_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report.json");
        write_bytes(&target, b"{}").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
