//! The outputs of one input: masks mapped from the model frame back to the file's storage
//! order and written in every format asked for (one `match` on [`OutputFormat`]), the
//! quick-look overlay, the combined label map of a prompt-free run and the loop's
//! per-round trace.
//!
//! The command line only names the folder, the formats and the file stem; a slice's walk
//! from reader to writer never leaves the library. This module sits on top of the data
//! path: it imports `io`, `preprocess`, `correct` and `pipeline`, and nothing in the
//! library imports it.

use std::path::{Path, PathBuf};

use ndarray::{s, Array3, Axis};
use serde::Serialize;

use crate::correct::{CorrectOptions, Round};
use crate::io::{self, OutputFormat, Reoriented, SegInfo, Volume, WriteError};
use crate::pipeline::{PromptFreeSegmentation, Segmenter, VolumeSegmentation};
use crate::preprocess::{display_slice, Transform};
use crate::{Mask, Result};

/// The formats to write for `volume`: those `requested` (repeats dropped, order kept), or,
/// when none is, PNG for a 2-D image and NIfTI for a volume.
///
/// # Errors
/// [`WriteError::Unsupported`] when a DICOM SEG is asked for an input that is not DICOM
/// (a SEG references its source series).
pub fn formats_for(
    requested: &[OutputFormat],
    volume: &Volume,
) -> Result<Vec<OutputFormat>, WriteError> {
    let mut formats: Vec<OutputFormat> = Vec::with_capacity(requested.len().max(1));
    for f in requested {
        if !formats.contains(f) {
            formats.push(*f);
        }
    }
    if formats.is_empty() {
        formats.push(if volume.is_2d() {
            OutputFormat::Png
        } else {
            OutputFormat::Nifti
        });
    }
    if formats.contains(&OutputFormat::DicomSeg) && volume.series_uid().is_none() {
        return Err(WriteError::Unsupported {
            path: volume.source().to_path_buf(),
            reason: "a dicom-seg output needs a DICOM input to reference; write nifti or png \
                     for this one"
                .into(),
        });
    }
    Ok(formats)
}

/// Where and how the outputs of one input are written.
#[derive(Debug, Clone, Copy)]
pub struct Outputs<'a> {
    /// The output folder (it must exist).
    pub dir: &'a Path,
    /// The formats, as [`formats_for`] returns them.
    pub formats: &'a [OutputFormat],
    /// The input as read, in storage order: the geometry of NIfTI outputs and the series a
    /// DICOM SEG references.
    pub source: &'a Volume,
    /// The volume the model saw and the map back to storage order.
    pub frame: &'a Reoriented<'a>,
}

