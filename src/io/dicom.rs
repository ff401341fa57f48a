//! DICOM files and series through `dicom-object` and `dicom-pixeldata`.
//!
//! Reading happens in two steps (rule 7): [`probe`] parses a file's attributes up to the
//! pixel data (cheap: no decoding), then the pixel data of the files that make up one
//! volume is decoded straight into a buffer checked against [`Limits`].
//!
//! Geometry:
//! - a folder is scanned recursively and its files are grouped by SeriesInstanceUID; each
//!   series becomes its own [`Volume`] ([`read_folder`]);
//! - slices (files, or frames of an Enhanced CT/MR multi-frame object, whose positions
//!   come from the per-frame functional groups) are ordered by ImagePositionPatient
//!   projected on the slice normal (the cross product of ImageOrientationPatient's row
//!   and column directions), never by file name or InstanceNumber;
//! - the slice step is the vector from the first to the last position divided by the
//!   number of gaps, so a gantry tilt (positions not along the normal) is kept in the
//!   affine as a shear; uneven gaps and tilt produce warnings on the volume;
//! - patient coordinates (LPS) become RAS by negating x and y.
//!
//! Intensities: the modality LUT (RescaleSlope/RescaleIntercept, per frame for enhanced
//! objects) is applied, so CT is in HU. MONOCHROME1 is inverted over the range its bit
//! depth allows (the same mapping for every slice of a series). RGB stays 3 channels.
//!
//! Must not import `model`, `pipeline` or `post`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use ndarray::{s, Array4};
use rayon::prelude::*;

use super::{Affine, ImageFormat, Limits, Modality, ReadError, Spacing, Volume, WindowLevel};

/// Relative difference between slice gaps above which a series counts as unevenly spaced.
const UNEVEN_SPACING_TOLERANCE: f64 = 0.01;
/// Angle between the slice step and the slice normal above which the series is reported
/// as tilted (gantry tilt or sheared stack), degrees.
const TILT_TOLERANCE_DEG: f64 = 0.1;
/// Angle between ImageOrientationPatient's row and column directions further than this
/// from 90 degrees is reported, degrees.
const ORTHOGONAL_TOLERANCE_DEG: f64 = 0.1;
/// ImageOrientationPatient directions whose length is further than this from 1 are
/// reported.
const UNIT_TOLERANCE: f64 = 1e-3;
/// Two slices closer than this along the normal share a position, mm.
const SAME_POSITION_MM: f64 = 1e-4;

/// True when `head` holds the 128-byte preamble followed by `DICM`.
pub fn has_preamble(head: &[u8]) -> bool {
    head.len() >= 132 && &head[128..132] == b"DICM"
}

/// The one test of "is this meant to be a DICOM file", shared by format detection and
/// the folder scan: the preamble and `DICM`, or a `.dcm` name. A `.dcm` file without the
/// preamble is then refused by [`probe`] with a message that says so, whether it was
/// given alone or found in a folder.
pub(crate) fn is_candidate(path: &Path, head: &[u8]) -> bool {
    has_preamble(head)
        || path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
}

/// One source image (a file, or one frame of a multi-frame file) behind a volume slice:
/// what a DICOM SEG must reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceImage {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// 1-based frame number in a multi-frame source; `None` for single-frame files.
    pub frame: Option<u32>,
}

/// Identity of the series a volume was read from, kept for derived objects (DICOM SEG).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct SourceSeries {
    pub series_uid: String,
    pub study_uid: String,
    pub frame_of_reference_uid: String,
    /// Patient and study attributes copied into derived objects, by tag.
    pub copied: Vec<(Tag, String)>,
    /// One entry per volume slice, in storage (slice index) order.
    pub slices: Vec<SourceImage>,
}

/// Attributes copied from the source into a derived object (Patient and General Study
/// modules).
const COPIED_TAGS: [Tag; 10] = [
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::STUDY_DATE,
    tags::STUDY_TIME,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::STUDY_ID,
    tags::ACCESSION_NUMBER,
    tags::STUDY_DESCRIPTION,
];

/// What [`probe`] learns from a file without decoding its pixels.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DicomProbe {
    /// The file.
    pub path: PathBuf,
    /// SeriesInstanceUID (empty when absent).
    pub series_uid: String,
    /// SeriesDescription, if any.
    pub series_description: Option<String>,
    /// Transfer syntax UID of the file.
    pub transfer_syntax: String,
    /// Rows, columns, frames and samples per pixel.
    pub rows: u32,
    /// Columns per frame.
    pub columns: u32,
    /// NumberOfFrames (1 for single-frame objects).
    pub frames: u32,
    /// SamplesPerPixel (1 grey, 3 colour).
    pub samples: u32,
    /// Modality as read (CT, MR, other).
    pub modality: Modality,
    pub(crate) sop_class_uid: String,
    pub(crate) sop_instance_uid: String,
    pub(crate) study_uid: String,
    pub(crate) frame_of_reference_uid: String,
    pub(crate) copied: Vec<(Tag, String)>,
    /// Geometry the file gives but that cannot be trusted (no pixel spacing,
    /// non-orthogonal orientation), one sentence each.
    pub(crate) warnings: Vec<String>,
    /// Per-frame position and orientation (one entry per frame), in LPS.
    pub(crate) geometry: Vec<Option<Geometry>>,
    /// Row spacing, column spacing (PixelSpacing order), mm.
    pub(crate) pixel_spacing: [f64; 2],
    pub(crate) slice_thickness: Option<f64>,
    pub(crate) window: Option<WindowLevel>,
    /// The MONOCHROME1 inversion `v -> sum - v` in rescaled units, when the image is
    /// MONOCHROME1.
    pub(crate) invert_sum: Option<f32>,
    /// Uncompressed YBR_FULL colour, converted to RGB on decode (compressed YBR is
    /// converted by the JPEG decoders).
    pub(crate) ybr_full: bool,
    pub(crate) has_pixel_data: bool,
}

