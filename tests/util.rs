//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cosam::model::{EncoderPrecision, ModelConfig, Provider};
use cosam::{Segmenter, SegmenterOptions};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo(name: &str) -> PathBuf {
    root().join("data/demo").join(name)
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// One segmenter with the fp32 encoder (the graph checked against PyTorch) for the whole
/// test binary (loading costs ~0.5 s). A missing runtime or model fails the test: models
/// are part of the product, never skipped.
pub fn segmenter() -> &'static Segmenter {
    static SEGMENTER: OnceLock<Segmenter> = OnceLock::new();
    SEGMENTER.get_or_init(|| load(EncoderPrecision::Fp32))
}

/// The same with the int8 encoder.
pub fn int8_segmenter() -> &'static Segmenter {
    static SEGMENTER: OnceLock<Segmenter> = OnceLock::new();
    SEGMENTER.get_or_init(|| load(EncoderPrecision::Int8))
}

/// The OpenVINO build of ONNX Runtime from `scripts/fetch-onnxruntime`, when fetched.
pub fn openvino_fetched() -> bool {
    root()
        .join("third_party/onnxruntime-openvino/libonnxruntime_providers_openvino.so")
        .is_file()
}

/// True when OpenVINO tests must run: the library is fetched, or `COSAM_TEST_OPENVINO=1`
/// (CI on x86_64) makes its absence a failure instead of a skip.
pub fn openvino_required_or_present(test: &str) -> bool {
    let required = std::env::var("COSAM_TEST_OPENVINO").is_ok_and(|v| v == "1");
    if !required && !openvino_fetched() {
        eprintln!("notice: OpenVINO runtime not fetched; {test} skipped");
        return false;
    }
    true
}

/// The fp32 encoder on `provider`, in this process's runtime.
pub fn segmenter_on(provider: Provider) -> &'static Segmenter {
    static CPU: OnceLock<Segmenter> = OnceLock::new();
    static OPENVINO: OnceLock<Segmenter> = OnceLock::new();
    let cell = match provider {
        Provider::Cpu => &CPU,
        _ => &OPENVINO,
    };
    cell.get_or_init(|| load_on(EncoderPrecision::Fp32, provider))
}

fn load(encoder: EncoderPrecision) -> Segmenter {
    load_on(encoder, Provider::Auto)
}

fn load_on(encoder: EncoderPrecision, provider: Provider) -> Segmenter {
    // The process loads one ONNX Runtime: the OpenVINO build when fetched, whichever
    // segmenter a test asks for first, so that results do not depend on test order.
    cosam::model::runtime::init_for(None, Provider::Auto).unwrap_or_else(|e| {
        panic!("cannot load ONNX Runtime (run scripts/fetch-onnxruntime): {e}")
    });
    let model = ModelConfig::lite_medsam()
        .with_encoder(encoder)
        .with_provider(provider);
    Segmenter::new(SegmenterOptions::default().with_model(model)).unwrap_or_else(|e| {
        panic!(
            "cannot load the {encoder} models on {provider} (run scripts/fetch-onnxruntime): {e}"
        )
    })
}

/// Reads a little-endian f32 `.npy` file written by numpy (format 1.0).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not an npy file",
        path.display()
    );
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

/// A PNG mask as 0/1.
pub fn read_mask_png(path: &Path) -> ndarray::Array2<u8> {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8();
    let (w, h) = img.dimensions();
    ndarray::Array2::from_shape_fn((h as usize, w as usize), |(r, c)| {
        u8::from(img.get_pixel(c as u32, r as u32).0[0] > 0)
    })
}

/// The built `cosam` binary, run from the repository root; the engine variables of an
/// enclosing Slurm or Kubernetes job do not leak into it.
pub fn cosam_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cosam"));
    c.args(args)
        .current_dir(root())
        .env_remove("SLURM_CPUS_PER_TASK")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX");
    c
}

/// Runs the `cosam` binary to completion.
pub fn cosam<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    cosam_command(args).output().expect("the cosam binary runs")
}

/// A path as a command-line argument.
pub fn text(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `dir/report.json`, parsed.
pub fn report(dir: &Path) -> serde_json::Value {
    let path = dir.join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}
