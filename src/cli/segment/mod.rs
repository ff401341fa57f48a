//! `cosam segment`: run the pipeline over a batch and write masks, overlays and
//! report.json. A failing input is reported and skipped; the batch goes on.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cosam::io;
use cosam::output::{formats_for, Outputs};
use cosam::{Modality, PreprocessOptions, Prompts, Segmenter, Spacing, Volume};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::args::{parse_box, parse_point, SegmentArgs};
use super::{shard_report_path, ShardInfo};
use resume::Fingerprint;
use shard::{hex, path_key, Plan};

mod prompt_free;
mod resume;
mod shard;

/// One input with its prompts.
struct Job {
    id: String,
    input: PathBuf,
    /// Its path relative to the command-line root or the cases file, `/` separated: the
    /// sharding key (a DICOM folder's series are keyed by SeriesInstanceUID instead).
    key: String,
    /// True when the input was found by listing a folder given with -i.
    expanded: bool,
    /// Prompt errors are per case, so a bad case does not stop the batch.
    prompts: Result<Prompts, String>,
    slices: Option<(usize, usize)>,
    /// Name of the segmented structure (DICOM SEG segment label).
    label: Option<String>,
}

/// A case of a `--cases` file; unknown keys (reference, label, source) are ignored.
#[derive(Deserialize)]
struct CaseEntry {
    id: Option<String>,
    input: PathBuf,
    #[serde(rename = "box")]
    bbox: Option<Vec<f64>>,
    #[serde(default)]
    points: Vec<Vec<f64>>,
    slices: Option<(usize, usize)>,
    label: Option<String>,
}

#[derive(Deserialize)]
struct CasesFile {
    cases: Vec<CaseEntry>,
}

#[derive(Serialize)]
struct RunReport {
    cosam_version: &'static str,
    model: String,
    /// Which image encoder ran: fp32 or int8.
    encoder: String,
    /// Which execution provider ran the image encoder: openvino or cpu.
    provider: &'static str,
    #[serde(serialize_with = "lossy_path")]
    onnxruntime: PathBuf,
    threads: usize,
    post_processing: String,
    /// `--cleanup` as run (`none` without it).
    cleanup: String,
    axis: String,
    started_unix_s: u64,
    seconds: f64,
    ok: usize,
    failed: usize,
    /// Inputs skipped by --resume because they were already done (counted in ok).
    resumed: usize,
    /// With --shard: which shard this is, and the batch it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<ShardInfo>,
    inputs: Vec<serde_json::Value>,
}

#[derive(Serialize, Default)]
struct CaseReport {
    id: String,
    /// The sharding key (path relative to the input root, or SeriesInstanceUID).
    key: String,
    #[serde(serialize_with = "lossy_path")]
    input: PathBuf,
    status: &'static str,
    error: Option<String>,
    /// SeriesInstanceUID of a DICOM input.
    series_uid: Option<String>,
    /// SeriesDescription of a DICOM input.
    series_description: Option<String>,
    /// What the reader noticed but accepted (uneven spacing, gantry tilt, ...).
    warnings: Vec<String>,
    seconds: f64,
    modality: Option<Modality>,
    spacing_mm: Option<Spacing>,
    slices_segmented: usize,
    /// Mean of the IoU head over segmented, non-constant slices.
    predicted_iou: Option<f32>,
    mask_pixels: usize,
    /// For single-slice inputs.
    mask_area_mm2: Option<f64>,
    /// For multi-slice inputs.
    mask_volume_mm3: Option<f64>,
    #[serde(serialize_with = "lossy_paths")]
    outputs: Vec<PathBuf>,
    /// Prompt-free runs: the task and one entry per structure.
    #[serde(skip_serializing_if = "Option::is_none")]
    task: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    structures: Vec<prompt_free::StructureReport>,
    /// Prompt-free runs: true when any structure's quality score is below the threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    needs_review: Option<bool>,
}

/// A path in report.json: its text, with bytes that are not UTF-8 replaced (U+FFFD), so
/// that a file name in another encoding cannot stop the report from being written.
fn lossy_path<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

/// As [`lossy_path`], for a list.
fn lossy_paths<S: serde::Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
}