/// Position and orientation of a slice in patient (LPS) coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    pub position: [f64; 3],
    pub row_dir: [f64; 3],
    pub col_dir: [f64; 3],
}

impl Geometry {
    fn normal(&self) -> [f64; 3] {
        let n = cross(self.row_dir, self.col_dir);
        let len = dot(n, n).sqrt();
        if len > 0.0 {
            scale(n, 1.0 / len)
        } else {
            n
        }
    }
}

pub(crate) fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn scale(a: [f64; 3], k: f64) -> [f64; 3] {
    [a[0] * k, a[1] * k, a[2] * k]
}

/// Reads one DICOM file (single- or multi-frame); frames become slices, ordered by
/// position when the file gives per-frame positions.
///
/// # Errors
/// [`ReadError::Corrupt`] for unreadable files or missing pixel data,
/// [`ReadError::Unsupported`] for transfer syntaxes that cannot be decoded,
/// [`ReadError::TooLarge`] past `limits`.
pub fn read_file(path: &Path, limits: &Limits) -> Result<Volume, ReadError> {
    let probe = probe_with_limits(path, limits)?;
    let slices: Vec<Slot> = (0..probe.frames)
        .map(|f| Slot {
            file: 0,
            frame: f,
            geometry: probe.geometry.get(f as usize).copied().flatten(),
        })
        .collect();
    assemble(path, vec![probe], slices, limits, ImageFormat::Dicom)
}

/// Reads every DICOM file below `folder` as one series.
///
/// # Errors
/// [`ReadError::EmptyFolder`] when no file is DICOM, [`ReadError::Unsupported`] when the
/// folder holds several series (use [`read_folder`]), and any error of [`read_folder`].
pub fn read_series(folder: &Path, limits: &Limits) -> Result<Volume, ReadError> {
    let mut all = read_folder(folder, limits)?;
    if all.len() > 1 {
        let uids: Vec<String> = all
            .iter()
            .map(|r| match r {
                Ok(v) => v.series_uid().unwrap_or_default().to_string(),
                Err(e) => e.to_string(),
            })
            .collect();
        return Err(ReadError::Unsupported {
            path: folder.to_path_buf(),
            reason: format!(
                "folder holds {} series ({}); read it with io::read_inputs to get one \
                 volume per series",
                uids.len(),
                uids.join(", ")
            ),
        });
    }
    all.pop().unwrap_or_else(|| {
        Err(ReadError::EmptyFolder {
            path: folder.to_path_buf(),
        })
    })
}

/// Scans `folder` recursively and reads one volume per series (SeriesInstanceUID), in
/// the order of their first file's path. A multi-frame file is its own volume. A broken
/// series is an `Err` in the list and does not stop the others.
///
/// # Errors
/// [`ReadError::EmptyFolder`] when no file below `folder` is DICOM;
/// [`ReadError::Io`] when the folder cannot be listed.
pub fn read_folder(
    folder: &Path,
    limits: &Limits,
) -> Result<Vec<Result<Volume, ReadError>>, ReadError> {
    Ok(scan_folder(folder, limits)?
        .into_iter()
        .map(|entry| read_entry(folder, entry, limits))
        .collect())
}

/// One input found by [`scan_folder`]: the probed files of a series (or of one multi-frame
/// object), not yet decoded, or a file that could not be parsed.
#[derive(Debug)]
#[non_exhaustive]
pub enum FolderEntry {
    /// The files of one series, or one multi-frame file.
    Series(Vec<DicomProbe>),
    /// A file below the folder that is not readable DICOM.
    Failed(ReadError),
}

impl FolderEntry {
    /// The entry's SeriesInstanceUID (`None` for a failed file or when absent).
    pub fn series_uid(&self) -> Option<&str> {
        match self {
            FolderEntry::Series(probes) => probes
                .first()
                .map(|p| p.series_uid.as_str())
                .filter(|uid| !uid.is_empty()),
            FolderEntry::Failed(_) => None,
        }
    }

    /// The first file of the entry (the failed file itself for a failed entry).
    pub fn first_file(&self) -> Option<PathBuf> {
        match self {
            FolderEntry::Series(probes) => probes.first().map(|p| p.path.clone()),
            FolderEntry::Failed(e) => error_path(e),
        }
    }
}

