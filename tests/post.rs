//! Post-processing: every operation on the CPU and the GPU path, on the same inputs
//! (random masks, the demo reference masks and real decoder logits, edge cases), must give
//! identical binary and integer results and float results within `post::FLOAT_TOLERANCE`.
//!
//! The GPU tests skip when no wgpu adapter exists, unless `COSAM_TEST_GPU=1` (set by CI
//! after installing lavapipe), where a missing adapter fails them.

use cosam::post::{
    self, mask_ops, Backend, Border, Cleanup, Connectivity, CpuMaskOps, Device, GpuMaskOps,
    MaskOps, FLOAT_TOLERANCE, THRESHOLD_LOGIT,
};
use cosam::{Spacing, Transform};
use ndarray::{s, Array3, ArrayView3, Axis};

use crate::util::{demo, fixture, read_mask_png, read_npy_f32};

/// The GPU path, or `None` (test skipped) when there is no adapter and CI does not
/// require one.
fn gpu() -> Option<GpuMaskOps> {
    match GpuMaskOps::new() {
        Ok(g) => Some(g),
        Err(e) => {
            if std::env::var("COSAM_TEST_GPU").is_ok_and(|v| v == "1") {
                panic!("COSAM_TEST_GPU=1 but the GPU path cannot run: {e:?}");
            }
            eprintln!("skipping a GPU test: {e}");
            None
        }
    }
}

/// xorshift64*: deterministic test data without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn noise(dims: (usize, usize, usize), density: f32, seed: u64) -> Array3<u8> {
    let mut rng = Rng(seed);
    Array3::from_shape_fn(dims, |_| u8::from(rng.unit() < density))
}

/// Random discs and rings: components of many sizes, with holes.
fn blobs(dims: (usize, usize, usize), count: usize, seed: u64) -> Array3<u8> {
    let mut rng = Rng(seed);
    let (s, r, c) = dims;
    let mut m = Array3::<u8>::zeros(dims);
    for _ in 0..count {
        let (z, cy, cx) = (rng.below(s), rng.below(r), rng.below(c));
        let radius = 1.0 + rng.unit() * (r.min(c) as f32 / 6.0);
        let ring = rng.unit() < 0.3;
        for y in 0..r {
            for x in 0..c {
                let d = ((y as f32 - cy as f32).powi(2) + (x as f32 - cx as f32).powi(2)).sqrt();
                let inside = if ring {
                    d <= radius && d >= radius * 0.6
                } else {
                    d <= radius
                };
                if inside {
                    m[[z, y, x]] = 1;
                }
            }
        }
    }
    m
}

/// Named masks: random, real and edge cases.
fn masks() -> Vec<(String, Array3<u8>)> {
    let mut cases = vec![
        ("noise 30%".to_string(), noise((3, 37, 53), 0.3, 1)),
        ("noise 50%".to_string(), noise((2, 41, 29), 0.5, 2)),
        ("noise 70%".to_string(), noise((2, 33, 31), 0.7, 3)),
        ("blobs".to_string(), blobs((3, 96, 80), 25, 4)),
        ("blobs odd size".to_string(), blobs((2, 131, 77), 30, 5)),
        ("empty".to_string(), Array3::zeros((2, 16, 16))),
        ("full".to_string(), Array3::from_elem((2, 16, 16), 1)),
        (
            "1x1 foreground".to_string(),
            Array3::from_elem((1, 1, 1), 1),
        ),
        ("1x1 background".to_string(), Array3::zeros((1, 1, 1))),
        ("1xN".to_string(), noise((2, 1, 50), 0.5, 6)),
        ("Nx1".to_string(), noise((2, 50, 1), 0.5, 7)),
        ("7x13".to_string(), noise((1, 7, 13), 0.6, 8)),
    ];
    let mut one = Array3::zeros((1, 9, 9));
    one[[0, 4, 4]] = 1;
    cases.push(("one pixel".to_string(), one));
    let mut corner = Array3::zeros((1, 9, 11));
    corner[[0, 8, 10]] = 1;
    cases.push(("one pixel in a corner".to_string(), corner));
    // a frame touching every edge, with a blob inside its hole and one outside
    let mut frame = Array3::from_shape_fn((1, 20, 24), |(_, r, c)| {
        u8::from(r == 0 || c == 0 || r == 19 || c == 23)
    });
    frame[[0, 10, 12]] = 1;
    cases.push(("frame on the border".to_string(), frame));
    for name in [
        "ct_liver_ref.png",
        "ct_spleen_ref.png",
        "brain_ref.png",
        "mr_liver_ref.png",
    ] {
        let m = read_mask_png(&demo(name));
        cases.push((format!("demo {name}"), m.insert_axis(Axis(0))));
    }
    let liver = cosam::io::read(&demo("ct_abdomen_liver_ref.nii.gz")).expect("demo NIfTI mask");
    let v = liver
        .voxels()
        .index_axis(Axis(3), 0)
        .mapv(|x| u8::from(x > 0.0));
    cases.push(("demo ct_abdomen_liver_ref.nii.gz".to_string(), v));
    cases
}

