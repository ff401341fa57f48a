//! NIfTI-1 volumes (`.nii`, `.nii.gz`).
//!
//! The 348-byte header is parsed by the `nifti` crate's header reader; everything after
//! it (extensions, the voxel offset, the voxels) is read here from one stream, plain or
//! gzip, so that every claim of the header is checked against [`Limits`] before memory is
//! allocated and no more bytes are decompressed than the header's (checked) claims.
//!
//! The affine follows nibabel's choice: the sform when `sform_code` is 1-5, else the qform
//! when `qform_code` is (scaled by the absolute voxel sizes), else the NIfTI-1 standard's
//! method 1, a diagonal matrix of the voxel sizes (where nibabel flips x and centres the
//! volume instead). The header's byte order is the one its `dim[0]` gives, as nibabel
//! reads it. A transform that
//! cannot be a voxel-to-world mapping (singular or non-finite sform, a quaternion longer
//! than 1) is never used: the other one is, with a warning, and without a valid one the
//! file is refused.

use std::io::Read;
use std::path::Path;

use ::nifti::NiftiHeader;
use ndarray::Array4;

use super::{Affine, ImageFormat, Limits, Modality, ReadError, Spacing, Volume};

/// CT volumes reach far below this (air is -1000 HU); MR intensities never do.
const CT_MIN_BELOW_HU: f32 = -500.0;
/// Size of the NIfTI-1 header, bytes; a single-file `.nii` has voxels from byte 352.
const HEADER_BYTES: u64 = 348;
const MIN_SINGLE_FILE_OFFSET: u64 = 352;
/// Largest NIfTI transform code (5, NIFTI_XFORM_TEMPLATE_OTHER).
const MAX_XFORM_CODE: i16 = 5;
/// Bytes read at a time from the voxel stream.
const CHUNK_BYTES: usize = 1 << 20;
/// A quaternion (b, c, d) may exceed unit length by this much (float32 rounding) before
/// the qform counts as invalid (nibabel refuses it too).
const QUATERNION_TOLERANCE: f64 = 1e-6;

/// How a stored voxel type is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VoxelType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
}

impl VoxelType {
    /// The type of NIfTI datatype code `code`, or why it is unsupported.
    fn of(code: i16) -> Result<VoxelType, String> {
        Ok(match code {
            2 => VoxelType::U8,
            256 => VoxelType::I8,
            512 => VoxelType::U16,
            4 => VoxelType::I16,
            768 => VoxelType::U32,
            8 => VoxelType::I32,
            1280 => VoxelType::U64,
            1024 => VoxelType::I64,
            16 => VoxelType::F32,
            64 => VoxelType::F64,
            1 => return Err("1-bit (binary) voxels (datatype 1) are not supported".into()),
            32 | 1792 | 2048 => {
                return Err(format!(
                    "complex voxels (datatype {code}) are not supported; save the \
                     magnitude as a real volume"
                ))
            }
            128 | 2304 => return Err("RGB NIfTI volumes are not supported".into()),
            1536 => return Err("float128 voxels (datatype 1536) are not supported".into()),
            other => return Err(format!("unknown NIfTI datatype {other}")),
        })
    }

    fn bytes(self) -> usize {
        match self {
            VoxelType::U8 | VoxelType::I8 => 1,
            VoxelType::U16 | VoxelType::I16 => 2,
            VoxelType::U32 | VoxelType::I32 | VoxelType::F32 => 4,
            VoxelType::U64 | VoxelType::I64 | VoxelType::F64 => 8,
        }
    }

    /// One voxel from its bytes (`b.len() == self.bytes()`).
    fn decode(self, b: &[u8], big: bool) -> f64 {
        macro_rules! num {
            ($t:ty, $n:expr) => {{
                let mut a = [0u8; $n];
                a.copy_from_slice(&b[..$n]);
                if big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }
            }};
        }
        match self {
            VoxelType::U8 => f64::from(b[0]),
            VoxelType::I8 => f64::from(b[0] as i8),
            VoxelType::U16 => f64::from(num!(u16, 2)),
            VoxelType::I16 => f64::from(num!(i16, 2)),
            VoxelType::U32 => f64::from(num!(u32, 4)),
            VoxelType::I32 => f64::from(num!(i32, 4)),
            VoxelType::U64 => num!(u64, 8) as f64,
            VoxelType::I64 => num!(i64, 8) as f64,
            VoxelType::F32 => f64::from(num!(f32, 4)),
            VoxelType::F64 => num!(f64, 8),
        }
    }
}

