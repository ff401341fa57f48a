//! DICOM Segmentation (SEG) output: a binary, bit-packed, multi-frame object that
//! references the source series and each source image.
//!
//! One frame is written per source slice that holds mask (an empty mask gives a single
//! empty frame on the first slice, since a SEG needs at least one frame). Each frame
//! carries its plane position (LPS, from the volume's RAS affine), its source image
//! (SOP class, instance and, for multi-frame sources, frame number) and the segment it
//! belongs to; orientation and pixel spacing are shared. Pixels are packed 8 to a byte,
//! first pixel in the least significant bit, frames back to back (PS3.5 8.1.1).
//!
//! Must not import `model`, `pipeline` or `post`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use ndarray::{Array3, Axis};
use sha2::{Digest, Sha256};

use super::dicom::{SourceImage, SourceSeries};
use super::{Volume, WriteError};

/// Segmentation Storage SOP class.
const SEG_SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.66.4";
/// Explicit VR Little Endian.
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

/// A coded concept (code value, coding scheme, meaning), as DICOM code sequences hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// CodeValue, e.g. `85756007`.
    pub value: String,
    /// CodingSchemeDesignator, e.g. `SCT` (SNOMED CT) or `DCM`.
    pub scheme: String,
    /// CodeMeaning, e.g. `Tissue`.
    pub meaning: String,
}

impl Code {
    /// A code from its three parts.
    pub fn new(value: &str, scheme: &str, meaning: &str) -> Code {
        Code {
            value: value.into(),
            scheme: scheme.into(),
            meaning: meaning.into(),
        }
    }
}

/// What the SEG says about its one segment and the algorithm that made it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SegInfo {
    /// SegmentLabel, e.g. `liver`.
    pub label: String,
    /// SegmentedPropertyCategoryCodeSequence; default SCT 85756007 "Tissue".
    pub category: Code,
    /// SegmentedPropertyTypeCodeSequence; default SCT 85756007 "Tissue".
    pub property_type: Code,
    /// SegmentAlgorithmName and AlgorithmName.
    pub algorithm_name: String,
    /// AlgorithmVersion.
    pub algorithm_version: String,
    /// SegmentAlgorithmType: `SEMIAUTOMATIC` (prompted) or `AUTOMATIC`.
    pub algorithm_type: String,
    /// SeriesDescription of the SEG series.
    pub series_description: String,
    /// SeriesNumber of the SEG series.
    pub series_number: i32,
}

impl Default for SegInfo {
    fn default() -> Self {
        SegInfo {
            label: "segment".into(),
            category: Code::new("85756007", "SCT", "Tissue"),
            property_type: Code::new("85756007", "SCT", "Tissue"),
            algorithm_name: "cosam LiteMedSAM".into(),
            algorithm_version: env!("CARGO_PKG_VERSION").into(),
            algorithm_type: "SEMIAUTOMATIC".into(),
            series_description: "cosam segmentation".into(),
            series_number: 901,
        }
    }
}

impl SegInfo {
    /// Info with a segment label.
    pub fn with_label(mut self, label: &str) -> Self {
        self.label = label.into();
        self
    }

    /// Info with the segmented property category and type codes.
    pub fn with_codes(mut self, category: Code, property_type: Code) -> Self {
        self.category = category;
        self.property_type = property_type;
        self
    }

    /// Info with the algorithm name, version and type (`AUTOMATIC`, `SEMIAUTOMATIC`).
    pub fn with_algorithm(mut self, name: &str, version: &str, kind: &str) -> Self {
        self.algorithm_name = name.into();
        self.algorithm_version = version.into();
        self.algorithm_type = kind.into();
        self
    }
}