pub fn run(args: &SegmentArgs) -> anyhow::Result<bool> {
    let jobs = jobs(args)?;
    if jobs.is_empty() {
        bail!("no inputs: give -i PATH... or --cases FILE");
    }
    check_output_outside_inputs(&args.output, &jobs)?;
    let shard = args
        .shard
        .as_ref()
        .map(|s| s.resolve(&|name| std::env::var(name).ok()))
        .transpose()?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create output folder {}", args.output.display()))?;
    for stale in io::remove_stale_partials(&args.output) {
        eprintln!(
            "cosam: removed {}, left by an interrupted run",
            stale.display()
        );
    }
    let config = args.model.config();
    let options = args
        .model
        .segmenter_options()
        .with_preprocess(PreprocessOptions::default().with_intensity(args.intensity()))
        .with_cleanup(args.cleanup);
    let segmenter = Segmenter::new(options).context("cannot load the model")?;
    let limits = args.limits();
    let task = match args.heads_source() {
        Some(source) => Some(prompt_free::TaskRun::load(&segmenter, &source, args)?),
        None => None,
    };

    let plan = Plan::new(&jobs, &limits);
    let sorted_keys = plan.sorted_keys.clone();
    let units = plan.take(shard.as_ref());
    if let Some(s) = &shard {
        eprintln!(
            "cosam: shard {}/{} ({}): {} of {} inputs",
            s.index,
            s.count,
            s.source,
            units.len(),
            sorted_keys.len()
        );
    }
    let models_sha256 = resume::models_sha256(&segmenter, args)?;

    let started = Instant::now();
    let bar = ProgressBar::new(units.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let assigned = units.len();
    let mut resumed = 0;
    let mut reports: Vec<serde_json::Value> = Vec::with_capacity(units.len());
    for unit in units {
        let (job, id, key) = (unit.job, unit.id.clone(), unit.key.clone());
        let fingerprint = Fingerprint {
            models_sha256: models_sha256.clone(),
            options_sha256: resume::options_sha256(args, job),
        };
        if args.resume {
            if let Some(mut done) = resume::load_done(&args.output, &key, &id, &fingerprint) {
                resumed += 1;
                if let Some(entry) = done.as_object_mut() {
                    entry.insert("resumed".into(), true.into());
                }
                reports.push(done);
                bar.inc(1);
                continue;
            }
        }
        resume::forget(&args.output, &id);
        bar.set_message(id.clone());
        let t0 = Instant::now();
        let read = match &job.prompts {
            Ok(_) => unit.read(&limits),
            Err(reason) => Err(io::ReadError::Unsupported {
                path: job.input.clone(),
                reason: reason.clone(),
            }),
        };
        let outcome = read
            .map_err(anyhow::Error::from)
            .and_then(|volume| run_volume(&segmenter, task.as_ref(), job, &id, volume, args, &bar));
        let report = match outcome {
            Ok(report) => report,
            Err(e) => {
                let message = name_input(&job.input, &format!("{e:#}"));
                bar.suspend(|| eprintln!("cosam: {message}"));
                CaseReport {
                    id: id.clone(),
                    input: job.input.clone(),
                    status: "failed",
                    error: Some(message),
                    ..CaseReport::default()
                }
            }
        };
        let report = CaseReport {
            key: key.clone(),
            seconds: t0.elapsed().as_secs_f64(),
            ..report
        };
        let entry = serde_json::to_value(&report).context("cannot encode a report entry")?;
        if report.status == "ok" {
            // written last: --resume trusts the outputs only once this exists
            if let Err(e) = resume::write_done(&args.output, &key, &id, &fingerprint, &entry) {
                bar.suspend(|| eprintln!("cosam: warning: {id}: {e:#}"));
            }
        }
        reports.push(entry);
        bar.inc(1);
    }
    bar.finish_and_clear();

    let failed = reports
        .iter()
        .filter(|r| r.get("status").and_then(serde_json::Value::as_str) != Some("ok"))
        .count();
    let report = RunReport {
        cosam_version: env!("CARGO_PKG_VERSION"),
        model: segmenter.model().manifest().model.clone(),
        encoder: segmenter.model().encoder_precision().to_string(),
        provider: segmenter.model().provider().name(),
        onnxruntime: cosam::model::runtime::init(None)
            .map(|r| r.library().to_path_buf())
            .unwrap_or_default(),
        threads: config.threads,
        post_processing: segmenter.post_processing().to_string(),
        cleanup: args.cleanup.to_string(),
        axis: format!("{:?}", args.axis).to_lowercase(),
        started_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        seconds: started.elapsed().as_secs_f64(),
        ok: reports.len() - failed,
        failed,
        resumed,
        shard: shard.as_ref().map(|s| ShardInfo {
            index: s.index,
            count: s.count,
            source: s.source.clone(),
            engine_job_id: s.engine_job_id.clone(),
            host: shard::host_name(),
            keys_total: sorted_keys.len(),
            keys_sha256: shard::keys_digest(&sorted_keys),
            keys: sorted_keys.clone(),
            assigned,
            resumed,
        }),
        inputs: reports,
    };
    let report_path = match &shard {
        Some(s) => {
            let path = shard_report_path(&args.output, s.index, s.count);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            path
        }
        None => args.output.join("report.json"),
    };
    let json = serde_json::to_vec_pretty(&report).context("cannot encode report.json")?;
    io::write_bytes(&report_path, &json)?;
    let reused = if resumed > 0 {
        format!(" ({resumed} already done)")
    } else {
        String::new()
    };
    eprintln!(
        "cosam: {} of {} inputs segmented{reused} in {:.1} s; report: {}",
        report.ok,
        report.ok + failed,
        report.seconds,
        report_path.display()
    );
    Ok(failed == 0)
}

/// Prefixes the input's path unless the message already names it.
fn name_input(input: &Path, message: &str) -> String {
    let shown = input.display().to_string();
    if message.contains(&shown) {
        message.to_string()
    } else {
        format!("{shown}: {message}")
    }
}

fn jobs(args: &SegmentArgs) -> anyhow::Result<Vec<Job>> {
    let mut jobs: Vec<Job> = args
        .inputs
        .iter()
        .flat_map(|root| {
            expand(root)
                .into_iter()
                .map(move |p| (root, p.as_path() != root.as_path(), p))
        })
        .map(|(root, expanded, input)| Job {
            id: stem(&input),
            key: shard::input_key(root, &input),
            expanded,
            input,
            prompts: Ok(args.prompts()),
            slices: args.slices,
            label: args.label.clone(),
        })
        .collect();
    if let Some(path) = &args.cases {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read cases file {}", path.display()))?;
        let file: CasesFile = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a valid cases file", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for case in file.cases {
            let input = base.join(&case.input);
            let prompts = if case.bbox.is_none() && case.points.is_empty() {
                Ok(args.prompts())
            } else {
                case_prompts(&case)
                    .map_err(|reason| format!("bad prompt in the cases file: {reason}"))
            };
            let (id, prompts) = match case.id {
                Some(id) if safe_id(&id) != id => {
                    let reason = format!(
                        "case id '{id}' is not a plain name: ids name output files inside -o, \
                         so they cannot hold '/', '\\', control characters or be '.' or '..'"
                    );
                    (safe_id(&id), Err(reason))
                }
                Some(id) => (id, prompts),
                None => (stem(&input), prompts),
            };
            jobs.push(Job {
                id,
                key: path_key(&case.input),
                expanded: false,
                input,
                prompts,
                slices: case.slices.or(args.slices),
                label: case.label.or_else(|| args.label.clone()),
            });
        }
    }
    Ok(jobs)
}

