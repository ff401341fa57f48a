//! `cosam segment --task`: prompt-free segmentation with the CoSAM heads, per structure,
//! with a quality score and review flag in report.json and, with `--trace`, every round.

use std::path::PathBuf;

use anyhow::{bail, Context};
use cosam::correct::{CorrectOptions, Quality};
use cosam::model::{HeadsSource, TaskHeads};
use cosam::output::Outputs;
use cosam::{Segmenter, Volume};
use indicatif::ProgressBar;
use ndarray::Array3;
use serde::Serialize;

use super::{CaseReport, Job};
use crate::cli::args::SegmentArgs;

/// The heads and loop settings of one run.
pub(super) struct TaskRun {
    heads: TaskHeads,
    /// (index in the heads, name) of each structure to segment.
    structures: Vec<(usize, String)>,
    options: CorrectOptions,
    review_threshold: f64,
    trace: bool,
}

/// One structure of a prompt-free case in report.json.
#[derive(Serialize)]
pub(super) struct StructureReport {
    name: String,
    /// Its value in the combined label map (`ID_labels.nii.gz`).
    label_value: usize,
    voxels: usize,
    volume_mm3: Option<f64>,
    area_mm2: Option<f64>,
    quality: Quality,
    needs_review: bool,
    /// Mean rounds run per slice with content (the coarse mask is round 0).
    mean_rounds: f64,
    #[serde(serialize_with = "super::lossy_paths")]
    outputs: Vec<PathBuf>,
}

impl TaskRun {
    pub(super) fn load(
        segmenter: &Segmenter,
        source: &HeadsSource,
        args: &SegmentArgs,
    ) -> anyhow::Result<TaskRun> {
        let heads = segmenter
            .load_heads(source)
            .context("cannot load the CoSAM heads")?;
        let names = &heads.info.structures;
        let structures = if args.structures.is_empty() {
            names.iter().cloned().enumerate().collect()
        } else {
            let mut chosen: Vec<(usize, String)> = Vec::new();
            for s in &args.structures {
                if chosen.iter().any(|(_, c)| c == s) {
                    bail!("--structures names '{s}' twice");
                }
                match heads.structure_index(s) {
                    Some(i) => chosen.push((i, s.clone())),
                    None => bail!(
                        "task '{}' has no structure '{s}'; its structures: {}",
                        heads.info.task,
                        names.join(", ")
                    ),
                }
            }
            chosen
        };
        let options = args.correct_options(heads.info.error_threshold);
        Ok(TaskRun {
            heads,
            structures,
            options,
            review_threshold: f64::from(args.review_threshold),
            trace: args.trace,
        })
    }

    pub(super) fn run_volume(
        &self,
        segmenter: &Segmenter,
        job: &Job,
        id: &str,
        outputs: &Outputs<'_>,
        bar: &ProgressBar,
    ) -> anyhow::Result<CaseReport> {
        let volume = outputs.source;
        let work: &Volume = &outputs.frame.volume;
        let n = work.slices();
        let spacing = volume.spacing();
        let single = volume.slices() == 1;
        let mut labels = Array3::<u8>::zeros((n, work.slice_size().0, work.slice_size().1));
        let mut structures = Vec::new();
        let mut written_all = Vec::new();
        let options = self.options.with_keep_rounds(self.trace);
        let indices: Vec<usize> = self.structures.iter().map(|(i, _)| *i).collect();
        // one walk over the slices: each is embedded once for every structure
        let results = segmenter.segment_volume_structures(
            work,
            &self.heads,
            &indices,
            &options,
            job.slices.map(|(a, b)| a..=b),
            |z| bar.set_message(format!("{id} slice {}/{n}", z + 1)),
        )?;
        for ((index, name), result) in self.structures.iter().zip(results) {
            // a voxel claimed by two structures keeps the first one's label
            labels.zip_mut_with(&result.segmentation.mask, |l, &m| {
                if *l == 0 && m != 0 {
                    *l = (*index + 1) as u8;
                }
            });
            let structure_id = format!("{id}_{name}");
            let mut written =
                outputs.write_segmentation(&structure_id, &result.segmentation, name)?;
            if self.trace {
                written.extend(outputs.write_trace(
                    segmenter,
                    &structure_id,
                    name,
                    &self.options,
                    &result,
                )?);
            }
            let voxels = result.segmentation.voxel_count();
            let with_content = result.traces.len().max(1) as f64;
            structures.push(StructureReport {
                name: name.clone(),
                label_value: index + 1,
                voxels,
                volume_mm3: (!single).then(|| voxels as f64 * volume.voxel_volume_mm3()),
                area_mm2: single.then(|| voxels as f64 * spacing.pixel_area_mm2()),
                quality: result.quality,
                needs_review: result.quality.needs_review(self.review_threshold),
                mean_rounds: result
                    .traces
                    .iter()
                    .map(|t| t.trace.len() - 1)
                    .sum::<usize>() as f64
                    / with_content,
                outputs: written.clone(),
            });
            written_all.extend(written);
        }
        if self.structures.len() > 1 {
            written_all.extend(outputs.write_label_map(id, &labels)?);
        }
        let voxels = structures.iter().map(|s| s.voxels).sum();
        Ok(CaseReport {
            slices_segmented: job.slices.map_or(n, |(a, b)| b + 1 - a),
            mask_pixels: voxels,
            needs_review: Some(structures.iter().any(|s| s.needs_review)),
            task: Some(self.heads.info.task.clone()),
            structures,
            outputs: written_all,
            ..CaseReport::ok(job, id, volume)
        })
    }
}