/// Writes `mask` (`[slice, row, column]` in the storage order of `volume`, non-zero =
/// foreground) as a DICOM SEG referencing the series `volume` was read from.
///
/// # Errors
/// [`WriteError::Encode`] when `volume` was not read from DICOM (a SEG must reference its
/// source images) or the mask's shape differs from the volume's; [`WriteError::Io`] when
/// the file cannot be written.
pub fn write_dicom_seg(
    path: &Path,
    mask: &Array3<u8>,
    volume: &Volume,
    info: &SegInfo,
) -> Result<(), WriteError> {
    let encode = |reason: String| WriteError::Encode {
        path: path.to_path_buf(),
        reason,
    };
    let source = volume.dicom.as_deref().ok_or_else(|| {
        encode(format!(
            "a DICOM SEG needs a DICOM input to reference; {} is not DICOM (write NIfTI \
             or PNG instead)",
            volume.source().display()
        ))
    })?;
    let (n, rows, cols, _) = volume.voxels().dim();
    if mask.dim() != (n, rows, cols) {
        return Err(encode(format!(
            "mask is {:?}, volume is {n}x{rows}x{cols}",
            mask.dim()
        )));
    }
    if source.series_uid.is_empty()
        || source
            .slices
            .iter()
            .any(|s| s.sop_instance_uid.is_empty() || s.sop_class_uid.is_empty())
    {
        return Err(encode(format!(
            "the source series {} lacks SeriesInstanceUID or SOPInstanceUID/SOPClassUID \
             (anonymized?); a DICOM SEG could not reference it",
            volume.source().display()
        )));
    }
    if source.slices.len() != n {
        return Err(encode(format!(
            "volume has {n} slices but {} source images",
            source.slices.len()
        )));
    }
    let (rows16, cols16) = (
        u16::try_from(rows).map_err(|_| encode(format!("{rows} rows exceed DICOM's limit")))?,
        u16::try_from(cols).map_err(|_| encode(format!("{cols} columns exceed DICOM's limit")))?,
    );
    let obj = build(mask, volume, source, info, (rows16, cols16));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(SEG_SOP_CLASS)
        .media_storage_sop_instance_uid(obj.1.as_str())
        .transfer_syntax(EXPLICIT_LE)
        .build()
        .map_err(|e| encode(format!("file meta: {e}")))?;
    let file = obj.0.with_exact_meta(meta);
    super::write_atomic(path, |tmp| {
        file.write_to_file(tmp)
            .map_err(|e| encode(format!("cannot write DICOM: {e}")))
    })
}

/// Builds the data set, one IOD module at a time; returns it with its SOPInstanceUID.
fn build(
    mask: &Array3<u8>,
    volume: &Volume,
    source: &SourceSeries,
    info: &SegInfo,
    (rows, cols): (u16, u16),
) -> (InMemDicomObject, String) {
    let n = mask.dim().0;
    let frames: Vec<usize> = {
        let with_mask: Vec<usize> = (0..n)
            .filter(|&k| mask.index_axis(Axis(0), k).iter().any(|&v| v != 0))
            .collect();
        if with_mask.is_empty() {
            vec![0]
        } else {
            with_mask
        }
    };
    let seed = uid_seed(mask, source, info);
    let sop_uid = derived_uid(&seed, "sop");
    let (date, time) = now_utc();

    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192");
    put_strs(&mut o, tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"]);
    put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, SEG_SOP_CLASS);
    put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &sop_uid);
    patient_and_study(&mut o, source, &seed, (&date, &time));
    series_and_frame_of_reference(&mut o, source, info, &seed);
    equipment(&mut o, info);
    image_pixel_and_segmentation_image(&mut o, info, (rows, cols), frames.len());
    multi_frame_dimension(&mut o, &derived_uid(&seed, "dimension"));
    shared_functional_groups(&mut o, volume);
    per_frame_functional_groups(&mut o, volume, source, &frames);
    common_instance_reference(&mut o, source);
    pixel_data(&mut o, mask, &frames, (rows, cols));
    (o, sop_uid)
}