/// Refuses an output folder that is an input folder, or inside a DICOM folder (scanned
/// recursively): a later run would read cosam's own masks as inputs.
fn check_output_outside_inputs(output: &Path, jobs: &[Job]) -> anyhow::Result<()> {
    let out = resolve(output);
    let mut folders: Vec<(&Path, bool)> = jobs
        .iter()
        .filter(|j| j.input.is_dir())
        .map(|j| (j.input.as_path(), true))
        .collect();
    // a folder of images expanded into its files: the files' folder, not recursive
    folders.extend(
        jobs.iter()
            .filter(|j| j.expanded)
            .filter_map(|j| j.input.parent().map(|p| (p, false))),
    );
    for (folder, recursive) in folders {
        let dir = resolve(folder);
        if out == dir || (recursive && out.starts_with(&dir)) {
            bail!(
                "output folder {} is {} input folder {}: a later run would read cosam's own \
                 masks as inputs; choose another -o",
                output.display(),
                if out == dir { "the" } else { "inside the" },
                folder.display()
            );
        }
    }
    Ok(())
}

/// An absolute path with symbolic links resolved as far as the path exists.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = existing.canonicalize().unwrap_or(existing);
    out.extend(rest.iter().rev());
    out
}

/// `name` made safe as the start of an output file name inside -o: path separators,
/// control characters and undecodable bytes (U+FFFD) become `_`; an empty, `.` or `..`
/// name becomes `input`.
fn safe_id(name: &str) -> String {
    let id: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() || c == char::REPLACEMENT_CHARACTER {
                '_'
            } else {
                c
            }
        })
        .collect();
    if id.is_empty() || id == "." || id == ".." {
        "input".to_string()
    } else {
        id
    }
}