/// The first step of [`read_folder`]: scans `folder` recursively, probes every file
/// (attributes only, no pixel decoding) and groups them by series, in the order of each
/// group's first file path. [`read_entry`] decodes one entry, so a caller can read only
/// the series it wants.
///
/// # Errors
/// [`ReadError::EmptyFolder`] when no file below `folder` is DICOM;
/// [`ReadError::Io`] when the folder cannot be listed.
pub fn scan_folder(folder: &Path, limits: &Limits) -> Result<Vec<FolderEntry>, ReadError> {
    let mut files = Vec::new();
    collect_files(folder, &mut files, 0)?;
    files.sort();
    let candidates: Vec<PathBuf> = files.into_iter().filter(|p| looks_like_dicom(p)).collect();
    limits.check_frames(folder, candidates.len() as u64)?;
    if candidates.is_empty() {
        return Err(ReadError::EmptyFolder {
            path: folder.to_path_buf(),
        });
    }
    let probes: Vec<Result<DicomProbe, ReadError>> = candidates
        .par_iter()
        .map(|p| probe_with_limits(p, limits))
        .collect();
    // Group by series; files that cannot even be parsed form their own failed input, and
    // files without pixel data (reports, SEG, RT objects) are skipped.
    let mut groups: BTreeMap<String, Vec<DicomProbe>> = BTreeMap::new();
    let mut order: Vec<(PathBuf, GroupKey)> = Vec::new();
    let mut failed: Vec<(PathBuf, ReadError)> = Vec::new();
    for p in probes {
        match p {
            Ok(p) if !p.has_pixel_data => {}
            Ok(p) => {
                let key = if p.frames > 1 {
                    format!("multiframe:{}", p.path.display())
                } else {
                    format!("series:{}", p.series_uid)
                };
                let entry = groups.entry(key.clone()).or_default();
                if entry.is_empty() {
                    order.push((p.path.clone(), GroupKey::Group(key)));
                }
                entry.push(p);
            }
            Err(e) => {
                let path = error_path(&e).unwrap_or_else(|| folder.to_path_buf());
                failed.push((path.clone(), e));
                order.push((path, GroupKey::Failed(failed.len() - 1)));
            }
        }
    }
    if groups.is_empty() && failed.is_empty() {
        return Err(ReadError::EmptyFolder {
            path: folder.to_path_buf(),
        });
    }
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut failed: Vec<Option<ReadError>> = failed.into_iter().map(|(_, e)| Some(e)).collect();
    let mut out = Vec::with_capacity(order.len());
    for (_, key) in order {
        match key {
            GroupKey::Failed(i) => {
                if let Some(e) = failed.get_mut(i).and_then(Option::take) {
                    out.push(FolderEntry::Failed(e));
                }
            }
            GroupKey::Group(key) => {
                if let Some(probes) = groups.remove(&key) {
                    out.push(FolderEntry::Series(probes));
                }
            }
        }
    }
    Ok(out)
}

/// The second step of [`read_folder`]: decodes one entry of [`scan_folder`].
///
/// # Errors
/// The entry's own error for a failed file; otherwise as [`read_folder`]'s entries.
pub fn read_entry(folder: &Path, entry: FolderEntry, limits: &Limits) -> Result<Volume, ReadError> {
    match entry {
        FolderEntry::Series(probes) => read_group(folder, probes, limits),
        FolderEntry::Failed(e) => Err(e),
    }
}

enum GroupKey {
    Group(String),
    Failed(usize),
}

fn error_path(e: &ReadError) -> Option<PathBuf> {
    match e {
        ReadError::NotFound { path }
        | ReadError::Io { path, .. }
        | ReadError::Corrupt { path, .. }
        | ReadError::Unsupported { path, .. }
        | ReadError::EmptyFolder { path }
        | ReadError::TooLarge { path, .. } => Some(path.clone()),
    }
}

/// One slice of the volume being assembled: which file and frame, where.
#[derive(Clone, Copy)]
struct Slot {
    file: usize,
    frame: u32,
    geometry: Option<Geometry>,
}

fn read_group(
    folder: &Path,
    probes: Vec<DicomProbe>,
    limits: &Limits,
) -> Result<Volume, ReadError> {
    if probes.len() == 1 && probes[0].frames > 1 {
        let p = probes[0].path.clone();
        let slots = (0..probes[0].frames)
            .map(|f| Slot {
                file: 0,
                frame: f,
                geometry: probes[0].geometry.get(f as usize).copied().flatten(),
            })
            .collect();
        return assemble(&p, probes, slots, limits, ImageFormat::Dicom);
    }
    let slots = probes
        .iter()
        .enumerate()
        .map(|(i, p)| Slot {
            file: i,
            frame: 0,
            geometry: p.geometry.first().copied().flatten(),
        })
        .collect();
    assemble(folder, probes, slots, limits, ImageFormat::DicomSeries)
}

