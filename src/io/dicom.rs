//! DICOM files and series through `dicom-object` and `dicom-pixeldata`.
//!
//! A series folder is read by ordering its slices along the slice normal (the cross
//! product of ImageOrientationPatient's two directions) by ImagePositionPatient, never by
//! file name or InstanceNumber. Patient coordinates (LPS) become RAS by negating x and y.

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject, Tag};
use dicom_pixeldata::PixelDecoder;
use ndarray::{s, Array4};
use rayon::prelude::*;

use super::{Affine, ImageFormat, Limits, Modality, ReadError, Spacing, Volume, WindowLevel};

/// True when `head` holds the 128-byte preamble followed by `DICM`.
pub fn has_preamble(head: &[u8]) -> bool {
    head.len() >= 132 && &head[128..132] == b"DICM"
}

/// What one file contributes to a volume.
struct Frame {
    path: PathBuf,
    series_uid: String,
    pixels: Array4<f32>,
    geometry: Option<Geometry>,
    pixel_spacing: [f64; 2],
    slice_thickness: Option<f64>,
    modality: Modality,
    window: Option<WindowLevel>,
}

/// Position and orientation of a slice in patient (LPS) coordinates.
#[derive(Clone, Copy)]
struct Geometry {
    position: [f64; 3],
    row_dir: [f64; 3],
    col_dir: [f64; 3],
}