/// Reads a NIfTI-1 volume. 2D, 3D and 4D files whose extra dimensions are 1 are
/// accepted; slope and intercept are applied.
///
/// # Errors
/// [`ReadError::Corrupt`] for a broken or short file, [`ReadError::Unsupported`] for
/// NIfTI-2, time series, colour and complex volumes, [`ReadError::TooLarge`] past
/// `limits` (checked from the header, before the voxels are read).
pub fn read(path: &Path, limits: &Limits) -> Result<Volume, ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let unsupported = |reason: String| ReadError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    let (mut stream, gz) = open_stream(path)?;
    let (header, big) = parse_header(path, &mut stream)?;
    let dims = spatial_dims(&header, path)?;
    let voxel_type = VoxelType::of(header.datatype).map_err(unsupported)?;
    if i32::from(header.bitpix) != 8 * voxel_type.bytes() as i32 {
        return Err(unsupported(format!(
            "datatype {} stores {} bits per voxel but bitpix is {}; the header disagrees \
             with itself",
            header.datatype,
            8 * voxel_type.bytes(),
            header.bitpix
        )));
    }
    let mut warnings = Vec::new();
    let offset = voxel_offset(path, &header, &mut warnings)?;
    let voxels_n = dims.iter().map(|&d| d as u64).product::<u64>();
    let data_bytes = voxels_n.saturating_mul(voxel_type.bytes() as u64);
    // The voxels and their copies, the offset skipped and one chunk of the stream.
    limits.check_with_buffer(
        path,
        &dims.map(|d| d as u64),
        offset.saturating_add(CHUNK_BYTES as u64),
    )?;
    if !gz {
        let have = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let needed = data_bytes.saturating_add(offset);
        if have < needed {
            return Err(corrupt(format!(
                "file is shorter than its header says: {have} bytes, header needs {needed}"
            )));
        }
    }
    skip_extensions(path, &mut stream, offset, big, limits)?;
    // Slope 0 or non-finite means "no scaling" (NIfTI-1 standard; nibabel).
    let (slope, inter) = match (header.scl_slope, header.scl_inter) {
        (s, _) if s == 0.0 || !s.is_finite() => (1.0, 0.0),
        (_, i) if !i.is_finite() => {
            return Err(corrupt(format!(
                "scl_slope {} with a non-finite scl_inter {i}",
                header.scl_slope
            )))
        }
        (s, i) => (f64::from(s), f64::from(i)),
    };
    let n = usize::try_from(voxels_n).map_err(|_| corrupt("too many voxels".into()))?;
    let mut values: Vec<f32> = Vec::new();
    values
        .try_reserve_exact(n)
        .map_err(|_| ReadError::TooLarge {
            path: path.to_path_buf(),
            reason: format!("cannot allocate {n} voxels"),
        })?;
    let step = voxel_type.bytes();
    let mut chunk = vec![0u8; CHUNK_BYTES - CHUNK_BYTES % step];
    let mut left = n * step;
    let mut non_finite = 0usize;
    while left > 0 {
        let want = left.min(chunk.len());
        let buf = chunk.get_mut(..want).unwrap_or_default();
        stream.read_exact(buf).map_err(|e| stream_error(path, e))?;
        for b in buf.chunks_exact(step) {
            let v = (voxel_type.decode(b, big) * slope + inter) as f32;
            non_finite += usize::from(!v.is_finite());
            values.push(v);
        }
        left -= want;
    }
    drop(chunk);
    if non_finite > 0 {
        return Err(corrupt(format!("{non_finite} voxels are NaN or infinite")));
    }
    let min = values.iter().copied().fold(f32::INFINITY, f32::min);
    // NIfTI stores i fastest, then j, then k: exactly cosam's [slice k, row j, column i].
    let [ni, nj, nk] = dims;
    let voxels = Array4::from_shape_vec((nk, nj, ni, 1), values)
        .map_err(|e| corrupt(format!("voxel data does not match the header's size: {e}")))?;
    let modality = if min < CT_MIN_BELOW_HU {
        Modality::Ct
    } else {
        Modality::Mr
    };
    let (affine, header) = geometry(path, header, &mut warnings)?;
    let spacing = spacing_of(&header, &affine, &mut warnings);
    let mut volume = Volume::new(voxels, spacing, affine, modality, path.to_path_buf())?
        .with_format(ImageFormat::Nifti);
    volume.warnings = warnings;
    volume.nifti_header = header.map(Box::new);
    Ok(volume)
}