/// Orders the slots, checks sizes, decodes the pixels and builds the volume.
fn assemble(
    path: &Path,
    probes: Vec<DicomProbe>,
    mut slots: Vec<Slot>,
    limits: &Limits,
    format: ImageFormat,
) -> Result<Volume, ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let Some(first) = probes.first() else {
        return Err(ReadError::EmptyFolder {
            path: path.to_path_buf(),
        });
    };
    let (rows, cols, samples) = (first.rows, first.columns, first.samples);
    if let Some(bad) = probes
        .iter()
        .find(|p| (p.rows, p.columns, p.samples) != (rows, cols, samples))
    {
        return Err(corrupt(format!(
            "slices of mixed sizes: {} is {}x{}x{}, {} is {rows}x{cols}x{samples}",
            bad.path.display(),
            bad.rows,
            bad.columns,
            bad.samples,
            first.path.display()
        )));
    }
    if let Some(p) = probes.iter().find(|p| !p.has_pixel_data) {
        return Err(ReadError::Corrupt {
            path: p.path.clone(),
            reason: "not an image (no Rows, Columns or PixelData)".into(),
        });
    }
    let n = slots.len();
    limits.check_frames(path, n as u64)?;
    limits.check(
        path,
        &[
            n as u64,
            u64::from(rows),
            u64::from(cols),
            u64::from(samples),
        ],
    )?;
    let mut warnings: Vec<String> = Vec::new();
    for p in &probes {
        for w in &p.warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
    }
    let label = |s: &Slot, probes: &[DicomProbe]| -> String {
        let p = probes
            .get(s.file)
            .map_or_else(String::new, |p| p.path.display().to_string());
        if n > 1 && probes.len() == 1 {
            format!("{p} frame {}", s.frame + 1)
        } else {
            p
        }
    };
    // Order by position along the normal when every slice has a position.
    let mut step: Option<[f64; 3]> = None;
    let geometries: Option<Vec<Geometry>> = slots.iter().map(|s| s.geometry).collect();
    match geometries {
        Some(g) if !g.is_empty() => {
            let normal = g[0].normal();
            if g.iter()
                .any(|x| dot(x.normal(), normal) < (TILT_TOLERANCE_DEG.to_radians()).cos())
            {
                warnings.push(
                    "slices have different orientations; geometry follows the first slice"
                        .to_string(),
                );
            }
            let depth = |s: &Slot| s.geometry.map_or(0.0, |g| dot(g.position, normal));
            slots.sort_by(|a, b| depth(a).total_cmp(&depth(b)));
            for pair in slots.windows(2) {
                if (depth(&pair[1]) - depth(&pair[0])).abs() < SAME_POSITION_MM {
                    return Err(corrupt(format!(
                        "{} and {} share one slice position ({:.3} mm along the normal); \
                         several acquisitions (echoes, phases, duplicates) in one series \
                         are not supported",
                        label(&pair[0], &probes),
                        label(&pair[1], &probes),
                        depth(&pair[0])
                    )));
                }
            }
            if n > 1 {
                let pos = |s: &Slot| s.geometry.map_or([0.0; 3], |g| g.position);
                let total = sub(pos(&slots[n - 1]), pos(&slots[0]));
                let mean = scale(total, 1.0 / (n - 1) as f64);
                let gaps: Vec<f64> = slots
                    .windows(2)
                    .map(|w| depth(&w[1]) - depth(&w[0]))
                    .collect();
                let min = gaps.iter().copied().fold(f64::INFINITY, f64::min);
                let max = gaps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if max - min > UNEVEN_SPACING_TOLERANCE * max.abs().max(1e-9) {
                    warnings.push(format!(
                        "uneven slice spacing: gaps from {min:.3} to {max:.3} mm; the volume \
                         uses their mean {:.3} mm, so positions between slices are \
                         approximate",
                        dot(mean, normal)
                    ));
                }
                let len = dot(mean, mean).sqrt();
                if len > 0.0 {
                    let cos = (dot(mean, normal) / len).clamp(-1.0, 1.0);
                    let angle = cos.acos().to_degrees();
                    if angle > TILT_TOLERANCE_DEG {
                        warnings.push(format!(
                            "gantry tilt or sheared stack: slices advance {angle:.2} degrees \
                             off their normal; the affine keeps the shear"
                        ));
                    }
                }
                step = Some(mean);
            }
        }
        _ => {
            if n > 1 {
                warnings.push(
                    "no ImagePositionPatient/ImageOrientationPatient: slices kept in file \
                     order with no world position"
                        .to_string(),
                );
            }
        }
    }
    // Decode pixels straight into the volume, one file at a time.
    let mut voxels = Array4::<f32>::zeros((n, rows as usize, cols as usize, samples as usize));
    let mut by_file: BTreeMap<usize, Vec<(usize, u32)>> = BTreeMap::new();
    for (z, s) in slots.iter().enumerate() {
        by_file.entry(s.file).or_default().push((z, s.frame));
    }
    /// (slice index, frame) pairs wanted from one file, and that file's decoded frames.
    type Decoded = (Vec<(usize, u32)>, Result<Array4<f32>, ReadError>);
    let decoded: Vec<Decoded> = by_file
        .into_par_iter()
        .map(|(file, wanted)| {
            let result = match probes.get(file) {
                Some(p) => decode(p),
                None => Err(corrupt("internal: slice refers to no file".into())),
            };
            (wanted, result)
        })
        .collect();
    for (wanted, result) in decoded {
        let pixels = result?;
        for (z, frame) in wanted {
            let frame = frame as usize;
            if frame >= pixels.dim().0
                || (pixels.dim().1, pixels.dim().2) != (rows as usize, cols as usize)
            {
                return Err(corrupt(format!(
                    "decoded pixel data is {:?}, header says {} frames of {rows}x{cols}",
                    pixels.dim(),
                    frame + 1
                )));
            }
            if pixels.dim().3 != samples as usize {
                return Err(corrupt(format!(
                    "decoded pixel data has {} samples per pixel, header says {samples}",
                    pixels.dim().3
                )));
            }
            voxels
                .slice_mut(s![z, .., .., ..])
                .assign(&pixels.slice(s![frame, .., .., ..]));
        }
    }
    let geometry0 = slots.first().and_then(|s| s.geometry);
    let slice_mm = step
        .map(|s| dot(s, s).sqrt())
        .or(first.slice_thickness)
        .unwrap_or(1.0);
    let step = step.or_else(|| geometry0.map(|g| scale(g.normal(), slice_mm)));
    let affine = affine_of(geometry0, first.pixel_spacing, step, slice_mm);
    let spacing = Spacing {
        column_mm: first.pixel_spacing[1],
        row_mm: first.pixel_spacing[0],
        slice_mm,
    };
    let source = SourceSeries {
        series_uid: first.series_uid.clone(),
        study_uid: first.study_uid.clone(),
        frame_of_reference_uid: first.frame_of_reference_uid.clone(),
        copied: first.copied.clone(),
        slices: slots
            .iter()
            .map(|s| {
                let p = probes.get(s.file);
                SourceImage {
                    sop_class_uid: p.map(|p| p.sop_class_uid.clone()).unwrap_or_default(),
                    sop_instance_uid: p.map(|p| p.sop_instance_uid.clone()).unwrap_or_default(),
                    frame: p.filter(|p| p.frames > 1).map(|_| s.frame + 1),
                }
            })
            .collect(),
    };
    let mut volume = Volume::new(voxels, spacing, affine, first.modality, path.to_path_buf())?
        .with_format(format)
        .with_window(first.window);
    volume.warnings = warnings;
    volume.series_description = first.series_description.clone();
    volume.dicom = Some(Arc::new(source));
    Ok(volume)
}