fn assert_same<T: PartialEq + std::fmt::Debug>(what: &str, cpu: &Array3<T>, gpu: &Array3<T>) {
    assert_eq!(cpu.dim(), gpu.dim(), "{what}: shape");
    let differing = cpu.iter().zip(gpu.iter()).filter(|(a, b)| a != b).count();
    if differing > 0 {
        let (i, (a, b)) = cpu
            .indexed_iter()
            .zip(gpu.iter())
            .find_map(|((i, a), b)| (a != b).then_some((i, (a, b))))
            .unwrap_or(((0, 0, 0), (&cpu[[0, 0, 0]], &gpu[[0, 0, 0]])));
        panic!("{what}: {differing} values differ; first at {i:?}: cpu {a:?}, gpu {b:?}");
    }
}

/// Every voxel agrees by [`post::floats_agree`] (the contract of `FLOAT_TOLERANCE`).
fn assert_close(what: &str, cpu: &Array3<f32>, gpu: &Array3<f32>) {
    assert_eq!(cpu.dim(), gpu.dim(), "{what}: shape");
    for ((i, &a), &b) in cpu.indexed_iter().zip(gpu.iter()) {
        assert!(post::floats_agree(a, b), "{what}: at {i:?} cpu {a} gpu {b}");
    }
}

#[test]
fn ci_finds_a_gpu_adapter_when_it_asks_for_one() {
    let required = std::env::var("COSAM_TEST_GPU").is_ok_and(|v| v == "1");
    let (ops, note) = mask_ops(Device::Gpu);
    println!("{note}");
    if required {
        assert!(
            matches!(ops.backend(), Backend::Gpu(_)),
            "COSAM_TEST_GPU=1 but --device gpu chose {}: {note}",
            ops.backend()
        );
    }
    // auto takes a hardware adapter, never a software one (slower than the CPU path)
    let (auto, auto_note) = mask_ops(Device::Auto);
    println!("{auto_note}");
    match cosam::post::GpuMaskOps::new() {
        Ok(gpu) if gpu.is_software() => assert_eq!(auto.backend(), Backend::Cpu, "{auto_note}"),
        Ok(_) => assert!(matches!(auto.backend(), Backend::Gpu(_)), "{auto_note}"),
        Err(_) => assert_eq!(auto.backend(), Backend::Cpu),
    }
    let (cpu, _) = mask_ops(Device::Cpu);
    assert_eq!(cpu.backend(), Backend::Cpu);
}

/// Whatever graphics API wgpu takes, the GPU path agrees with the CPU path or refuses the
/// adapter at its known-answer check (Mesa's llvmpipe over GL miscompiles the distance
/// transform). The context is per process, so each API runs in a child process.
#[test]
fn every_graphics_api_agrees_with_the_cpu_or_is_refused() {
    let required = std::env::var("COSAM_TEST_GPU").is_ok_and(|v| v == "1");
    for backend in ["gl", "vulkan"] {
        let run = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "post::agreement_on_the_graphics_api_of_wgpu_backend",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("WGPU_BACKEND", backend)
            .env_remove("COSAM_TEST_GPU")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{backend}: {stdout}{stderr}");
        let verdict = stdout
            .lines()
            .find(|l| l.starts_with("GPU path: "))
            .unwrap_or_else(|| panic!("{backend}: the child ran no test: {stdout}{stderr}"));
        println!("WGPU_BACKEND={backend}: {verdict}");
        if required && backend == "vulkan" {
            assert!(verdict.starts_with("GPU path: agrees"), "{verdict}");
        }
    }
}