/// The file as a byte stream, decompressed when it starts with the gzip magic; true
/// when it is gzip.
fn open_stream(path: &Path) -> Result<(Box<dyn Read>, bool), ReadError> {
    let io = |source: std::io::Error| ReadError::from_io(path, source);
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let mut magic = [0u8; 2];
    let gz = match file.read_exact(&mut magic) {
        Ok(()) => magic == [0x1f, 0x8b],
        Err(_) => false,
    };
    let file = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    Ok(if gz {
        (Box::new(flate2::read::MultiGzDecoder::new(file)), true)
    } else {
        (Box::new(file), false)
    })
}

fn stream_error(path: &Path, e: std::io::Error) -> ReadError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: "file is shorter than its header says (truncated)".into(),
        }
    } else {
        ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot read the voxel data: {e}"),
        }
    }
}

/// Reads and checks the 348-byte header from `stream`; true when it is big-endian.
fn parse_header(path: &Path, stream: &mut dyn Read) -> Result<(NiftiHeader, bool), ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let mut raw = Vec::with_capacity(HEADER_BYTES as usize);
    stream
        .take(HEADER_BYTES)
        .read_to_end(&mut raw)
        .map_err(|e| corrupt(format!("cannot read the header: {e}")))?;
    let head: [u8; 4] = raw
        .get(..4)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| corrupt("not a NIfTI-1 file (shorter than 4 bytes)".into()))?;
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
        return Err(corrupt(format!(
            "not a NIfTI-1 file (sizeof_hdr is {}, expected 348)",
            i32::from_le_bytes(head)
        )));
    }
    if raw.len() < HEADER_BYTES as usize {
        return Err(corrupt(format!(
            "header is truncated ({} of 348 bytes)",
            raw.len()
        )));
    }
    let header = NiftiHeader::from_reader(raw.as_slice()).map_err(|e| nifti_error(path, e))?;
    if &header.magic == b"ni1\0" {
        return Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: "the header of a .hdr/.img pair; convert it to a single .nii file".into(),
        });
    }
    // The byte order the header was parsed in, which the nifti crate and nibabel take from
    // dim[0]: deciding by sizeof_hdr decoded the voxels of a file whose sizeof_hdr alone
    // was little endian in the wrong order, silently (found reading the reader).
    let big = header.endianness == ::nifti::Endianness::Big;
    Ok((header, big))
}

/// The header's `vox_offset` as a byte offset, checked.
fn voxel_offset(
    path: &Path,
    header: &NiftiHeader,
    warnings: &mut Vec<String>,
) -> Result<u64, ReadError> {
    let v = header.vox_offset;
    if !v.is_finite() || v < 0.0 || v.fract() != 0.0 || f64::from(v) > 2f64.powi(53) {
        return Err(ReadError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("vox_offset {v} is not a byte offset"),
        });
    }
    let offset = v as u64;
    if offset < MIN_SINGLE_FILE_OFFSET {
        // nibabel reads such files from byte 352 too (its header check fixes the value)
        warnings.push(format!(
            "vox_offset {offset} is below 352, the least a single-file NIfTI-1 allows; \
             voxels read from byte 352"
        ));
        return Ok(MIN_SINGLE_FILE_OFFSET);
    }
    Ok(offset)
}