/// Affine in RAS from the first slice's geometry and the step between slices (LPS).
fn affine_of(
    geometry: Option<Geometry>,
    pixel_spacing: [f64; 2],
    step: Option<[f64; 3]>,
    slice_mm: f64,
) -> Affine {
    let Some(g) = geometry else {
        return Affine::from_spacing(Spacing {
            column_mm: pixel_spacing[1],
            row_mm: pixel_spacing[0],
            slice_mm,
        });
    };
    let along_column_index = scale(g.row_dir, pixel_spacing[1]);
    let along_row_index = scale(g.col_dir, pixel_spacing[0]);
    let step = step.unwrap_or_else(|| scale(g.normal(), slice_mm));
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

/// Deepest folder nesting followed when scanning for DICOM files.
const MAX_FOLDER_DEPTH: usize = 32;

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), ReadError> {
    if depth > MAX_FOLDER_DEPTH {
        return Ok(());
    }
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
        // file_type does not follow symlinks, so a link loop cannot recurse forever.
        // Only regular files (or links to them): opening a FIFO or a device would block.
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_files(&path, out, depth + 1)?,
            Ok(t) if t.is_file() => out.push(path),
            Ok(t) if t.is_symlink() && path.metadata().is_ok_and(|m| m.is_file()) => out.push(path),
            _ => {}
        }
    }
    Ok(())
}

fn looks_like_dicom(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(132);
    let read = std::fs::File::open(path).and_then(|f| f.take(132).read_to_end(&mut head));
    read.is_ok() && is_candidate(path, &head)
}