/// The agreement tests on the adapter `WGPU_BACKEND` selects, or the reason it is refused;
/// run by [`every_graphics_api_agrees_with_the_cpu_or_is_refused`].
#[test]
#[ignore = "run in a child process by every_graphics_api_agrees_with_the_cpu_or_is_refused"]
fn agreement_on_the_graphics_api_of_wgpu_backend() {
    match GpuMaskOps::new() {
        Ok(gpu) => {
            hole_filling_and_morphology_agree();
            distance_transforms_and_point_placement_agree();
            labelling_and_component_filters_agree();
            println!("GPU path: agrees on {}", gpu.adapter());
        }
        Err(e) => println!("GPU path: refused: {e}"),
    }
}

#[test]
fn labelling_and_component_filters_agree() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuMaskOps::new();
    for (name, m) in masks() {
        for conn in [Connectivity::Planar, Connectivity::Volumetric] {
            let what = format!("{name} {conn:?}");
            let labels = cpu.label(m.view(), conn).unwrap();
            assert_same(
                &format!("label {what}"),
                &labels,
                &gpu.label(m.view(), conn).unwrap(),
            );
            assert_same(
                &format!("keep_largest {what}"),
                &cpu.keep_largest(m.view(), conn).unwrap(),
                &gpu.keep_largest(m.view(), conn).unwrap(),
            );
            for min in [0, 2, 5, 40] {
                assert_same(
                    &format!("remove_small {min} {what}"),
                    &cpu.remove_small(m.view(), conn, min).unwrap(),
                    &gpu.remove_small(m.view(), conn, min).unwrap(),
                );
            }
        }
    }
}

#[test]
fn hole_filling_and_morphology_agree() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuMaskOps::new();
    for (name, m) in masks() {
        assert_same(
            &format!("fill_holes {name}"),
            &cpu.fill_holes(m.view()).unwrap(),
            &gpu.fill_holes(m.view()).unwrap(),
        );
        for r in [0, 1, 2, 4] {
            assert_same(
                &format!("open {r} {name}"),
                &cpu.open(m.view(), r).unwrap(),
                &gpu.open(m.view(), r).unwrap(),
            );
            assert_same(
                &format!("close {r} {name}"),
                &cpu.close(m.view(), r).unwrap(),
                &gpu.close(m.view(), r).unwrap(),
            );
        }
    }
}

#[test]
fn distance_transforms_and_point_placement_agree() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuMaskOps::new();
    let unit = Spacing {
        column_mm: 1.0,
        row_mm: 1.0,
        slice_mm: 1.0,
    };
    let anisotropic = Spacing {
        column_mm: 0.78125,
        row_mm: 1.5,
        slice_mm: 5.0,
    };
    for (name, m) in masks() {
        for border in [Border::Background, Border::Ignore] {
            // with unit spacing every squared distance is an integer: exact on both paths
            assert_same(
                &format!("distance unit {border:?} {name}"),
                &cpu.distance(m.view(), unit, border).unwrap(),
                &gpu.distance(m.view(), unit, border).unwrap(),
            );
            assert_close(
                &format!("distance anisotropic {border:?} {name}"),
                &cpu.distance(m.view(), anisotropic, border).unwrap(),
                &gpu.distance(m.view(), anisotropic, border).unwrap(),
            );
        }
    }
}

#[test]
fn top_k_agrees_with_ties_and_nan() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuMaskOps::new();
    let mut rng = Rng(11);
    let smooth = Array3::from_shape_fn((2, 64, 70), |_| rng.unit());
    // few distinct values: every selection cuts through ties
    let coarse = smooth.mapv(|v| (v * 8.0).floor() / 8.0);
    let mut with_nan = smooth.clone();
    for i in 0..200 {
        with_nan[[i % 2, (i * 7) % 64, (i * 13) % 70]] = f32::NAN;
    }
    let signed = smooth.mapv(|v| (v - 0.5) * 1e3);
    let constant = Array3::from_elem((1, 33, 17), 0.25f32);
    let distance = cpu
        .distance(
            blobs((2, 80, 90), 12, 12).view(),
            Spacing {
                column_mm: 1.0,
                row_mm: 1.0,
                slice_mm: 1.0,
            },
            Border::Background,
        )
        .unwrap();
    let inputs: [(&str, ArrayView3<f32>); 6] = [
        ("uniform", smooth.view()),
        ("coarse", coarse.view()),
        ("with NaN", with_nan.view()),
        ("signed", signed.view()),
        ("constant", constant.view()),
        ("distance map", distance.view()),
    ];
    for (name, v) in inputs {
        for k in [1, 2, 10, 257, 5000] {
            let a = cpu.top_k(v, k).unwrap();
            let b = gpu.top_k(v, k).unwrap();
            assert_eq!(a.len(), k.min(v.len()), "{name} {k}");
            let key = |p: &post::Peak| (p.slice, p.row, p.column, p.value.to_bits());
            assert_eq!(
                a.iter().map(key).collect::<Vec<_>>(),
                b.iter().map(key).collect::<Vec<_>>(),
                "top_k {k} of {name}"
            );
        }
    }
}

