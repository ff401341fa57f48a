//! DICOM files and series through `dicom-object` and `dicom-pixeldata`.
//!
//! Reading happens in two steps, so that a header is checked before any pixel is decoded:
//! [`probe`] parses a file's attributes up to the pixel data (cheap: no decoding), then
//! the pixel data of the files that make up one volume is decoded straight into a buffer
//! checked against [`Limits`].
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

mod assemble;
mod attributes;
mod decode;
pub(crate) mod guard;

use assemble::*;
use attributes::*;
pub use attributes::{probe, probe_with_limits};
use decode::*;

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
/// A slice further than this share of the mean step beside the line the volume's affine
/// draws through the slices is warned about.
const OFF_LINE_TOLERANCE: f64 = 0.01;

/// True when `head` holds the 128-byte preamble followed by `DICM`.
pub fn has_preamble(head: &[u8]) -> bool {
    head.len() >= 132 && &head[128..132] == b"DICM"
}

/// The one test of "is this meant to be a DICOM file", shared by format detection and
/// the folder scan: the preamble and `DICM`, or a `.dcm` name. A `.dcm` file without the
/// preamble is then refused by [`probe`] with a message that says so, whether it was
/// given alone or found in a folder.
pub(crate) fn is_candidate(path: &Path, head: &[u8]) -> bool {
    named_dcm(path) || has_preamble(head)
}

/// A `.dcm` name: a candidate whatever its first bytes, so callers need not read them.
pub(crate) fn named_dcm(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("dcm"))
}

/// One source image (a file, or one frame of a multi-frame file) behind a volume slice:
/// what a DICOM SEG must reference.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SourceImage {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// 1-based frame number in a multi-frame source; `None` for single-frame files.
    pub frame: Option<u32>,
    /// The image's own ImagePositionPatient (LPS, mm), where it has one.
    pub position: Option<[f64; 3]>,
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
    /// Most bytes a deflated data set may inflate to when the file is read again: what
    /// the probe's memory budget left beside the file.
    pub(crate) max_inflated: u64,
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
    // a .dcm name decides without opening the file: its header is read once, by probe
    if named_dcm(path) {
        return true;
    }
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