/// Reads a whole regular file whose size fits the memory budget.
pub(crate) fn read_bounded(path: &Path, limits: &Limits) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::from_io(path, e))?;
    if !meta.is_file() {
        return Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    limits.check_memory(path, "reading the file", meta.len())?;
    std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses a DICOM file's attributes up to (not including) the pixel data, with default
/// [`Limits`].
///
/// # Errors
/// As [`probe_with_limits`].
pub fn probe(path: &Path) -> Result<DicomProbe, ReadError> {
    probe_with_limits(path, &Limits::default())
}

/// Parses a DICOM file's attributes up to (not including) the pixel data; the file size
/// and the frames the header claims are checked against `limits` before anything is
/// allocated for them.
///
/// # Errors
/// [`ReadError::Corrupt`] when the file is not readable DICOM or lacks Rows/Columns on an
/// image, [`ReadError::Unsupported`] for a transfer syntax cosam cannot decode,
/// [`ReadError::TooLarge`] past `limits`.
pub fn probe_with_limits(path: &Path, limits: &Limits) -> Result<DicomProbe, ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = read_bounded(path, limits)?;
    if !has_preamble(&bytes) {
        return Err(corrupt(
            "not a DICOM Part 10 file (no 128-byte preamble followed by DICM); rewrite it \
             with a preamble, e.g. dcmconv +F, or pydicom's dcmwrite(..., \
             enforce_file_format=True)"
                .into(),
        ));
    }
    super::dicom_guard::check_lengths(&bytes, true)
        .map_err(|e| corrupt(format!("malformed DICOM: {e}")))?;
    drop(bytes);
    let obj = guard(path, || {
        OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(path)
    })?
    .map_err(|e| corrupt(format!("not a readable DICOM file: {e}")))?;
    let ts = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .trim()
        .to_string();
    check_transfer_syntax(path, &ts)?;
    // Objects without Rows/Columns (reports, RT structures, DICOMDIR) are not images;
    // a folder scan skips them. Whether PixelData is really there is checked on decode.
    let rows = uint(&obj, tags::ROWS);
    let cols = uint(&obj, tags::COLUMNS);
    let (rows, cols, has_pixel_data) = match (rows, cols) {
        (Some(r), Some(c)) if r > 0 && c > 0 => (r, c, true),
        (None, None) => (0, 0, false),
        _ => return Err(corrupt("no valid Rows/Columns attributes".into())),
    };
    let frames = uint(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let samples = uint(&obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let to_u32 = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| corrupt(format!("{what} {v} is out of range")))
    };
    let (rows, columns, frames, samples) = (
        to_u32(rows, "Rows")?,
        to_u32(cols, "Columns")?,
        to_u32(frames, "NumberOfFrames")?,
        to_u32(samples, "SamplesPerPixel")?,
    );
    // The header's claims, before anything is allocated per frame.
    limits.check_frames(path, u64::from(frames))?;
    limits.check(
        path,
        &[
            u64::from(frames),
            u64::from(rows),
            u64::from(columns),
            u64::from(samples),
        ],
    )?;
    let mut warnings = Vec::new();
    let modality = match text(&obj, tags::MODALITY).as_deref() {
        Some("CT") => Modality::Ct,
        Some("MR") => Modality::Mr,
        _ => Modality::Other,
    };
    // Geometry: top level for classic objects; functional groups for enhanced ones.
    let shared = first_item(&obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame: Vec<&InMemDicomObject> = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .map(|items| items.iter().collect())
        .unwrap_or_default();
    let find = |frame: Option<&InMemDicomObject>, seq: Tag, tag: Tag| -> Option<Vec<f64>> {
        frame
            .and_then(|f| nested_floats(f, seq, tag))
            .or_else(|| shared.and_then(|s| nested_floats(s, seq, tag)))
            .or_else(|| floats_of(&obj, tag))
    };
    let orientation_of = |frame: Option<&InMemDicomObject>| {
        find(
            frame,
            tags::PLANE_ORIENTATION_SEQUENCE,
            tags::IMAGE_ORIENTATION_PATIENT,
        )
    };
    let position_of = |frame: Option<&InMemDicomObject>| {
        find(
            frame,
            tags::PLANE_POSITION_SEQUENCE,
            tags::IMAGE_POSITION_PATIENT,
        )
    };
    let geometry_of =
        |frame: Option<&InMemDicomObject>| match (position_of(frame), orientation_of(frame)) {
            (Some(p), Some(o))
                if p.len() == 3 && o.len() == 6 && p.iter().chain(&o).all(|v| v.is_finite()) =>
            {
                let unit = |v: [f64; 3]| {
                    let len = dot(v, v).sqrt();
                    if len > 0.0 {
                        scale(v, 1.0 / len)
                    } else {
                        v
                    }
                };
                let g = Geometry {
                    position: [p[0], p[1], p[2]],
                    row_dir: unit([o[0], o[1], o[2]]),
                    col_dir: unit([o[3], o[4], o[5]]),
                };
                let n = cross(g.row_dir, g.col_dir);
                (dot(n, n) > 1e-6).then_some(g)
            }
            _ => None,
        };
    let geometry: Vec<Option<Geometry>> = if frames > 1 && per_frame.len() == frames as usize {
        per_frame.iter().map(|f| geometry_of(Some(f))).collect()
    } else if frames > 1 {
        // A multi-frame object without per-frame positions (cine, XA): no geometry.
        vec![None; frames as usize]
    } else {
        vec![geometry_of(per_frame.first().copied())]
    };
    let frame0 = per_frame.first().copied();
    let spacing_found = find(frame0, tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING);
    let pixel_spacing = match spacing_found
        .as_ref()
        .filter(|v| v.len() == 2 && v.iter().all(|&s| s.is_finite() && s > 0.0))
    {
        Some(v) => [v[0], v[1]],
        None if has_pixel_data => {
            warnings.push(match &spacing_found {
                Some(v) => format!(
                    "PixelSpacing {v:?} is not two positive sizes; 1 mm assumed, so mm, \
                     mm^2 and mm^3 figures are not physical"
                ),
                None => "no PixelSpacing; 1 mm assumed, so mm, mm^2 and mm^3 figures are \
                         not physical"
                    .to_string(),
            });
            [1.0, 1.0]
        }
        None => [1.0, 1.0],
    };
    if let Some(o) = orientation_of(frame0).filter(|o| o.len() == 6) {
        let (r, c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let (lr, lc) = (dot(r, r).sqrt(), dot(c, c).sqrt());
        if lr > 0.0 && lc > 0.0 {
            let angle = (dot(r, c) / (lr * lc)).clamp(-1.0, 1.0).acos().to_degrees();
            if (angle - 90.0).abs() > ORTHOGONAL_TOLERANCE_DEG {
                warnings.push(format!(
                    "ImageOrientationPatient's row and column directions are {angle:.2} \
                     degrees apart, not 90; the affine keeps that shear"
                ));
            }
            if (lr - 1.0).abs() > UNIT_TOLERANCE || (lc - 1.0).abs() > UNIT_TOLERANCE {
                warnings.push(format!(
                    "ImageOrientationPatient's directions have lengths {lr:.4} and {lc:.4}, \
                     not 1; they are normalised"
                ));
            }
        }
    }
    let slice_thickness = find(frame0, tags::PIXEL_MEASURES_SEQUENCE, tags::SLICE_THICKNESS)
        .and_then(|v| v.first().copied())
        .filter(|&t| t.is_finite() && t > 0.0);
    let window = match (
        find(frame0, tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_CENTER)
            .and_then(|v| v.first().copied()),
        find(frame0, tags::FRAME_VOILUT_SEQUENCE, tags::WINDOW_WIDTH)
            .and_then(|v| v.first().copied()),
    ) {
        (Some(center), Some(width)) => WindowLevel::new(center, width).ok(),
        _ => None,
    };
    let invert_sum =
        if text(&obj, tags::PHOTOMETRIC_INTERPRETATION).as_deref() == Some("MONOCHROME1") {
            let bits = uint(&obj, tags::BITS_STORED).unwrap_or(16).clamp(1, 32) as i32;
            let signed = uint(&obj, tags::PIXEL_REPRESENTATION) == Some(1);
            // stored range [lo, hi]; inverted stored value = lo + hi - p
            let (lo, hi) = if signed {
                (-(2f64.powi(bits - 1)), 2f64.powi(bits - 1) - 1.0)
            } else {
                (0.0, 2f64.powi(bits) - 1.0)
            };
            let slope = find(
                frame0,
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                tags::RESCALE_SLOPE,
            )
            .and_then(|v| v.first().copied())
            .filter(|s| s.is_finite() && *s != 0.0)
            .unwrap_or(1.0);
            let intercept = find(
                frame0,
                tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
                tags::RESCALE_INTERCEPT,
            )
            .and_then(|v| v.first().copied())
            .filter(|s| s.is_finite())
            .unwrap_or(0.0);
            Some((slope * (lo + hi) + 2.0 * intercept) as f32)
        } else {
            None
        };
    let photometric = text(&obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    let native = TransferSyntaxRegistry
        .get(&ts)
        .is_some_and(|t| !t.is_encapsulated_pixel_data());
    let ybr_full = native && photometric == "YBR_FULL" && samples == 3;
    let copied = COPIED_TAGS
        .iter()
        .filter_map(|&t| text(&obj, t).map(|v| (t, v)))
        .collect();
    Ok(DicomProbe {
        path: path.to_path_buf(),
        series_uid: text(&obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        series_description: text(&obj, tags::SERIES_DESCRIPTION).filter(|s| !s.is_empty()),
        transfer_syntax: ts,
        rows,
        columns,
        frames,
        samples,
        modality,
        sop_class_uid: text(&obj, tags::SOP_CLASS_UID)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                obj.meta()
                    .media_storage_sop_class_uid()
                    .trim_end_matches('\0')
                    .to_string()
            }),
        sop_instance_uid: text(&obj, tags::SOP_INSTANCE_UID)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                obj.meta()
                    .media_storage_sop_instance_uid()
                    .trim_end_matches('\0')
                    .to_string()
            }),
        study_uid: text(&obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        frame_of_reference_uid: text(&obj, tags::FRAME_OF_REFERENCE_UID).unwrap_or_default(),
        copied,
        warnings,
        geometry,
        pixel_spacing,
        slice_thickness,
        window,
        invert_sum,
        ybr_full,
        has_pixel_data,
    })
}

/// Refuses transfer syntaxes whose pixel data this build cannot decode, naming them.
fn check_transfer_syntax(path: &Path, uid: &str) -> Result<(), ReadError> {
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) if ts.can_decode_all() && !ts.is_unsupported_pixel_encapsulation() => Ok(()),
        Some(ts) => Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "unsupported transfer syntax {uid} ({}) in {}{}",
                ts.name(),
                path.display(),
                if uid.starts_with("1.2.840.10008.1.2.4.8") {
                    "; JPEG-LS needs cosam built with --features jpeg-ls"
                } else {
                    ""
                }
            ),
        }),
        None => Err(ReadError::Unsupported {
            path: path.to_path_buf(),
            reason: format!(
                "unsupported transfer syntax {uid} (unknown) in {}",
                path.display()
            ),
        }),
    }
}

