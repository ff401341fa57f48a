//! NIfTI-1 volumes (`.nii`, `.nii.gz`) through the `nifti` crate.
//!
//! The affine follows nibabel's choice: the sform when `sform_code > 0`, else the qform
//! when `qform_code > 0`, else a diagonal matrix of the voxel sizes.

use std::path::Path;

use ::nifti::{IntoNdArray, NiftiHeader, NiftiObject, ReaderOptions};
use ndarray::{Array4, Axis, Ix3};

use super::{Affine, ImageFormat, Limits, Modality, ReadError, Spacing, Volume};

/// CT volumes reach far below this (air is -1000 HU); MR intensities never do.
const CT_MIN_BELOW_HU: f32 = -500.0;

/// Reads a NIfTI-1 volume. 2D, 3D and 4D files whose extra dimensions are 1 are
/// accepted; slope and intercept are applied.
///
/// # Errors
/// [`ReadError::Corrupt`] for a broken or short file, [`ReadError::Unsupported`] for
/// NIfTI-2, time series and colour volumes, [`ReadError::TooLarge`] past `limits`.
pub fn read(path: &Path, limits: &Limits) -> Result<Volume, ReadError> {
    let header = read_header(path)?;
    let dims = spatial_dims(&header, path)?;
    limits.check(path, &dims.map(|d| d as u64))?;
    check_data_length(path, &header, dims)?;
    let data = guard(path, || {
        ReaderOptions::new()
            .read_file(path)
            .and_then(|object| object.into_volume().into_ndarray::<f32>())
    })?
    .map_err(|e| nifti_error(path, e))?;
    // Drop the singleton dimensions past the third; add one for a 2-D file.
    let mut data = data;
    while data.ndim() > 3 {
        let last = Axis(data.ndim() - 1);
        data = data.index_axis_move(last, 0);
    }
    while data.ndim() < 3 {
        let next = Axis(data.ndim());
        data = data.insert_axis(next);
    }
    let data = data
        .into_dimensionality::<Ix3>()
        .ok()
        .filter(|a| a.shape() == dims)
        .ok_or_else(|| ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("voxel data does not match the header's size {dims:?}"),
        })?;
    let nan = data.iter().filter(|v| !v.is_finite()).count();
    if nan > 0 {
        return Err(ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{nan} voxels are NaN or infinite"),
        });
    }
    // NIfTI indexes [i, j, k]; cosam stores [slice k, row j, column i].
    let [ni, nj, nk] = dims;
    let voxels = Array4::from_shape_fn((nk, nj, ni, 1), |(k, j, i, _)| data[[i, j, k]]);
    let min = voxels.iter().copied().fold(f32::INFINITY, f32::min);
    let modality = if min < CT_MIN_BELOW_HU {
        Modality::Ct
    } else {
        Modality::Mr
    };
    let spacing = Spacing {
        column_mm: f64::from(header.pixdim[1].abs()),
        row_mm: f64::from(header.pixdim[2].abs()),
        slice_mm: f64::from(header.pixdim[3].abs().max(f32::MIN_POSITIVE)),
    };
    let affine = affine_of(&header);
    let mut volume = Volume::new(voxels, spacing, affine, modality, path.to_path_buf())?
        .with_format(ImageFormat::Nifti);
    volume.nifti_header = Some(Box::new(header));
    Ok(volume)
}

/// The first four bytes of the (decompressed) header: `sizeof_hdr`.
fn header_size_field(path: &Path) -> Result<[u8; 4], ReadError> {
    use std::io::Read;
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ReadError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            ReadError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let mut raw = Vec::with_capacity(4);
    std::fs::File::open(path)
        .map_err(io)?
        .take(4)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let mut head = [0u8; 4];
    if raw.starts_with(&[0x1f, 0x8b]) {
        let file = std::fs::File::open(path).map_err(io)?;
        let mut gz = flate2::read::GzDecoder::new(file).take(4);
        let mut out = Vec::with_capacity(4);
        // A broken gzip stream is reported by the header parser below.
        let _ = gz.read_to_end(&mut out);
        head[..out.len().min(4)].copy_from_slice(&out[..out.len().min(4)]);
    } else {
        head[..raw.len().min(4)].copy_from_slice(&raw[..raw.len().min(4)]);
    }
    Ok(head)
}

/// The cheap header step: parses and checks the header without reading voxels.
///
/// # Errors
/// [`ReadError::Unsupported`] for NIfTI-2, [`ReadError::Corrupt`] for a bad header.
pub fn read_header(path: &Path) -> Result<NiftiHeader, ReadError> {
    let head = header_size_field(path)?;
    // NIfTI-2 starts with sizeof_hdr = 540 (either byte order), NIfTI-1 with 348.
    if head == 540i32.to_le_bytes() || head == 540i32.to_be_bytes() {
        return Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: "NIfTI-2 files are not supported; convert to NIfTI-1 (e.g. nibabel: \
                     nib.save(nib.Nifti1Image(img.dataobj, img.affine), 'out.nii.gz'))"
                .into(),
        });
    }
    if head != 348i32.to_le_bytes() && head != 348i32.to_be_bytes() {
        return Err(ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "not a NIfTI-1 file (sizeof_hdr is {}, expected 348)",
                i32::from_le_bytes(head)
            ),
        });
    }
    guard(path, || NiftiHeader::from_file(path))?.map_err(|e| nifti_error(path, e))
}

/// Runs the `nifti` crate, turning a panic inside it into an error naming the file.
fn guard<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, ReadError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason: "the NIfTI decoder failed on malformed data".into(),
    })
}

