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
    let tmp = path.with_file_name(format!(".partial-{}-{name}", std::process::id()));
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
    let mut header = match &volume.nifti_header {
        Some(h) => (**h).clone(),
        None => header_from_affine(volume),
    };
    header.cal_min = 0.0;
    header.cal_max = 1.0;
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
    let row = |r: usize| {
        [
            a[r][0] as f32,
            a[r][1] as f32,
            a[r][2] as f32,
            a[r][3] as f32,
        ]
    };
    NiftiHeader {
        pixdim: [
            1.0,
            s.column_mm as f32,
            s.row_mm as f32,
            s.slice_mm as f32,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn successful_write_replaces_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report.json");
        write_bytes(&target, b"{}").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