/// Decodes all frames of a file: `[frame, row, column, sample]`, modality LUT applied,
/// MONOCHROME1 inverted.
fn decode(p: &DicomProbe) -> Result<Array4<f32>, ReadError> {
    let path = p.path.as_path();
    let corrupt = |reason: String| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let obj: DefaultDicomObject = match super::dicom_guard::check_lengths(&bytes, false) {
        Ok(()) => match guard(path, || dicom_object::open_file(path))? {
            Ok(obj) => obj,
            Err(e) => salvage_before_trailing_data(&bytes, path, p)
                .ok_or_else(|| corrupt(format!("not a readable DICOM file: {e}")))?,
        },
        // The header up to the pixel data passed the probe: whatever is broken lies
        // after it, and elements after the pixel data are of no use to cosam.
        Err(e) => salvage_before_trailing_data(&bytes, path, p)
            .ok_or_else(|| corrupt(format!("malformed DICOM: {e}")))?,
    };
    drop(bytes);
    if obj.get(tags::PIXEL_DATA).is_none() {
        return Err(corrupt("no PixelData (not an image)".into()));
    }
    let foreign = guard(path, || {
        let decoded = obj
            .decode_pixel_data()
            .map_err(|e| ReadError::Unsupported {
                path: path.to_path_buf(),
                reason: format!(
                    "cannot decode pixel data in transfer syntax {} ({}): {e}",
                    p.transfer_syntax,
                    TransferSyntaxRegistry
                        .get(&p.transfer_syntax)
                        .map_or("unknown", |t| t.name())
                ),
            })?;
        decoded
            .to_ndarray::<f32>()
            .map_err(|e| corrupt(format!("cannot convert pixel data: {e}")))
    })??;
    // dicom-pixeldata builds on another ndarray major version: move the data across.
    let shape = foreign.dim();
    let data = if foreign.is_standard_layout() {
        match foreign.into_raw_vec_and_offset() {
            (data, None | Some(0)) => data,
            (data, Some(offset)) => data.get(offset..).map(<[f32]>::to_vec).unwrap_or_default(),
        }
    } else {
        foreign.iter().copied().collect()
    };
    let mut pixels = Array4::from_shape_vec(shape, data)
        .map_err(|e| corrupt(format!("pixel data shape: {e}")))?;
    if let Some(sum) = p.invert_sum {
        pixels.mapv_inplace(|v| sum - v);
    }
    if p.ybr_full && pixels.dim().3 == 3 {
        for mut px in pixels.lanes_mut(ndarray::Axis(3)) {
            let (y, cb, cr) = (px[0], px[1] - 128.0, px[2] - 128.0);
            // ITU-R BT.601 full range (PS3.3 C.7.6.3.1.2)
            px[0] = (y + 1.402 * cr).clamp(0.0, 255.0);
            px[1] = (y - 0.344_136 * cb - 0.714_136 * cr).clamp(0.0, 255.0);
            px[2] = (y + 1.772 * cb).clamp(0.0, 255.0);
        }
    }
    Ok(pixels)
}