/// Moves the stream from the end of the header to `offset`, checking the extensions
/// the header announces on the way.
fn skip_extensions(
    path: &Path,
    stream: &mut dyn Read,
    offset: u64,
    big: bool,
    limits: &Limits,
) -> Result<(), ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let skip = |stream: &mut dyn Read, n: u64| -> Result<(), ReadError> {
        let copied = std::io::copy(&mut stream.take(n), &mut std::io::sink())
            .map_err(|e| stream_error(path, e))?;
        if copied < n {
            return Err(corrupt(
                "file ends before its voxel data starts (truncated)".into(),
            ));
        }
        Ok(())
    };
    let mut pos = HEADER_BYTES;
    let mut flag = [0u8; 4];
    stream
        .read_exact(&mut flag)
        .map_err(|e| stream_error(path, e))?;
    pos += 4;
    if flag[0] != 0 && offset > pos {
        let mut count = 0u64;
        // nibabel reads extensions while at least 16 bytes remain before the voxels
        while offset - pos >= 16 {
            let mut def = [0u8; 8];
            stream
                .read_exact(&mut def)
                .map_err(|e| stream_error(path, e))?;
            let esize = if big {
                i32::from_be_bytes([def[0], def[1], def[2], def[3]])
            } else {
                i32::from_le_bytes([def[0], def[1], def[2], def[3]])
            };
            count += 1;
            limits.check_extensions(path, count)?;
            let remaining = offset - pos;
            let size = u64::try_from(esize).unwrap_or(0);
            if size < 8 || size > remaining {
                return Err(corrupt(format!(
                    "header extension {count} declares {esize} bytes (at least 8, at most the \
                     {remaining} bytes before the voxel data)"
                )));
            }
            skip(stream, size - 8)?;
            pos += size;
        }
    }
    if offset > pos {
        skip(stream, offset - pos)?;
    }
    Ok(())
}

/// The cheap header step: parses and checks the header without reading voxels.
///
/// # Errors
/// [`ReadError::Unsupported`] for NIfTI-2, [`ReadError::Corrupt`] for a bad header.
pub fn read_header(path: &Path) -> Result<NiftiHeader, ReadError> {
    let (mut stream, _) = open_stream(path)?;
    parse_header(path, &mut stream).map(|(h, _)| h)
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
        // nifti1.h declares `short dim[8]`; the nifti crate reads it unsigned, so a
        // negative size would otherwise pass as a size past 32767
        let signed = dim[i] as i16;
        usize::try_from(signed)
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| ReadError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("dimension {i} has size {signed}"),
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

/// Why a header's sform cannot map voxels to the world, if it cannot.
fn sform_problem(h: &NiftiHeader) -> Option<String> {
    let rows = [h.srow_x, h.srow_y, h.srow_z];
    if !rows.iter().flatten().all(|v| v.is_finite()) {
        return Some("the sform has NaN or infinite entries".into());
    }
    let m = rows.map(|r| [r[0], r[1], r[2]].map(f64::from));
    let rank = rank3(m);
    (rank < 3).then(|| format!("the sform is singular (rank {rank})"))
}

/// Why a header's qform cannot map voxels to the world, if it cannot.
fn qform_problem(h: &NiftiHeader) -> Option<String> {
    let q = [
        h.quatern_b,
        h.quatern_c,
        h.quatern_d,
        h.quatern_x,
        h.quatern_y,
        h.quatern_z,
    ];
    if !q.iter().all(|v| v.is_finite()) {
        return Some("the qform has NaN or infinite entries".into());
    }
    let (b, c, d) = (
        f64::from(h.quatern_b),
        f64::from(h.quatern_c),
        f64::from(h.quatern_d),
    );
    let norm2 = b * b + c * c + d * d;
    if norm2 > 1.0 + QUATERNION_TOLERANCE {
        return Some(format!(
            "the qform quaternion (b, c, d) has length {:.6}, more than 1",
            norm2.sqrt()
        ));
    }
    if !h.pixdim[1..4].iter().all(|v| v.is_finite() && *v != 0.0) {
        return Some(format!(
            "the qform scales by pixdim {:?}, which has a zero or non-finite size",
            &h.pixdim[1..4]
        ));
    }
    None
}

/// Rank of a 3x3 matrix (Gaussian elimination, tolerance relative to its largest entry).
fn rank3(mut m: [[f64; 3]; 3]) -> usize {
    let scale = m.iter().flatten().fold(0.0f64, |a, v| a.max(v.abs()));
    if scale == 0.0 {
        return 0;
    }
    let tol = scale * 1e-6;
    let mut rank = 0;
    for col in 0..3 {
        let Some(pivot) = (rank..3).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))
        else {
            break;
        };
        if m[pivot][col].abs() <= tol {
            continue;
        }
        m.swap(rank, pivot);
        let pivot_row = m[rank];
        for (r, row) in m.iter_mut().enumerate() {
            if r != rank {
                let f = row[col] / pivot_row[col];
                for (v, p) in row.iter_mut().zip(pivot_row) {
                    *v -= f * p;
                }
            }
        }
        rank += 1;
    }
    rank
}