/// Patient and General Study modules, copied from the source (Type 2: empty if absent),
/// with the content and series date and time.
fn patient_and_study(
    o: &mut InMemDicomObject,
    source: &SourceSeries,
    seed: &[u8; 32],
    (date, time): (&str, &str),
) {
    let study_uid = if source.study_uid.is_empty() {
        derived_uid(seed, "study")
    } else {
        source.study_uid.clone()
    };
    for (tag, vr) in [
        (tags::PATIENT_NAME, VR::PN),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_BIRTH_DATE, VR::DA),
        (tags::PATIENT_SEX, VR::CS),
        (tags::STUDY_DATE, VR::DA),
        (tags::STUDY_TIME, VR::TM),
        (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        (tags::STUDY_ID, VR::SH),
        (tags::ACCESSION_NUMBER, VR::SH),
    ] {
        let value = source
            .copied
            .iter()
            .find(|(t, _)| *t == tag)
            .map_or("", |(_, v)| v.as_str());
        put_str(o, tag, vr, value);
    }
    if let Some((_, d)) = source
        .copied
        .iter()
        .find(|(t, _)| *t == tags::STUDY_DESCRIPTION)
    {
        put_str(o, tags::STUDY_DESCRIPTION, VR::LO, d);
    }
    put_str(o, tags::STUDY_INSTANCE_UID, VR::UI, &study_uid);
    put_str(o, tags::CONTENT_DATE, VR::DA, date);
    put_str(o, tags::CONTENT_TIME, VR::TM, time);
    put_str(o, tags::SERIES_DATE, VR::DA, date);
    put_str(o, tags::SERIES_TIME, VR::TM, time);
}

