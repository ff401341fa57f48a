//! A DICOM file's attributes: the cheap header probe ([`probe`]), the geometry it
//! records and the typed accessors of data set elements.

use super::guard::Refusal;
use super::*;

/// Position and orientation of a slice in patient (LPS) coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    pub position: [f64; 3],
    pub row_dir: [f64; 3],
    pub col_dir: [f64; 3],
}

impl Geometry {
    pub(super) fn normal(&self) -> [f64; 3] {
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

pub(super) fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(super) fn scale(a: [f64; 3], k: f64) -> [f64; 3] {
    [a[0] * k, a[1] * k, a[2] * k]
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
    // the deflated data set, inflated for the check, shares the budget with the file
    let max_inflated = limits.max_memory_bytes.saturating_sub(bytes.len() as u64);
    super::guard::check_lengths(&bytes, true, max_inflated).map_err(|e| match e {
        Refusal::Malformed(reason) => corrupt(format!("malformed DICOM: {reason}")),
        Refusal::InflatesPast(_) => ReadError::TooLarge {
            path: path.to_path_buf(),
            reason: format!(
                "{e}, over the memory budget of {} MiB with the file (raise it with \
                 --max-memory-mb)",
                limits.max_memory_bytes >> 20
            ),
        },
    })?;
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
    // Checked before a decoder sizes anything by them (found reading dicom-pixeldata): its
    // rescale table has 2^BitsStored entries, so BitsStored 31 under BitsAllocated 16
    // asked for 2 GB; a JPEG 2000 decoder sizes its tiles' state by the components.
    if has_pixel_data {
        if samples != 1 && samples != 3 {
            return Err(ReadError::Unsupported {
                path: path.to_path_buf(),
                reason: format!("{samples} samples per pixel (1 or 3 are supported)"),
            });
        }
        if let (Some(allocated), Some(stored)) = (
            uint(&obj, tags::BITS_ALLOCATED),
            uint(&obj, tags::BITS_STORED),
        ) {
            if stored == 0 || stored > allocated {
                return Err(corrupt(format!(
                    "BitsStored {stored} is not from 1 to BitsAllocated ({allocated})"
                )));
            }
        }
    }
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
        max_inflated,
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

pub(super) fn first_item(obj: &InMemDicomObject, tag: Tag) -> Option<&InMemDicomObject> {
    obj.get(tag).and_then(|e| e.items()).and_then(|i| i.first())
}

pub(super) fn nested_floats(item: &InMemDicomObject, seq: Tag, tag: Tag) -> Option<Vec<f64>> {
    first_item(item, seq).and_then(|inner| floats_of(inner, tag))
}

pub(super) fn floats_of(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)
        .and_then(|e: &InMemElement| e.to_multi_float64().ok())
        .filter(|v| !v.is_empty())
}

pub(super) fn uint(obj: &InMemDicomObject, tag: Tag) -> Option<u64> {
    obj.get(tag).and_then(|e| e.to_int::<u64>().ok())
}

pub(super) fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim().trim_end_matches('\0').trim().to_string())
}
