//! Click latency of a viewer: the median prompt-to-mask time on the demo CT
//! slice's 512x512 grid with a cached embedding and 2 ONNX Runtime threads, split into the
//! decoder call and the rest (prompt mapping, upsampling and thresholding), for a box and
//! for a refining click (box + point + the previous logits as mask prompt). Then the same
//! click while another thread embeds: the encoder and decoder hold separate locks.
//!
//! Each figure is a median wall time with the median CPU time of the whole process over
//! the same calls beside it (both ONNX Runtime threads): on a shared machine the wall time
//! swings with the load, the CPU time much less.
//!
//! Prints figures; asserts nothing about time. Run: `cargo bench --bench click`
//! (`COSAM_BENCH_RUNS=n` sets the clicks per figure, default 30). Skips without models.

use std::time::{Duration, Instant};

use cosam::model::{EncoderPrecision, ModelConfig};
use cosam::{BoxXyxy, Point, PointLabel, Prompts, Segmenter, SegmenterOptions};

const LIVER_BOX: [f64; 4] = [102.0, 194.0, 283.0, 379.0];

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// CPU time of this process so far, all threads.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), process_cpu());
    let out = f();
    (out, wall.elapsed(), process_cpu().saturating_sub(cpu))
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("COSAM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .max(1);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = ModelConfig::lite_medsam().with_threads(2);
    let seg = match Segmenter::new(SegmenterOptions::default().with_model(model)) {
        Ok(s) => s,
        Err(e) => {
            println!("click bench skipped: {e}");
            return Ok(());
        }
    };
    let volume = cosam::io::read(&root.join("data/demo/ct_abdomen_slice.dcm"))?;
    let started = Instant::now();
    let slice = seg.embed_slice(&volume, 0)?;
    let embed_ms = started.elapsed().as_secs_f64() * 1e3;
    let [x0, y0, x1, y1] = LIVER_BOX;
    let boxed = Prompts::from_box(BoxXyxy::new(x0, y0, x1, y1)?);
    let mut click = boxed.clone();
    click.points.push(Point {
        x: 190.0,
        y: 290.0,
        label: PointLabel::Positive,
    });
    let first = seg.predict(&slice, &boxed, None)?;
    let embedding = slice.embedding().expect("the demo slice has content");
    let model_click = click.to_model(slice.transform());

    let (mut boxes, mut clicks, mut clicks_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut decoder, mut decoder_cpu, mut to_mask) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (r, wall, _) = timed(|| seg.predict(&slice, &boxed, None));
        r?;
        boxes.push(wall);
        let (r, wall, cpu) = timed(|| seg.predict(&slice, &click, Some(first.logits.view())));
        r?;
        clicks.push(wall);
        clicks_cpu.push(cpu);
        let (out, wall, cpu) = timed(|| {
            seg.model()
                .decoder
                .predict(embedding, &model_click, Some(first.logits.view()))
        });
        let out = out?;
        decoder.push(wall);
        decoder_cpu.push(cpu);
        let (r, wall, _) = timed(|| seg.logits_to_mask(out.logits.view(), slice.transform()));
        r?;
        to_mask.push(wall);
    }
    let encoder = match seg.model().encoder_precision() {
        EncoderPrecision::Fp32 => "fp32",
        EncoderPrecision::Int8 => "int8",
    };
    let library = cosam::model::runtime::init(None)?.library().to_path_buf();
    println!(
        "click bench: demo CT slice 512x512, 2 threads, {encoder} encoder, post-processing on {}, {runs} runs, {} cores, load {}",
        seg.mask_ops().backend(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    println!("  ONNX Runtime: {}", library.display());
    println!("  embed (once):                     {embed_ms:8.1} ms");
    println!(
        "  predict, box:                     {:8.1} ms (median)",
        median(boxes)
    );
    let click_ms = median(clicks);
    let decoder_ms = median(decoder);
    println!(
        "  predict, click + mask prompt:     {click_ms:8.1} ms (median; CPU {:.1} ms)  <- click latency",
        median(clicks_cpu)
    );
    println!(
        "    of which the decoder call:      {decoder_ms:8.1} ms (median; CPU {:.1} ms)",
        median(decoder_cpu)
    );
    println!(
        "    upsampling + threshold:         {:8.2} ms (median)",
        median(to_mask)
    );
    println!(
        "    the rest (click - decoder):     {:8.1} ms",
        click_ms - decoder_ms
    );

    // The same click while another thread embeds the slice again and again.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut during = Vec::new();
    let mut embeds = 0;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let worker = scope.spawn(|| {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if seg.embed_slice(&volume, 0).is_ok() {
                    n += 1;
                }
            }
            n
        });
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..runs {
            let t = Instant::now();
            seg.predict(&slice, &click, Some(first.logits.view()))?;
            during.push(t.elapsed());
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        embeds = worker.join().unwrap_or(0);
        Ok(())
    })?;
    println!(
        "  click while another thread embeds: {:8.1} ms (median; {embeds} embeds ran meanwhile)",
        median(during)
    );
    Ok(())
}