/// A folder of DICOM files is one input (its series; see `io::read_inputs`), and every
/// other image file directly in it (PNG, NIfTI...) is its own input beside it; any other
/// folder stands for the files in it, each its own input, so a folder of PNG or NIfTI
/// files is a batch.
fn expand(input: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(input) else {
        return vec![input.to_path_buf()];
    };
    let hidden = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    };
    let (mut files, mut folders) = (Vec::new(), Vec::new());
    for entry in entries.flatten() {
        let path = entry.path();
        if hidden(&path) {
            continue;
        }
        // file_type does not follow links, so a link loop is never entered
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            folders.push(path);
        } else if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    folders.sort();
    let formats: Vec<_> = files.iter().map(|f| io::detect_format(f)).collect();
    let dicom = formats
        .iter()
        .any(|f| matches!(f, Ok(io::ImageFormat::Dicom)));
    if files.is_empty() {
        vec![input.to_path_buf()]
    } else if dicom {
        // the DICOM reader takes the folder and everything below it
        let others = files.into_iter().zip(formats).filter_map(|(f, format)| {
            matches!(format, Ok(io::ImageFormat::Nifti | io::ImageFormat::Raster)).then_some(f)
        });
        std::iter::once(input.to_path_buf()).chain(others).collect()
    } else {
        // a series in a subfolder beside a README or a thumbnail was dropped, silently
        files
            .into_iter()
            .chain(folders.iter().flat_map(|f| expand(f)))
            .collect()
    }
}

fn case_prompts(case: &CaseEntry) -> Result<Prompts, String> {
    let join = |v: &[f64]| v.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
    let bbox = case
        .bbox
        .as_deref()
        .map(|b| parse_box(&join(b)))
        .transpose()?;
    let points = case
        .points
        .iter()
        .map(|p| parse_point(&join(p)))
        .collect::<Result<_, _>>()?;
    Ok(Prompts { points, bbox })
}

/// The file name without image extensions; a folder's own name.
fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into());
    let lower = name.to_ascii_lowercase();
    for ext in [
        ".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
    ] {
        if lower.ends_with(ext) {
            return safe_id(&name[..name.len() - ext.len()]);
        }
    }
    safe_id(&name)
}

fn unique_id(id: &str, used: &mut HashSet<String>) -> String {
    let mut candidate = id.to_string();
    let mut n = 2;
    while !used.insert(candidate.clone()) {
        candidate = format!("{id}-{n}");
        n += 1;
    }
    candidate
}

