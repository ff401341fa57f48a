//! Post-processing benchmark: each operation on the CPU and the GPU path, for one 512x512
//! slice and for a 512x512x300 volume, as medians and GPU/CPU ratios in one run.
//!
//! Inputs are fixed: the brain box logits of the parity fixture (real decoder output),
//! shifted by a few pixels per slice so that slices differ, upsampled to 512x512.
//! GPU times include uploads and readbacks. The GPU column is skipped without an adapter.
//!
//! Run: `cargo bench --bench post` (`COSAM_BENCH_RUNS=n` sets the runs per figure,
//! `COSAM_BENCH_SLICES=n` the volume depth, `COSAM_BENCH_CPU_ONLY=1` skips the GPU).

use std::time::{Duration, Instant};

use cosam::post::{
    Border, Cleanup, Connectivity, CpuMaskOps, GpuMaskOps, MaskOps, PostError, THRESHOLD_LOGIT,
};
use cosam::{Spacing, Transform};
use ndarray::{s, Array3};

fn read_npy_f32(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn logits(slices: usize) -> Array3<f32> {
    // the repository the bench was built in, or the current directory (a copied binary)
    let relative = "tests/fixtures/parity/brain_box_logits.npy";
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    let path = if built.exists() {
        built
    } else {
        std::path::PathBuf::from(relative)
    };
    let base = read_npy_f32(&path);
    assert_eq!(base.len(), 256 * 256, "{}", path.display());
    Array3::from_shape_fn((slices, 256, 256), |(z, r, c)| {
        let shift = z % 16;
        base[r * 256 + (c + 256 - shift) % 256]
    })
}

fn median(mut d: Vec<Duration>) -> f64 {
    d.sort();
    d[d.len() / 2].as_secs_f64() * 1e3
}

/// Median milliseconds of `runs` calls after one warm-up, or the first error.
fn time(runs: usize, f: impl Fn() -> Result<(), PostError>) -> Result<f64, PostError> {
    f()?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed());
    }
    Ok(median(samples))
}

type Op<'a> = (
    &'a str,
    Box<dyn Fn(&dyn MaskOps) -> Result<(), PostError> + 'a>,
);

fn ops<'a>(logits: &'a Array3<f32>, mask: &'a Array3<u8>, prob: &'a Array3<f32>) -> Vec<Op<'a>> {
    let t = Transform::new(512, 512);
    let spacing = Spacing {
        column_mm: 0.78,
        row_mm: 0.78,
        slice_mm: 1.0,
    };
    vec![
        (
            "upsample+threshold",
            Box::new(move |o: &dyn MaskOps| {
                o.upsample_threshold(logits.view(), &t, THRESHOLD_LOGIT)?;
                Ok(())
            }),
        ),
        (
            "label (8-conn, per slice)",
            Box::new(move |o: &dyn MaskOps| {
                o.label(mask.view(), Connectivity::Planar)?;
                Ok(())
            }),
        ),
        (
            "keep largest (per slice)",
            Box::new(move |o: &dyn MaskOps| {
                o.keep_largest(mask.view(), Connectivity::Planar)?;
                Ok(())
            }),
        ),
        (
            "keep largest (26-conn 3D)",
            Box::new(move |o: &dyn MaskOps| {
                o.keep_largest(mask.view(), Connectivity::Volumetric)?;
                Ok(())
            }),
        ),
        (
            "remove smaller than 100",
            Box::new(move |o: &dyn MaskOps| {
                o.remove_small(mask.view(), Connectivity::Planar, 100)?;
                Ok(())
            }),
        ),
        (
            "fill holes",
            Box::new(move |o: &dyn MaskOps| {
                o.fill_holes(mask.view())?;
                Ok(())
            }),
        ),
        (
            "opening r=2",
            Box::new(move |o: &dyn MaskOps| {
                o.open(mask.view(), 2)?;
                Ok(())
            }),
        ),
        (
            "closing r=2",
            Box::new(move |o: &dyn MaskOps| {
                o.close(mask.view(), 2)?;
                Ok(())
            }),
        ),
        (
            "distance transform (mm)",
            Box::new(move |o: &dyn MaskOps| {
                o.distance(mask.view(), spacing, Border::Background)?;
                Ok(())
            }),
        ),
        (
            "top-10 of a probability map",
            Box::new(move |o: &dyn MaskOps| {
                o.top_k(prob.view(), 10)?;
                Ok(())
            }),
        ),
        (
            "postprocess: upsample..fill (fused)",
            Box::new(move |o: &dyn MaskOps| {
                let cleanup = Cleanup::default()
                    .with_keep_largest(Connectivity::Planar)
                    .with_fill_holes(true);
                o.postprocess(logits.view(), &t, THRESHOLD_LOGIT, &cleanup)?;
                Ok(())
            }),
        ),
        (
            "upsample+threshold+largest+fill",
            Box::new(move |o: &dyn MaskOps| {
                let m = o.upsample_threshold(logits.view(), &t, THRESHOLD_LOGIT)?;
                let m = o.keep_largest(m.view(), Connectivity::Planar)?;
                o.fill_holes(m.view())?;
                Ok(())
            }),
        ),
    ]
}

fn main() {
    let runs: usize = std::env::var("COSAM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let depth: usize = std::env::var("COSAM_BENCH_SLICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let cpu = CpuMaskOps::new();
    let gpu = match GpuMaskOps::new() {
        _ if std::env::var("COSAM_BENCH_CPU_ONLY").is_ok_and(|v| v == "1") => None,
        Ok(g) => Some(g),
        Err(e) => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            println!("no GPU adapter ({text}): CPU figures only");
            None
        }
    };
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!(
        "cosam post bench: commit {}, {} CPU threads (rayon), GPU: {}, median of {runs} runs",
        commit.trim(),
        rayon::current_num_threads(),
        gpu.as_ref().map_or("none", |g| g.adapter()),
    );
    for (label, slices) in [("512x512 slice", 1), ("512x512x{depth} volume", depth)] {
        let label = label.replace("{depth}", &depth.to_string());
        let l = logits(slices);
        let t = Transform::new(512, 512);
        let mask = cpu
            .upsample_threshold(l.view(), &t, THRESHOLD_LOGIT)
            .unwrap();
        let prob = cpu
            .upsample(l.view(), &t)
            .unwrap()
            .mapv(|v| 1.0 / (1.0 + (-v).exp()));
        let fg = mask.iter().filter(|&&v| v != 0).count();
        println!(
            "\n{label}: {:.1}% foreground in slice 0, {} voxels",
            100.0
                * mask
                    .slice(s![0, .., ..])
                    .iter()
                    .filter(|&&v| v != 0)
                    .count() as f64
                / (512.0 * 512.0),
            fg
        );
        println!(
            "{:<34} {:>10} {:>10} {:>9}",
            "operation", "CPU ms", "GPU ms", "CPU/GPU"
        );
        let runs = if slices > 1 { runs.clamp(1, 3) } else { runs };
        for (name, op) in ops(&l, &mask, &prob) {
            let c = match time(runs, || op(&cpu)) {
                Ok(ms) => ms,
                Err(e) => {
                    println!("{name:<34} CPU failed: {e}");
                    continue;
                }
            };
            match gpu.as_ref().map(|g| time(runs, || op(g))) {
                Some(Ok(gm)) => println!("{name:<34} {c:>10.1} {gm:>10.1} {:>9.2}", c / gm),
                Some(Err(e)) => println!("{name:<34} {c:>10.1}   GPU: {e} (CPU fallback)"),
                None => println!("{name:<34} {c:>10.1} {:>10} {:>9}", "-", "-"),
            }
        }
    }
}