/// The affine cosam uses, and the header the mask writer may copy (`None`: build one
/// from the affine). An unusable transform is never used or copied: the other one is,
/// with a warning; without a usable one the file is refused.
fn geometry(
    path: &Path,
    mut h: NiftiHeader,
    warnings: &mut Vec<String>,
) -> Result<(Affine, Option<NiftiHeader>), ReadError> {
    // nibabel ignores a transform code outside NIfTI's 0-5; trusting sform_code 7 used a
    // transform nibabel does not
    for (name, code) in [
        ("sform_code", &mut h.sform_code),
        ("qform_code", &mut h.qform_code),
    ] {
        if !(0..=MAX_XFORM_CODE).contains(code) {
            warnings.push(format!(
                "{name} {code} is not a NIfTI transform code (0-{MAX_XFORM_CODE}); that \
                 transform is ignored"
            ));
            *code = 0;
        }
    }
    let sform = (h.sform_code > 0).then(|| sform_problem(&h));
    // A single slice has no slice spacing to give: nibabel reads a qform with pixdim[3] 0
    // there, and so does cosam, at 1 mm, where the qform is the transform used
    let qform_used = h.qform_code > 0 && sform != Some(None);
    if qform_used && h.dim[3] <= 1 && !(h.pixdim[3].is_finite() && h.pixdim[3] != 0.0) {
        warnings.push(format!(
            "pixdim[3] is {} on a single slice; 1 mm assumed for the slice thickness",
            h.pixdim[3]
        ));
        h.pixdim[3] = 1.0;
    }
    let qform = (h.qform_code > 0).then(|| qform_problem(&h));
    let refuse = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("{reason}: the voxel-to-world mapping is unknown"),
    };
    match (sform, qform) {
        (Some(None), q) => {
            if let Some(Some(problem)) = q {
                warnings.push(format!("{problem}; ignored, the sform is used"));
                h.qform_code = 0;
            }
            Ok((affine_of(&h), Some(h)))
        }
        (Some(Some(s)), Some(None)) => {
            warnings.push(format!("{s}; the qform is used instead"));
            h.sform_code = 0;
            Ok((affine_of(&h), Some(h)))
        }
        (Some(Some(s)), Some(Some(q))) => Err(refuse(format!("{s} and {q}"))),
        (Some(Some(s)), None) => Err(refuse(format!("{s} and there is no qform"))),
        (None, Some(None)) => Ok((affine_of(&h), Some(h))),
        (None, Some(Some(q))) => Err(refuse(q)),
        (None, None) => {
            if h.pixdim[1..4].iter().all(|v| v.is_finite() && *v != 0.0) {
                return Ok((affine_of(&h), Some(h)));
            }
            warnings.push(format!(
                "no sform or qform, and pixdim {:?} has a zero or non-finite voxel size; \
                 1 mm assumed there, so mm and mm^3 figures are not physical",
                &h.pixdim[1..4]
            ));
            for v in &mut h.pixdim[1..4] {
                if !(v.is_finite() && *v != 0.0) {
                    *v = 1.0;
                }
            }
            Ok((affine_of(&h), None))
        }
    }
}

/// Voxel sizes from pixdim; a zero or non-finite one is taken from the affine's column
/// length instead, with a warning.
fn spacing_of(h: &Option<NiftiHeader>, affine: &Affine, warnings: &mut Vec<String>) -> Spacing {
    let a = &affine.0;
    let column = |c: usize| (a[0][c] * a[0][c] + a[1][c] * a[1][c] + a[2][c] * a[2][c]).sqrt();
    let mut size = [0.0f64; 3];
    for (i, s) in size.iter_mut().enumerate() {
        let p = h.as_ref().map_or(f32::NAN, |h| h.pixdim[i + 1]);
        *s = if p.is_finite() && p != 0.0 {
            f64::from(p.abs())
        } else {
            let c = column(i);
            if h.is_some() {
                warnings.push(format!(
                    "pixdim[{}] is {p}; the voxel size {c:.4} mm is taken from the affine",
                    i + 1
                ));
            }
            c
        };
    }
    Spacing {
        column_mm: size[0],
        row_mm: size[1],
        slice_mm: size[2].max(f64::from(f32::MIN_POSITIVE)),
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
        // The voxel sizes only scale: a negative pixdim mirrored the image here, while
        // nibabel takes their absolute values (the sign of z is qfac's)
        let scale = [dx.abs(), dy.abs(), dz.abs() * qfac];
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