/// Random logits with smooth structure (so thresholds cut through slopes, as real ones do).
fn random_logits(n: usize, seed: u64) -> Array3<f32> {
    let mut rng = Rng(seed);
    let phases: Vec<(f32, f32, f32)> = (0..n)
        .map(|_| (rng.unit() * 6.0, rng.unit() * 6.0, rng.unit() * 0.2))
        .collect();
    Array3::from_shape_fn((n, 256, 256), |(z, r, c)| {
        let (a, b, f) = phases[z];
        8.0 * ((r as f32 * (0.05 + f) + a).sin() + (c as f32 * 0.07 + b).cos()) + rng.unit() - 0.5
    })
}

fn parity_logits(name: &str) -> Array3<f32> {
    let (shape, data) = read_npy_f32(&fixture(&format!("parity/{name}")));
    assert_eq!(shape, vec![256, 256]);
    Array3::from_shape_vec((1, 256, 256), data).unwrap()
}

/// Thresholded masks may differ only where the interpolated logit lies within the float
/// tolerance of the threshold; returns how many pixels did.
fn assert_threshold_same(
    what: &str,
    up: &Array3<f32>,
    cpu: &Array3<u8>,
    gpu: &Array3<u8>,
) -> usize {
    assert_eq!(cpu.dim(), gpu.dim(), "{what}: shape");
    let mut near = 0;
    for (((i, &a), &b), &v) in cpu.indexed_iter().zip(gpu.iter()).zip(up.iter()) {
        if a != b {
            assert!(
                (v - THRESHOLD_LOGIT).abs() <= FLOAT_TOLERANCE * v.abs().max(1.0),
                "{what}: pixel {i:?} differs (cpu {a}, gpu {b}) at logit {v}"
            );
            near += 1;
        }
    }
    near
}

#[test]
fn upsampling_agrees_on_real_and_random_logits() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuMaskOps::new();
    let mut cases: Vec<(String, Array3<f32>, Transform)> = vec![
        (
            "brain box".into(),
            parity_logits("brain_box_logits.npy"),
            Transform::new(217, 181),
        ),
        (
            "brain points".into(),
            parity_logits("brain_points_logits.npy"),
            Transform::new(217, 181),
        ),
        (
            "mr liver box".into(),
            parity_logits("mr_liver_box_logits.npy"),
            Transform::new(91, 117),
        ),
        (
            "mr liver box+mask".into(),
            parity_logits("mr_liver_box+mask_logits.npy"),
            Transform::new(91, 117),
        ),
    ];
    for (i, (rows, cols)) in [
        (512, 512),
        (217, 181),
        (300, 200),
        (7, 13),
        (1, 50),
        (50, 1),
        (1, 1),
        (256, 256),
    ]
    .into_iter()
    .enumerate()
    {
        cases.push((
            format!("random {rows}x{cols}"),
            random_logits(3, 20 + i as u64),
            Transform::new(rows, cols),
        ));
    }
    let mut near = 0;
    for (name, logits, t) in &cases {
        let up_cpu = cpu.upsample(logits.view(), t).unwrap();
        let up_gpu = gpu.upsample(logits.view(), t).unwrap();
        assert_close(&format!("upsample {name}"), &up_cpu, &up_gpu);
        let m_cpu = cpu
            .upsample_threshold(logits.view(), t, THRESHOLD_LOGIT)
            .unwrap();
        let m_gpu = gpu
            .upsample_threshold(logits.view(), t, THRESHOLD_LOGIT)
            .unwrap();
        near += assert_threshold_same(&format!("threshold {name}"), &up_cpu, &m_cpu, &m_gpu);
        // the CPU path is the function the pipeline has always used
        for z in 0..logits.dim().0 {
            let reference = post::logits_to_mask(logits.slice(s![z, .., ..]), t, THRESHOLD_LOGIT);
            assert_eq!(m_cpu.slice(s![z, .., ..]), reference.0, "{name} slice {z}");
        }
    }
    println!("thresholded pixels within tolerance of the threshold that differ: {near}");
}