impl Geometry {
    fn normal(&self) -> [f64; 3] {
        cross(self.row_dir, self.col_dir)
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// Reads one DICOM file (single- or multi-frame); frames become slices.
///
/// # Errors
/// [`ReadError::Corrupt`] for unreadable files or missing pixel data,
/// [`ReadError::Unsupported`] for transfer syntaxes that cannot be decoded.
pub fn read_file(path: &Path, limits: &Limits) -> Result<Volume, ReadError> {
    let mut frame = read_frame(path, limits)?;
    let slice_mm = frame.slice_thickness.unwrap_or(1.0);
    let affine = affine_of(&frame, frame.geometry.map(|g| scale(g.normal(), slice_mm)));
    let pixels = std::mem::take(&mut frame.pixels);
    volume_from(pixels, &frame, affine, slice_mm, path, ImageFormat::Dicom)
}

/// Reads every DICOM file below `folder` as one series.
///
/// # Errors
/// [`ReadError::EmptyFolder`] when no file is DICOM, [`ReadError::Unsupported`] when the
/// folder holds several series, [`ReadError::Corrupt`] for slices of mixed sizes or
/// duplicate positions, and any error of [`read_file`] for a broken slice.
pub fn read_series(folder: &Path, limits: &Limits) -> Result<Volume, ReadError> {
    let mut files = Vec::new();
    collect_files(folder, &mut files)?;
    files.sort();
    let candidates: Vec<PathBuf> = files.into_iter().filter(|p| looks_like_dicom(p)).collect();
    if candidates.is_empty() {
        return Err(ReadError::EmptyFolder {
            path: folder.to_path_buf(),
        });
    }
    let mut frames = candidates
        .par_iter()
        .map(|p| read_frame(p, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let first_uid = frames[0].series_uid.clone();
    if frames.iter().any(|f| f.series_uid != first_uid) {
        let mut uids: Vec<&str> = frames.iter().map(|f| f.series_uid.as_str()).collect();
        uids.sort_unstable();
        uids.dedup();
        return Err(ReadError::Unsupported {
            path: folder.to_path_buf(),
            reason: format!(
                "folder holds {} series ({}); give one series folder per input",
                uids.len(),
                uids.join(", ")
            ),
        });
    }
    let (_, rows, cols, channels) = frames[0].pixels.dim();
    if let Some(bad) = frames.iter().find(|f| {
        let (_, r, c, ch) = f.pixels.dim();
        (r, c, ch) != (rows, cols, channels)
    }) {
        return Err(ReadError::Corrupt {
            path: folder.to_path_buf(),
            reason: format!(
                "slices of mixed sizes: {} is {:?}, {} is {rows}x{cols}",
                bad.path.display(),
                &bad.pixels.dim(),
                frames[0].path.display()
            ),
        });
    }
    let slice_step = match frames[0].geometry {
        Some(g) if frames.iter().all(|f| f.geometry.is_some()) => {
            let normal = g.normal();
            let depth = |f: &Frame| f.geometry.map_or(0.0, |g| dot(g.position, normal));
            frames.sort_by(|a, b| depth(a).total_cmp(&depth(b)));
            for pair in frames.windows(2) {
                if (depth(&pair[1]) - depth(&pair[0])).abs() < 1e-4 {
                    return Err(ReadError::Corrupt {
                        path: folder.to_path_buf(),
                        reason: format!(
                            "{} and {} share one slice position",
                            pair[0].path.display(),
                            pair[1].path.display()
                        ),
                    });
                }
            }
            let n = frames.len();
            let step = if n > 1 {
                let (a, b) = (&frames[0], &frames[n - 1]);
                let pa = a.geometry.map_or([0.0; 3], |g| g.position);
                let pb = b.geometry.map_or([0.0; 3], |g| g.position);
                scale(sub(pb, pa), 1.0 / (n - 1) as f64)
            } else {
                scale(normal, frames[0].slice_thickness.unwrap_or(1.0))
            };
            Some(step)
        }
        _ => None,
    };
    let slices: usize = frames.iter().map(|f| f.pixels.dim().0).sum();
    limits.check(
        folder,
        &[slices as u64, rows as u64, cols as u64, channels as u64],
    )?;
    let mut voxels = Array4::<f32>::zeros((slices, rows, cols, channels));
    let mut at = 0;
    for f in &frames {
        let n = f.pixels.dim().0;
        voxels
            .slice_mut(s![at..at + n, .., .., ..])
            .assign(&f.pixels);
        at += n;
    }
    let slice_mm = slice_step
        .map(|s| dot(s, s).sqrt())
        .or(frames[0].slice_thickness)
        .unwrap_or(1.0);
    let affine = affine_of(&frames[0], slice_step);
    volume_from(
        voxels,
        &frames[0],
        affine,
        slice_mm,
        folder,
        ImageFormat::DicomSeries,
    )
}

fn volume_from(
    voxels: Array4<f32>,
    first: &Frame,
    affine: Affine,
    slice_mm: f64,
    path: &Path,
    format: ImageFormat,
) -> Result<Volume, ReadError> {
    let spacing = Spacing {
        column_mm: first.pixel_spacing[1],
        row_mm: first.pixel_spacing[0],
        slice_mm,
    };
    Ok(
        Volume::new(voxels, spacing, affine, first.modality, path.to_path_buf())?
            .with_format(format)
            .with_window(first.window),
    )
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn scale(a: [f64; 3], k: f64) -> [f64; 3] {
    [a[0] * k, a[1] * k, a[2] * k]
}

/// Affine in RAS from the first slice's geometry and the step between slices (LPS).
fn affine_of(first: &Frame, slice_step: Option<[f64; 3]>) -> Affine {
    let Some(g) = first.geometry else {
        return Affine::from_spacing(Spacing {
            column_mm: first.pixel_spacing[1],
            row_mm: first.pixel_spacing[0],
            slice_mm: first.slice_thickness.unwrap_or(1.0),
        });
    };
    let along_column_index = scale(g.row_dir, first.pixel_spacing[1]);
    let along_row_index = scale(g.col_dir, first.pixel_spacing[0]);
    let step = slice_step.unwrap_or_else(|| g.normal());
    let lps_to_ras = [-1.0, -1.0, 1.0];
    let mut m = [[0.0; 4]; 4];
    for r in 0..3 {
        m[r][0] = lps_to_ras[r] * along_column_index[r];
        m[r][1] = lps_to_ras[r] * along_row_index[r];
        m[r][2] = lps_to_ras[r] * step[r];
        m[r][3] = lps_to_ras[r] * g.position[r];
    }
    m[3][3] = 1.0;
    Affine(m)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ReadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| ReadError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn looks_like_dicom(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| has_preamble(&head))
        .unwrap_or(false)
}

fn read_frame(path: &Path, limits: &Limits) -> Result<Frame, ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let obj = open_file(path).map_err(|e| corrupt(format!("not a readable DICOM file: {e}")))?;
    let rows = uint(&obj, tags::ROWS).ok_or_else(|| corrupt("no Rows attribute".into()))?;
    let cols = uint(&obj, tags::COLUMNS).ok_or_else(|| corrupt("no Columns attribute".into()))?;
    let frames = uint(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1);
    limits.check(path, &[frames, rows, cols])?;
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err(corrupt("no PixelData (not an image)".into()));
    }
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let decoded = obj
        .decode_pixel_data()
        .map_err(|e| ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("cannot decode pixel data (transfer syntax {ts}): {e}"),
        })?;
    // dicom-pixeldata builds on another ndarray major version: move the data across.
    let foreign = decoded
        .to_ndarray::<f32>()
        .map_err(|e| corrupt(format!("cannot convert pixel data: {e}")))?;
    let shape = foreign.dim();
    let mut pixels = Array4::from_shape_vec(shape, foreign.iter().copied().collect())
        .map_err(|e| corrupt(format!("pixel data shape: {e}")))?;
    if text(&obj, tags::PHOTOMETRIC_INTERPRETATION).as_deref() == Some("MONOCHROME1") {
        let max = pixels.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = pixels.iter().copied().fold(f32::INFINITY, f32::min);
        pixels.mapv_inplace(|v| max + min - v);
    }
    let floats = |tag: Tag| -> Option<Vec<f64>> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_multi_float64().ok())
    };
    let geometry = match (
        floats(tags::IMAGE_POSITION_PATIENT),
        floats(tags::IMAGE_ORIENTATION_PATIENT),
    ) {
        (Some(p), Some(o)) if p.len() == 3 && o.len() == 6 => Some(Geometry {
            position: [p[0], p[1], p[2]],
            row_dir: [o[0], o[1], o[2]],
            col_dir: [o[3], o[4], o[5]],
        }),
        _ => None,
    };
    let pixel_spacing = floats(tags::PIXEL_SPACING)
        .filter(|v| v.len() == 2 && v.iter().all(|&s| s > 0.0))
        .map_or([1.0, 1.0], |v| [v[0], v[1]]);
    let slice_thickness = floats(tags::SLICE_THICKNESS)
        .and_then(|v| v.first().copied())
        .filter(|&t| t > 0.0);
    let modality = match text(&obj, tags::MODALITY).as_deref() {
        Some("CT") => Modality::Ct,
        Some("MR") => Modality::Mr,
        _ => Modality::Other,
    };
    let window = match (
        floats(tags::WINDOW_CENTER).and_then(|v| v.first().copied()),
        floats(tags::WINDOW_WIDTH).and_then(|v| v.first().copied()),
    ) {
        (Some(center), Some(width)) => WindowLevel::new(center, width).ok(),
        _ => None,
    };
    let series_uid = text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    Ok(Frame {
        path: path.to_path_buf(),
        series_uid,
        pixels,
        geometry,
        pixel_spacing,
        slice_thickness,
        modality,
        window,
    })
}

fn uint(obj: &DefaultDicomObject, tag: Tag) -> Option<u64> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u64>().ok())
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().trim_end_matches('\0').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axial_slice_normal_points_up() {
        let g = Geometry {
            position: [0.0; 3],
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 1.0, 0.0],
        };
        assert_eq!(g.normal(), [0.0, 0.0, 1.0]);
    }

    #[test]
    fn preamble_detection_needs_dicm_at_128() {
        let mut head = vec![0u8; 132];
        assert!(!has_preamble(&head));
        head[128..132].copy_from_slice(b"DICM");
        assert!(has_preamble(&head));
        assert!(!has_preamble(&head[..100]));
    }
}