/// For an uncompressed `.nii`, checks the file holds as many bytes as the header says
/// before anything is allocated.
fn check_data_length(path: &Path, header: &NiftiHeader, dims: [usize; 3]) -> Result<(), ReadError> {
    let gz = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().ends_with(".gz"));
    if gz {
        return Ok(());
    }
    let bytes_per_voxel = u64::try_from(header.bitpix / 8).unwrap_or(0);
    if bytes_per_voxel == 0 {
        return Err(ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("bitpix {} is not a whole number of bytes", header.bitpix),
        });
    }
    let needed = dims
        .iter()
        .try_fold(bytes_per_voxel, |acc, &d| acc.checked_mul(d as u64))
        .and_then(|n| n.checked_add(header.vox_offset.max(0.0) as u64));
    let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match needed {
        Some(n) if n <= have => Ok(()),
        _ => Err(ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "file is shorter than its header says: {have} bytes, header needs {}",
                needed.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
            ),
        }),
    }
}

fn spatial_dims(header: &NiftiHeader, path: &Path) -> Result<[usize; 3], ReadError> {
    let dim = header.dim;
    let ndim = usize::from(dim[0]);
    if !(2..=7).contains(&ndim) {
        return Err(ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("header says {ndim} dimensions (dim[0] must be 2..7)"),
        });
    }
    let size = |i: usize| -> Result<usize, ReadError> {
        if i > ndim {
            return Ok(1);
        }
        Some(usize::from(dim[i]))
            .filter(|&d| d > 0)
            .ok_or_else(|| ReadError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("dimension {i} has size {}", dim[i]),
            })
    };
    for i in 4..=ndim {
        if size(i)? != 1 {
            return Err(ReadError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "{ndim}-D volume with {} entries along dimension {i}; only one 3-D \
                     volume per file is supported",
                    size(i)?
                ),
            });
        }
    }
    if header.datatype == 128 || header.datatype == 2304 {
        return Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: "RGB NIfTI volumes are not supported".into(),
        });
    }
    Ok([size(1)?, size(2)?, size(3)?])
}

fn nifti_error(path: &Path, e: ::nifti::NiftiError) -> ReadError {
    match e {
        ::nifti::NiftiError::Io(source) if source.kind() == std::io::ErrorKind::NotFound => {
            ReadError::NotFound {
                path: path.to_path_buf(),
            }
        }
        ::nifti::NiftiError::Io(source) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            ReadError::Corrupt {
                path: path.to_path_buf(),
                reason: "file is shorter than its header says (truncated)".into(),
            }
        }
        other => ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("not a valid NIfTI-1 file: {other}"),
        },
    }
}

/// Voxel-to-RAS affine of a NIfTI-1 header (sform, else qform, else voxel sizes).
pub fn affine_of(h: &NiftiHeader) -> Affine {
    let f = |v: f32| f64::from(v);
    if h.sform_code > 0 {
        let r = |row: [f32; 4]| row.map(f);
        return Affine([r(h.srow_x), r(h.srow_y), r(h.srow_z), [0.0, 0.0, 0.0, 1.0]]);
    }
    let (dx, dy, dz) = (f(h.pixdim[1]), f(h.pixdim[2]), f(h.pixdim[3]));
    if h.qform_code > 0 {
        let (b, c, d) = (f(h.quatern_b), f(h.quatern_c), f(h.quatern_d));
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        // qfac is stored in pixdim[0]; 0 means 1 (NIfTI-1 standard, nifti1.h).
        let qfac = if h.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let rot = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let scale = [dx, dy, dz * qfac];
        let offset = [f(h.quatern_x), f(h.quatern_y), f(h.quatern_z)];
        let mut m = [[0.0; 4]; 4];
        for r in 0..3 {
            for col in 0..3 {
                m[r][col] = rot[r][col] * scale[col];
            }
            m[r][3] = offset[r];
        }
        m[3][3] = 1.0;
        return Affine(m);
    }
    Affine::from_spacing(Spacing {
        column_mm: dx,
        row_mm: dy,
        slice_mm: dz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_quaternion_gives_scaled_affine_with_offset() {
        let h = NiftiHeader {
            qform_code: 1,
            sform_code: 0,
            pixdim: [1.0, 2.0, 3.0, 4.0, 1.0, 1.0, 1.0, 1.0],
            quatern_x: 10.0,
            quatern_y: -5.0,
            quatern_z: 7.0,
            ..NiftiHeader::default()
        };
        let a = affine_of(&h);
        assert_eq!(a.apply([1.0, 1.0, 1.0]), [12.0, -2.0, 11.0]);
    }

    #[test]
    fn negative_qfac_flips_the_slice_axis() {
        let h = NiftiHeader {
            qform_code: 1,
            sform_code: 0,
            pixdim: [-1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0],
            ..NiftiHeader::default()
        };
        assert_eq!(affine_of(&h).apply([0.0, 0.0, 1.0]), [0.0, 0.0, -2.0]);
    }

    #[test]
    fn sform_wins_over_qform() {
        let h = NiftiHeader {
            qform_code: 1,
            sform_code: 2,
            srow_x: [-1.0, 0.0, 0.0, 90.0],
            srow_y: [0.0, 1.0, 0.0, -126.0],
            srow_z: [0.0, 0.0, 1.0, -72.0],
            ..NiftiHeader::default()
        };
        assert_eq!(affine_of(&h).apply([90.0, 126.0, 72.0]), [0.0, 0.0, 0.0]);
    }
}