#[test]
fn small_buffers_split_volumes_into_chunks_with_the_same_results() {
    let Some(gpu) = gpu() else { return };
    // 40 KiB buffers: 2-3 slices of 64x64 per chunk
    let small = gpu.clone().with_max_buffer_bytes(40 << 10);
    let cpu = CpuMaskOps::new();
    let m = blobs((7, 64, 64), 30, 31);
    let c = Connectivity::Planar;
    assert_same(
        "label",
        &cpu.label(m.view(), c).unwrap(),
        &small.label(m.view(), c).unwrap(),
    );
    assert_same(
        "keep_largest",
        &cpu.keep_largest(m.view(), c).unwrap(),
        &small.keep_largest(m.view(), c).unwrap(),
    );
    assert_same(
        "fill_holes",
        &cpu.fill_holes(m.view()).unwrap(),
        &small.fill_holes(m.view()).unwrap(),
    );
    assert_same(
        "close",
        &cpu.close(m.view(), 2).unwrap(),
        &small.close(m.view(), 2).unwrap(),
    );
    let v = m.mapv(f32::from) + random_logits(1, 3).slice(s![.., ..64, ..64]).to_owned();
    assert_eq!(
        cpu.top_k(v.view(), 30).unwrap(),
        small.top_k(v.view(), 30).unwrap()
    );
    let logits = random_logits(5, 32);
    let t = Transform::new(100, 80);
    let big = gpu.clone().with_max_buffer_bytes(600 << 10); // 2 logit frames per chunk
    assert_eq!(
        cpu.upsample_threshold(logits.view(), &t, 0.0).unwrap(),
        big.upsample_threshold(logits.view(), &t, 0.0).unwrap()
    );
    // 26-connected labelling cannot be split: the GPU says so instead of guessing
    assert!(matches!(
        small.label(m.view(), Connectivity::Volumetric),
        Err(post::PostError::Gpu(post::GpuError::TooLarge { .. }))
    ));
}

#[test]
fn volumes_with_many_slices_agree() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuMaskOps::new();
    let logits = random_logits(12, 41);
    let t = Transform::new(512, 512);
    let masks = cpu.upsample_threshold(logits.view(), &t, 0.0).unwrap();
    assert_same(
        "upsampled volume",
        &masks,
        &gpu.upsample_threshold(logits.view(), &t, 0.0).unwrap(),
    );
    let largest = cpu
        .keep_largest(masks.view(), Connectivity::Volumetric)
        .unwrap();
    assert_same(
        "volume keep_largest 26-connected",
        &largest,
        &gpu.keep_largest(masks.view(), Connectivity::Volumetric)
            .unwrap(),
    );
    assert_same(
        "volume fill_holes",
        &cpu.fill_holes(largest.view()).unwrap(),
        &gpu.fill_holes(largest.view()).unwrap(),
    );
}

#[test]
fn fused_post_processing_agrees_with_the_cpu_chain() {
    let Some(gpu) = gpu() else { return };
    let cpu = CpuMaskOps::new();
    let cleanups = [
        Cleanup::default(),
        Cleanup::default()
            .with_keep_largest(Connectivity::Planar)
            .with_fill_holes(true),
        Cleanup::default()
            .with_keep_largest(Connectivity::Volumetric)
            .with_fill_holes(true),
        Cleanup::default()
            .with_remove_small(Connectivity::Planar, 50)
            .with_open(2)
            .with_close(1),
        Cleanup::default()
            .with_remove_small(Connectivity::Volumetric, 500)
            .with_fill_holes(true)
            .with_close(3),
    ];
    let logits = random_logits(6, 51);
    let chunked = gpu.clone().with_max_buffer_bytes(2200 << 10); // 2 slices of 512x512
    for (rows, cols) in [(512, 512), (217, 181), (91, 117), (1, 40)] {
        let t = Transform::new(rows, cols);
        for cleanup in &cleanups {
            let what = format!("{rows}x{cols} {cleanup:?}");
            let expected = cpu.postprocess(logits.view(), &t, 0.0, cleanup).unwrap();
            assert_same(
                &what,
                &expected,
                &gpu.postprocess(logits.view(), &t, 0.0, cleanup).unwrap(),
            );
            if cleanup.keep_largest != Some(Connectivity::Volumetric)
                && !matches!(cleanup.remove_small, Some((Connectivity::Volumetric, _)))
            {
                assert_same(
                    &format!("chunked {what}"),
                    &expected,
                    &chunked
                        .postprocess(logits.view(), &t, 0.0, cleanup)
                        .unwrap(),
                );
            }
        }
    }
}