/// General Series, Segmentation Series and Frame of Reference modules.
fn series_and_frame_of_reference(
    o: &mut InMemDicomObject,
    source: &SourceSeries,
    info: &SegInfo,
    seed: &[u8; 32],
) {
    let series_uid = derived_uid(seed, "series");
    let frame_of_reference = if source.frame_of_reference_uid.is_empty() {
        derived_uid(seed, "frame-of-reference")
    } else {
        source.frame_of_reference_uid.clone()
    };
    put_str(o, tags::MODALITY, VR::CS, "SEG");
    put_str(o, tags::SERIES_INSTANCE_UID, VR::UI, &series_uid);
    put_str(
        o,
        tags::SERIES_NUMBER,
        VR::IS,
        &info.series_number.to_string(),
    );
    put_str(
        o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        &info.series_description,
    );
    put_str(o, tags::INSTANCE_NUMBER, VR::IS, "1");
    put_str(o, tags::FRAME_OF_REFERENCE_UID, VR::UI, &frame_of_reference);
    put_str(o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
}

/// General and Enhanced General Equipment modules.
fn equipment(o: &mut InMemDicomObject, info: &SegInfo) {
    put_str(o, tags::MANUFACTURER, VR::LO, "cosam");
    put_str(
        o,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        &info.algorithm_name,
    );
    put_str(o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "0");
    put_str(o, tags::SOFTWARE_VERSIONS, VR::LO, &info.algorithm_version);
}

/// Image Pixel and Segmentation Image modules, with the one segment's description.
fn image_pixel_and_segmentation_image(
    o: &mut InMemDicomObject,
    info: &SegInfo,
    (rows, cols): (u16, u16),
    frames: usize,
) {
    put_u16(o, tags::SAMPLES_PER_PIXEL, 1);
    put_str(o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put_u16(o, tags::ROWS, rows);
    put_u16(o, tags::COLUMNS, cols);
    put_u16(o, tags::BITS_ALLOCATED, 1);
    put_u16(o, tags::BITS_STORED, 1);
    put_u16(o, tags::HIGH_BIT, 0);
    put_u16(o, tags::PIXEL_REPRESENTATION, 0);
    put_str(o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_str(o, tags::CONTENT_LABEL, VR::CS, "COSAM");
    put_str(
        o,
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        &info.series_description,
    );
    put_str(o, tags::CONTENT_CREATOR_NAME, VR::PN, "");
    put_str(o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_str(o, tags::NUMBER_OF_FRAMES, VR::IS, &frames.to_string());

    let mut segment = InMemDicomObject::new_empty();
    put_u16(&mut segment, tags::SEGMENT_NUMBER, 1);
    put_str(&mut segment, tags::SEGMENT_LABEL, VR::LO, &info.label);
    put_str(
        &mut segment,
        tags::SEGMENT_ALGORITHM_TYPE,
        VR::CS,
        &info.algorithm_type,
    );
    put_str(
        &mut segment,
        tags::SEGMENT_ALGORITHM_NAME,
        VR::LO,
        &info.algorithm_name,
    );
    put_seq(
        &mut segment,
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![code(&info.category)],
    );
    put_seq(
        &mut segment,
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![code(&info.property_type)],
    );
    let mut algorithm = InMemDicomObject::new_empty();
    put_seq(
        &mut algorithm,
        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
        vec![code(&Code::new("123110", "DCM", "Artificial Intelligence"))],
    );
    put_str(
        &mut algorithm,
        tags::ALGORITHM_NAME,
        VR::LO,
        &info.algorithm_name,
    );
    put_str(
        &mut algorithm,
        tags::ALGORITHM_VERSION,
        VR::LO,
        &info.algorithm_version,
    );
    put_seq(
        &mut segment,
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        vec![algorithm],
    );
    put_seq(o, tags::SEGMENT_SEQUENCE, vec![segment]);
}

/// Multi-frame Dimension module: segment number, then position.
fn multi_frame_dimension(o: &mut InMemDicomObject, dimension_uid: &str) {
    let mut org = InMemDicomObject::new_empty();
    put_str(
        &mut org,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        dimension_uid,
    );
    put_seq(o, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![org]);
    let index = |pointer: Tag, group: Tag, label: &str| {
        let mut d = InMemDicomObject::new_empty();
        put_str(
            &mut d,
            tags::DIMENSION_ORGANIZATION_UID,
            VR::UI,
            dimension_uid,
        );
        put_tag(&mut d, tags::DIMENSION_INDEX_POINTER, pointer);
        put_tag(&mut d, tags::FUNCTIONAL_GROUP_POINTER, group);
        put_str(&mut d, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
        d
    };
    put_seq(
        o,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            index(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "ReferencedSegmentNumber",
            ),
            index(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "ImagePositionPatient",
            ),
        ],
    );
}

/// The affine's column, row and slice axes (RAS+ mm per index step).
fn axes(volume: &Volume) -> [[f64; 3]; 3] {
    let m = &volume.affine().0;
    [
        [m[0][0], m[1][0], m[2][0]],
        [m[0][1], m[1][1], m[2][1]],
        [m[0][2], m[1][2], m[2][2]],
    ]
}

fn norm(v: [f64; 3]) -> f64 {
    (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()
}

/// RAS+ to DICOM's LPS patient coordinates.
fn to_lps(v: [f64; 3]) -> [f64; 3] {
    [-v[0], -v[1], v[2]]
}

/// Shared Functional Groups: orientation and pixel measures, in LPS.
fn shared_functional_groups(o: &mut InMemDicomObject, volume: &Volume) {
    let [column_vec, row_vec, slice_vec] = axes(volume);
    let unit = |v: [f64; 3]| {
        let l = norm(v);
        if l > 0.0 {
            v.map(|x| x / l)
        } else {
            v
        }
    };
    let row_dir = to_lps(unit(column_vec));
    let col_dir = to_lps(unit(row_vec));
    let mut shared = InMemDicomObject::new_empty();
    let mut orientation = InMemDicomObject::new_empty();
    put_ds(
        &mut orientation,
        tags::IMAGE_ORIENTATION_PATIENT,
        &[
            row_dir[0], row_dir[1], row_dir[2], col_dir[0], col_dir[1], col_dir[2],
        ],
    );
    put_seq(
        &mut shared,
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![orientation],
    );
    let mut measures = InMemDicomObject::new_empty();
    put_ds(
        &mut measures,
        tags::PIXEL_SPACING,
        &[norm(row_vec), norm(column_vec)],
    );
    let slice_mm = volume.spacing().slice_mm.max(norm(slice_vec).min(f64::MAX));
    put_ds(&mut measures, tags::SLICE_THICKNESS, &[slice_mm]);
    put_ds(
        &mut measures,
        tags::SPACING_BETWEEN_SLICES,
        &[norm(slice_vec).max(f64::MIN_POSITIVE)],
    );
    put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    put_seq(o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);
}

/// Per-frame Functional Groups: each frame's source image, dimension index values,
/// position (LPS, the source image's own where it has one) and segment.
fn per_frame_functional_groups(
    o: &mut InMemDicomObject,
    volume: &Volume,
    source: &SourceSeries,
    frames: &[usize],
) {
    let affine = volume.affine();
    let per_frame: Vec<InMemDicomObject> = frames
        .iter()
        .map(|&k| {
            let src = &source.slices[k];
            let mut item = InMemDicomObject::new_empty();
            let mut derivation = InMemDicomObject::new_empty();
            put_seq(
                &mut derivation,
                tags::DERIVATION_CODE_SEQUENCE,
                vec![code(&Code::new("113076", "DCM", "Segmentation"))],
            );
            let mut source_image = referenced(src);
            put_seq(
                &mut source_image,
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                vec![code(&Code::new(
                    "121322",
                    "DCM",
                    "Source image for image processing operation",
                ))],
            );
            put_seq(
                &mut derivation,
                tags::SOURCE_IMAGE_SEQUENCE,
                vec![source_image],
            );
            put_seq(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
            let mut content = InMemDicomObject::new_empty();
            put_u32s(
                &mut content,
                tags::DIMENSION_INDEX_VALUES,
                &[1, u32::try_from(k + 1).unwrap_or(u32::MAX)],
            );
            put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
            let mut position = InMemDicomObject::new_empty();
            // the referenced image's own position: the volume's mean grid put frames of
            // an unevenly spaced series up to 8 mm from the images they reference
            let p = src
                .position
                .unwrap_or_else(|| to_lps(affine.apply([0.0, 0.0, k as f64])));
            put_ds(&mut position, tags::IMAGE_POSITION_PATIENT, &p);
            put_seq(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
            let mut ident = InMemDicomObject::new_empty();
            put_u16(&mut ident, tags::REFERENCED_SEGMENT_NUMBER, 1);
            put_seq(
                &mut item,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                vec![ident],
            );
            item
        })
        .collect();
    put_seq(o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
}

/// Common Instance Reference module: the source series and each of its instances, once.
fn common_instance_reference(o: &mut InMemDicomObject, source: &SourceSeries) {
    let mut instances: Vec<InMemDicomObject> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for s in &source.slices {
        if seen.insert(s.sop_instance_uid.clone()) {
            let mut r = InMemDicomObject::new_empty();
            put_str(
                &mut r,
                tags::REFERENCED_SOP_CLASS_UID,
                VR::UI,
                &s.sop_class_uid,
            );
            put_str(
                &mut r,
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &s.sop_instance_uid,
            );
            instances.push(r);
        }
    }
    let mut series = InMemDicomObject::new_empty();
    put_str(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &source.series_uid,
    );
    put_seq(&mut series, tags::REFERENCED_INSTANCE_SEQUENCE, instances);
    put_seq(o, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
}

/// Pixel data: frames back to back, 8 pixels a byte, LSB first (padded to even length).
fn pixel_data(
    o: &mut InMemDicomObject,
    mask: &Array3<u8>,
    frames: &[usize],
    (rows, cols): (u16, u16),
) {
    let plane = usize::from(rows) * usize::from(cols);
    let total_bits = plane * frames.len();
    let mut bytes =
        vec![0u8; total_bits.div_ceil(8) + usize::from(total_bits.div_ceil(8) % 2 == 1)];
    let mut bit = 0usize;
    for &k in frames {
        for &v in mask.index_axis(Axis(0), k).iter() {
            if v != 0 {
                bytes[bit / 8] |= 1 << (bit % 8);
            }
            bit += 1;
        }
    }
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(bytes.into()),
    ));
}

fn referenced(src: &SourceImage) -> InMemDicomObject {
    let mut r = InMemDicomObject::new_empty();
    put_str(
        &mut r,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &src.sop_class_uid,
    );
    put_str(
        &mut r,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &src.sop_instance_uid,
    );
    if let Some(f) = src.frame {
        put_str(
            &mut r,
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            &f.to_string(),
        );
    }
    r
}

fn code(c: &Code) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put_str(&mut o, tags::CODE_VALUE, VR::SH, &c.value);
    put_str(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, &c.scheme);
    put_str(&mut o, tags::CODE_MEANING, VR::LO, &c.meaning);
    o
}

fn put_str(o: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    o.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn put_strs(o: &mut InMemDicomObject, tag: Tag, vr: VR, values: &[&str]) {
    o.put(DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.iter().map(|s| s.to_string()).collect()),
    ));
}

fn put_u16(o: &mut InMemDicomObject, tag: Tag, value: u16) {
    o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
}

fn put_u32s(o: &mut InMemDicomObject, tag: Tag, values: &[u32]) {
    o.put(DataElement::new(
        tag,
        VR::UL,
        PrimitiveValue::U32(values.iter().copied().collect()),
    ));
}

fn put_tag(o: &mut InMemDicomObject, tag: Tag, value: Tag) {
    o.put(DataElement::new(
        tag,
        VR::AT,
        PrimitiveValue::Tags([value].into_iter().collect()),
    ));
}

/// Decimal strings (DS) of at most 16 characters, as the standard requires.
fn put_ds(o: &mut InMemDicomObject, tag: Tag, values: &[f64]) {
    o.put(DataElement::new(
        tag,
        VR::DS,
        PrimitiveValue::Strs(values.iter().map(|&v| ds(v)).collect()),
    ));
}

fn ds(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    let v = if v.abs() < 1e-10 { 0.0 } else { v };
    for precision in (0..=10).rev() {
        let s = format!("{v:.precision$}");
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        if s.len() <= 16 {
            return if s == "-0" { "0".into() } else { s };
        }
    }
    format!("{v:.6e}")
}

fn put_seq(o: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    o.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// A seed that changes with the source series, the mask and the segment description.
fn uid_seed(mask: &Array3<u8>, source: &SourceSeries, info: &SegInfo) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(source.series_uid.as_bytes());
    for s in &source.slices {
        h.update(s.sop_instance_uid.as_bytes());
    }
    h.update(info.label.as_bytes());
    h.update(info.algorithm_name.as_bytes());
    h.update(info.algorithm_version.as_bytes());
    let (n, r, c) = mask.dim();
    h.update((n as u64).to_le_bytes());
    h.update((r as u64).to_le_bytes());
    h.update((c as u64).to_le_bytes());
    for &v in mask.iter() {
        h.update([u8::from(v != 0)]);
    }
    h.finalize().into()
}

/// A UID under the `2.25` root (ITU-T X.667: a UUID as a decimal integer), derived from
/// the seed and a purpose, so re-running on the same input gives the same UIDs.
fn derived_uid(seed: &[u8; 32], purpose: &str) -> String {
    let mut h = Sha256::new();
    h.update(seed);
    h.update(purpose.as_bytes());
    let digest: [u8; 32] = h.finalize().into();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // RFC 4122 version 4 / variant bits, so the number is a valid UUID
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

/// Current UTC date (YYYYMMDD) and time (HHMMSS).
fn now_utc() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // civil-from-days (H. Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, (rem / 60) % 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_strings_fit_sixteen_characters() {
        assert_eq!(ds(0.5), "0.5");
        assert_eq!(ds(-0.0), "0");
        assert_eq!(ds(1e-12), "0");
        assert!(ds(-123.456_789_012_345_67).len() <= 16);
        assert!(ds(1.0 / 3.0).len() <= 16);
        assert_eq!(ds(-172.0), "-172");
    }

    #[test]
    fn derived_uids_are_valid_and_distinct() {
        let seed = [7u8; 32];
        let a = derived_uid(&seed, "sop");
        let b = derived_uid(&seed, "series");
        assert_ne!(a, b);
        assert!(a.starts_with("2.25.") && a.len() <= 64, "{a}");
        assert!(a[5..].bytes().all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn dates_are_well_formed() {
        let (d, t) = now_utc();
        assert_eq!(d.len(), 8);
        assert_eq!(t.len(), 6);
        assert!(d.starts_with("20"));
    }
}