/// Re-reads a native little-endian file cut right after its PixelData element.
fn salvage_before_trailing_data(
    bytes: &[u8],
    path: &Path,
    p: &DicomProbe,
) -> Option<DefaultDicomObject> {
    let explicit = match p.transfer_syntax.as_str() {
        "1.2.840.10008.1.2.1" => true,
        "1.2.840.10008.1.2" => false,
        _ => return None,
    };
    let min_len =
        u64::from(p.rows) * u64::from(p.columns) * u64::from(p.samples) * u64::from(p.frames) / 8;
    let tag = [0xE0u8, 0x7F, 0x10, 0x00];
    let mut from = 132;
    while let Some(at) = bytes
        .get(from..)?
        .windows(4)
        .position(|w| w == tag)
        .map(|i| i + from)
    {
        from = at + 4;
        let field = |o: usize| -> Option<u64> {
            let b = bytes.get(at + o..at + o + 4)?;
            Some(u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        };
        let (len, header) = if explicit {
            match bytes.get(at + 4..at + 6) {
                Some(b"OW") | Some(b"OB") => (field(8)?, 12),
                _ => continue,
            }
        } else {
            (field(4)?, 8)
        };
        let end = usize::try_from(len).ok()?.checked_add(at + header)?;
        if len >= min_len && end <= bytes.len() {
            let cut = bytes.get(128..end)?;
            super::dicom_guard::check_lengths(bytes.get(..end)?, false).ok()?;
            return guard(path, || dicom_object::from_reader(cut)).ok()?.ok();
        }
    }
    None
}

/// Runs a third-party decoder, turning a panic inside it into an error naming the file.
fn guard<T>(path: &Path, f: impl FnOnce() -> T) -> Result<T, ReadError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| ReadError::Corrupt {
        path: path.to_path_buf(),
        reason: "the DICOM decoder failed on malformed data".into(),
    })
}

fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag).and_then(|e| e.items()).and_then(|i| i.first())
}

fn nested_floats(item: &InMemDicomObject, seq: Tag, tag: Tag) -> Option<Vec<f64>> {
    first_item(item, seq).and_then(|inner| floats_of(inner, tag))
}

fn floats_of(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)
        .and_then(|e: &InMemElement| e.to_multi_float64().ok())
        .filter(|v| !v.is_empty())
}

fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u64> {
    obj.get(tag).and_then(|e| e.to_int::<u64>().ok())
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().trim_end_matches('\0').trim().to_string())
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

    #[test]
    fn lps_positions_become_ras_in_the_affine() {
        let g = Geometry {
            position: [10.0, 20.0, 30.0],
            row_dir: [1.0, 0.0, 0.0],
            col_dir: [0.0, 1.0, 0.0],
        };
        let a = affine_of(Some(g), [0.5, 0.25], Some([0.0, 0.0, 2.0]), 2.0);
        // column index moves along +x (LPS) = -x (RAS), scaled by the column spacing
        assert_eq!(a.apply([2.0, 4.0, 1.0]), [-10.5, -22.0, 32.0]);
    }

    #[test]
    fn unknown_transfer_syntax_is_named() {
        let e = check_transfer_syntax(Path::new("x.dcm"), "1.2.3.4").unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported transfer syntax 1.2.3.4"),
            "{e}"
        );
        assert!(check_transfer_syntax(Path::new("x.dcm"), "1.2.840.10008.1.2.1").is_ok());
    }
}