impl Outputs<'_> {
    /// Writes `result` (masks in the model frame) as `ID_mask.png` (2-D image),
    /// `ID_mask_png/slice_NNNN.png` (one per slice along the segmentation axis),
    /// `ID_mask.nii.gz` and `ID_seg.dcm` (segment `label`), as the formats ask, then
    /// `ID_overlay.png`: the segmented slice with the largest mask. Returns the paths
    /// written, in that order.
    ///
    /// # Errors
    /// [`WriteError`] for a file that cannot be written (no half file is left).
    pub fn write_segmentation(
        &self,
        id: &str,
        result: &VolumeSegmentation,
        label: &str,
    ) -> Result<Vec<PathBuf>, WriteError> {
        let storage = self.frame.map.mask_to_storage(&result.mask);
        let mut outputs = Vec::new();
        for format in self.formats {
            match format {
                OutputFormat::Png if self.source.is_2d() => {
                    let path = self.dir.join(format!("{id}_mask.png"));
                    io::write_mask_png(&path, &Mask(storage.index_axis(Axis(0), 0).to_owned()))?;
                    outputs.push(path);
                }
                OutputFormat::Png => {
                    let folder = self.dir.join(format!("{id}_mask_png"));
                    create_dir(&folder)?;
                    for (z, slice) in result.mask.outer_iter().enumerate() {
                        io::write_mask_png(
                            &folder.join(format!("slice_{z:04}.png")),
                            &Mask(slice.to_owned()),
                        )?;
                    }
                    outputs.push(folder);
                }
                OutputFormat::Nifti => {
                    let path = self.dir.join(format!("{id}_mask.nii.gz"));
                    io::write_mask_nifti(&path, &storage, self.source)?;
                    outputs.push(path);
                }
                OutputFormat::DicomSeg => {
                    let path = self.dir.join(format!("{id}_seg.dcm"));
                    io::write_dicom_seg(
                        &path,
                        &storage,
                        self.source,
                        &SegInfo::default().with_label(label),
                    )?;
                    outputs.push(path);
                }
            }
        }
        if let Some(z) = result.quick_look_slice() {
            let path = self.dir.join(format!("{id}_overlay.png"));
            let display = display_slice(&self.frame.volume, z, &result.intensity);
            let mask = Mask(result.mask.index_axis(Axis(0), z).to_owned());
            io::write_overlay_png(&path, display.view(), &mask)?;
            outputs.push(path);
        }
        Ok(outputs)
    }

    /// Writes `ID_labels.nii.gz`, a label map of several structures in the model frame,
    /// when NIfTI is among the formats; returns its path.
    ///
    /// # Errors
    /// [`WriteError`].
    pub fn write_label_map(
        &self,
        id: &str,
        labels: &Array3<u8>,
    ) -> Result<Option<PathBuf>, WriteError> {
        if !self.formats.contains(&OutputFormat::Nifti) {
            return Ok(None);
        }
        let path = self.dir.join(format!("{id}_labels.nii.gz"));
        io::write_mask_nifti(&path, &self.frame.map.mask_to_storage(labels), self.source)?;
        Ok(Some(path))
    }

    /// Writes the loop's trace of one structure to `ID_trace/`: each round's mask
    /// (`round_R_mask.png` for a 2-D image, else `.nii.gz`; a slice whose loop stopped
    /// earlier keeps its last mask), an overlay of the slice with the largest final mask
    /// per round, and `trace.json` (the options and every slice's rounds). `result` must
    /// have been made with [`CorrectOptions::keep_rounds`].
    ///
    /// # Errors
    /// [`WriteError`], or a post-processing failure turning the maps into masks.
    pub fn write_trace(
        &self,
        segmenter: &Segmenter,
        id: &str,
        structure: &str,
        options: &CorrectOptions,
        result: &PromptFreeSegmentation,
    ) -> Result<Vec<PathBuf>> {
        let work: &Volume = &self.frame.volume;
        let dir = self.dir.join(format!("{id}_trace"));
        create_dir(&dir)?;
        let (rows, cols) = work.slice_size();
        let transform = Transform::new(rows, cols);
        let rounds = result
            .traces
            .iter()
            .map(|t| t.maps.len())
            .max()
            .unwrap_or(0);
        let quick_look = result.segmentation.quick_look_slice();
        let mut written = Vec::new();
        for round in 0..rounds {
            let mut mask = Array3::<u8>::zeros((work.slices(), rows, cols));
            for t in &result.traces {
                if let Some(map) = t.maps.get(round).or_else(|| t.maps.last()) {
                    let slice = segmenter.logits_to_mask(map.view(), &transform)?;
                    mask.slice_mut(s![t.slice, .., ..]).assign(&slice.0);
                }
            }
            let storage = self.frame.map.mask_to_storage(&mask);
            let path = if self.source.is_2d() {
                let p = dir.join(format!("round_{round}_mask.png"));
                io::write_mask_png(&p, &Mask(storage.index_axis(Axis(0), 0).to_owned()))?;
                p
            } else {
                let p = dir.join(format!("round_{round}_mask.nii.gz"));
                io::write_mask_nifti(&p, &storage, self.source)?;
                p
            };
            written.push(path);
            if let Some(z) = quick_look {
                let p = dir.join(format!("round_{round}_overlay.png"));
                let display = display_slice(work, z, &result.segmentation.intensity);
                let m = Mask(mask.index_axis(Axis(0), z).to_owned());
                io::write_overlay_png(&p, display.view(), &m)?;
                written.push(p);
            }
        }
        let file = TraceFile {
            structure,
            options,
            slices: result
                .traces
                .iter()
                .map(|t| TraceSlice {
                    slice: t.slice,
                    chosen_round: t.chosen,
                    rounds: &t.trace,
                })
                .collect(),
        };
        let path = dir.join("trace.json");
        let json = serde_json::to_vec_pretty(&file).map_err(|e| WriteError::Encode {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        io::write_bytes(&path, &json)?;
        written.push(path);
        Ok(written)
    }
}

fn create_dir(dir: &Path) -> Result<(), WriteError> {
    std::fs::create_dir_all(dir).map_err(|source| WriteError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// `trace.json` of [`Outputs::write_trace`].
#[derive(Serialize)]
struct TraceFile<'a> {
    structure: &'a str,
    options: &'a CorrectOptions,
    slices: Vec<TraceSlice<'a>>,
}

#[derive(Serialize)]
struct TraceSlice<'a> {
    slice: usize,
    chosen_round: usize,
    rounds: &'a [Round],
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Affine, Modality, Spacing};
    use ndarray::Array4;

    fn volume(slices: usize) -> Volume {
        let spacing = Spacing {
            column_mm: 1.0,
            row_mm: 1.0,
            slice_mm: 1.0,
        };
        Volume::new(
            Array4::zeros((slices, 4, 5, 1)),
            spacing,
            Affine::from_spacing(spacing),
            Modality::Ct,
            "synthetic.nii".into(),
        )
        .unwrap()
    }

    #[test]
    fn default_format_is_png_for_an_image_and_nifti_for_a_volume() {
        assert_eq!(formats_for(&[], &volume(1)).unwrap(), [OutputFormat::Png]);
        assert_eq!(formats_for(&[], &volume(3)).unwrap(), [OutputFormat::Nifti]);
        assert_eq!(
            formats_for(
                &[OutputFormat::Nifti, OutputFormat::Png, OutputFormat::Nifti],
                &volume(3)
            )
            .unwrap(),
            [OutputFormat::Nifti, OutputFormat::Png]
        );
    }

    #[test]
    fn dicom_seg_needs_a_dicom_input() {
        let err = formats_for(&[OutputFormat::DicomSeg], &volume(3)).unwrap_err();
        assert!(err.to_string().contains("needs a DICOM input"), "{err}");
    }
}