fn run_volume(
    segmenter: &Segmenter,
    task: Option<&prompt_free::TaskRun>,
    job: &Job,
    id: &str,
    mut volume: Volume,
    args: &SegmentArgs,
    bar: &ProgressBar,
) -> anyhow::Result<CaseReport> {
    if let Some(modality) = args.modality.modality() {
        volume.set_modality(modality);
    }
    let formats = formats_for(&args.format, &volume)?;
    // Along another axis one image would become a stack of one-pixel-high slices (a
    // coronal localizer in an axial batch).
    let axis = match io::AnatomicalAxis::of_stored_slices(volume.affine()) {
        Some(own) if volume.slices() == 1 && !volume.is_2d() && own != args.axis => {
            volume.add_warning(format!(
                "a single {own} image: segmented in its own plane, not along --axis {}",
                args.axis
            ));
            own
        }
        _ => args.axis,
    };
    for w in volume.warnings() {
        bar.suspend(|| eprintln!("cosam: warning: {}: {w}", job.input.display()));
    }
    let reoriented = io::reorient(&volume, axis)?;
    let outputs = Outputs {
        dir: &args.output,
        formats: &formats,
        source: &volume,
        frame: &reoriented,
    };
    if let Some(task) = task {
        return task.run_volume(segmenter, job, id, &outputs, bar);
    }
    let prompts = job
        .prompts
        .clone()
        .map_err(|reason| anyhow::anyhow!("bad prompt in the cases file: {reason}"))?;
    // prompts are in the file's own slice pixels; a resliced volume takes them in its frame
    let prompts = match reoriented.pixel_map() {
        Some(pixels) => {
            let (rows, cols) = pixels.storage_size();
            prompts.check_inside(rows, cols)?;
            prompts.mapped(|x, y| pixels.to_frame(x, y))
        }
        None => prompts,
    };
    let work: &Volume = &reoriented.volume;
    let n = work.slices();
    let result = segmenter.segment_volume(work, &prompts, job.slices.map(|(a, b)| a..=b), |z| {
        bar.set_message(format!("{id} slice {}/{n}", z + 1));
    })?;
    let outputs =
        outputs.write_segmentation(id, &result, job.label.as_deref().unwrap_or("segment"))?;
    let spacing = volume.spacing();
    let pixels = result.voxel_count();
    let single = volume.slices() == 1;
    Ok(CaseReport {
        slices_segmented: result.slices.len(),
        predicted_iou: result.mean_iou(),
        mask_pixels: pixels,
        mask_area_mm2: single.then(|| pixels as f64 * spacing.pixel_area_mm2()),
        mask_volume_mm3: (!single).then(|| pixels as f64 * volume.voxel_volume_mm3()),
        outputs,
        ..CaseReport::ok(job, id, &volume)
    })
}

impl CaseReport {
    /// A successful entry for `volume` with what the input itself says; callers fill in
    /// the results.
    fn ok(job: &Job, id: &str, volume: &Volume) -> CaseReport {
        CaseReport {
            id: id.to_string(),
            input: job.input.clone(),
            status: "ok",
            series_uid: volume.series_uid().map(str::to_string),
            series_description: volume.series_description().map(str::to_string),
            warnings: volume.warnings().to_vec(),
            modality: Some(volume.modality()),
            spacing_mm: Some(volume.spacing()),
            ..CaseReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_drop_image_extensions() {
        assert_eq!(stem(Path::new("/a/ct.nii.gz")), "ct");
        assert_eq!(stem(Path::new("b/Slice.DCM")), "Slice");
        assert_eq!(stem(Path::new("series_dir")), "series_dir");
    }

    #[test]
    fn ids_cannot_leave_the_output_folder() {
        for (raw, safe) in [
            ("../x", ".._x"),
            ("/abs/x", "_abs_x"),
            ("a\\b", "a_b"),
            ("..", "input"),
            ("", "input"),
            ("caf\u{FFFD}", "caf_"),
            ("ct-01 (arterial)", "ct-01 (arterial)"),
        ] {
            assert_eq!(safe_id(raw), safe, "{raw}");
            let out = Path::new("/o").join(format!("{}_mask.png", safe_id(raw)));
            assert_eq!(out.parent(), Some(Path::new("/o")), "{raw}");
        }
    }

    #[test]
    fn ids_are_made_unique() {
        let mut used = HashSet::new();
        assert_eq!(unique_id("ct", &mut used), "ct");
        assert_eq!(unique_id("ct", &mut used), "ct-2");
        assert_eq!(unique_id("ct", &mut used), "ct-3");
    }

    #[test]
    fn messages_name_the_input_once() {
        assert_eq!(
            name_input(Path::new("a.png"), "a.png: broken"),
            "a.png: broken"
        );
        assert_eq!(
            name_input(Path::new("a.png"), "box outside"),
            "a.png: box outside"
        );
    }
}
