//! LiteMedSAM assembled: configuration preset, model discovery, encoder and decoder.

use std::path::{Path, PathBuf};

use super::heads::TaskHeads;
use super::image_encoder::ImageEncoder;
use super::manifest::Manifest;
use super::mask_decoder::MaskDecoder;
use super::provider::{default_openvino_cache, Provider};
use super::{runtime, ModelError};
use crate::preprocess::MODEL_SIZE;

/// Where the models live relative to a checkout or an installed executable.
const MODELS_DIR: &str = "models";

/// Threads ONNX Runtime uses inside one graph by default: the machine's cores.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Which image encoder runs: LiteMedSAM's fp32 graph, or its int8 quantisation
/// (`models/export/quantize_encoder.py`), faster on CPUs with int8 dot-product
/// instructions, with masks as accurate on the benchmark (README Performance). The CoSAM
/// heads run on either. [`EncoderPrecision::for_this_cpu`] is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncoderPrecision {
    /// The exported graph, checked against PyTorch.
    Fp32,
    /// Smoothed, with int8 weights in the first and last attention stages' qkv and fc1
    /// layers (and the first stage's proj).
    Int8,
}

impl EncoderPrecision {
    const ALL: [EncoderPrecision; 2] = [EncoderPrecision::Fp32, EncoderPrecision::Int8];

    /// int8 where this CPU has int8 dot-product instructions (x86 AVX-512 VNNI or AVX-VNNI,
    /// Arm dotprod), fp32 elsewhere: without them ONNX Runtime's x86 int8 kernels add
    /// pairs of products in 16 bits, which can saturate, and the speed-up is small.
    pub fn for_this_cpu() -> EncoderPrecision {
        if int8_dot_products() {
            EncoderPrecision::Int8
        } else {
            EncoderPrecision::Fp32
        }
    }

    /// The name `--encoder` takes.
    pub fn name(self) -> &'static str {
        match self {
            EncoderPrecision::Fp32 => "fp32",
            EncoderPrecision::Int8 => "int8",
        }
    }

    /// The encoder's entry in the model manifest.
    pub fn manifest_name(self) -> &'static str {
        match self {
            EncoderPrecision::Fp32 => "encoder",
            EncoderPrecision::Int8 => "encoder-int8",
        }
    }
}

impl std::fmt::Display for EncoderPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `fp32`, `int8`, or `auto` ([`EncoderPrecision::for_this_cpu`]).
impl std::str::FromStr for EncoderPrecision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::for_this_cpu());
        }
        Self::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown encoder '{s}'; expected auto, fp32 or int8"))
    }
}

#[cfg(target_arch = "x86_64")]
fn int8_dot_products() -> bool {
    std::arch::is_x86_feature_detected!("avx512vnni")
        || std::arch::is_x86_feature_detected!("avxvnni")
}

#[cfg(target_arch = "aarch64")]
fn int8_dot_products() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn int8_dot_products() -> bool {
    false
}

/// How to find and run the model files.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// Folder holding `manifest.json` and the ONNX files; `None` searches (see
    /// [`ModelConfig::resolve_model_dir`]).
    pub model_dir: Option<PathBuf>,
    /// ONNX Runtime library; `None` searches (see [`runtime`]).
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per session.
    pub threads: usize,
    /// Which image encoder to load; `None` (the default) picks one for the provider: fp32
    /// on OpenVINO (faster there than the int8 graph, and exact), else
    /// [`EncoderPrecision::for_this_cpu`].
    pub encoder: Option<EncoderPrecision>,
    /// Which execution provider runs the image encoder; it also picks the runtime library
    /// (see [`runtime`]).
    pub provider: Provider,
    /// Where OpenVINO caches compiled models; `None`: no cache. Default:
    /// [`default_openvino_cache`].
    pub openvino_cache: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::lite_medsam()
    }
}

impl ModelConfig {
    /// LiteMedSAM from `models/` with one thread per core, the OpenVINO provider where it
    /// loads ([`Provider::Auto`]) and the encoder picked for the provider.
    pub fn lite_medsam() -> ModelConfig {
        ModelConfig {
            model_dir: None,
            ort_library: None,
            threads: default_threads(),
            encoder: None,
            provider: Provider::default(),
            openvino_cache: default_openvino_cache(),
        }
    }

    /// Runs the image encoder on `provider`.
    pub fn with_provider(mut self, provider: Provider) -> Self {
        self.provider = provider;
        self
    }

    /// Caches OpenVINO's compiled models in `dir` (`None`: compile in every process).
    pub fn with_openvino_cache(mut self, dir: Option<PathBuf>) -> Self {
        self.openvino_cache = dir;
        self
    }

    /// Uses the models in `dir`.
    pub fn with_model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model_dir = Some(dir.into());
        self
    }

    /// Uses the ONNX Runtime library at `path` (a file, or a folder holding it).
    pub fn with_ort_library(mut self, path: impl Into<PathBuf>) -> Self {
        self.ort_library = Some(path.into());
        self
    }

    /// Loads the `encoder` image encoder. With [`Provider::Auto`], int8 runs on the CPU
    /// provider: it was validated there, and OpenVINO runs it slower than the fp32 graph.
    pub fn with_encoder(mut self, encoder: EncoderPrecision) -> Self {
        self.encoder = Some(encoder);
        self
    }

    /// Lets the provider pick the encoder (the default; see [`ModelConfig::encoder`]).
    pub fn with_auto_encoder(mut self) -> Self {
        self.encoder = None;
        self
    }

    /// True when this configuration asks for the OpenVINO runtime (see [`runtime`]).
    fn wants_openvino(&self) -> bool {
        !matches!(
            (self.provider, self.encoder),
            (Provider::Cpu, _) | (Provider::Auto, Some(EncoderPrecision::Int8))
        )
    }

    /// Sets intra-op threads (at least 1).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The model folder: the configured one, else `COSAM_MODELS`, else `models/` beside
    /// the executable, in the current folder, or in the checkout the binary was built from.
    ///
    /// # Errors
    /// [`ModelError::Manifest`] listing the folders searched when none has a manifest.
    pub fn resolve_model_dir(&self) -> Result<PathBuf, ModelError> {
        if let Some(dir) = &self.model_dir {
            return Ok(dir.clone());
        }
        let mut tried = Vec::new();
        if let Some(p) = std::env::var_os("COSAM_MODELS").filter(|p| !p.is_empty()) {
            tried.push(PathBuf::from(p));
        }
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            tried.push(dir.join(MODELS_DIR));
        }
        if let Ok(cwd) = std::env::current_dir() {
            tried.push(cwd.join(MODELS_DIR));
        }
        tried.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(MODELS_DIR));
        tried
            .iter()
            .find(|d| d.join("manifest.json").is_file())
            .cloned()
            .ok_or_else(|| ModelError::Manifest {
                path: tried.first().cloned().unwrap_or_default(),
                reason: format!(
                    "no models/manifest.json found (looked in {}); pass --models DIR or set COSAM_MODELS",
                    tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            })
    }
}

/// LiteMedSAM's encoder and promptable decoder, loaded and checked.
#[derive(Debug)]
pub struct LiteMedSam {
    /// The image encoder.
    pub encoder: ImageEncoder,
    /// The promptable mask decoder.
    pub decoder: MaskDecoder,
    manifest: Manifest,
    runtime: &'static runtime::Runtime,
    threads: usize,
    encoder_precision: EncoderPrecision,
}

/// Prints a provider fallback once per process: every later load would repeat it.
fn print_notice_once(notice: &str) {
    static PRINTED: std::sync::Once = std::sync::Once::new();
    PRINTED.call_once(|| eprintln!("cosam: notice: {notice}"));
}

/// Where CoSAM heads come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadsSource {
    /// A task shipped in the model manifest (`--task brain`).
    Task(String),
    /// A folder with `heads.json` (`--heads DIR`).
    Dir(PathBuf),
}

impl LiteMedSam {
    /// Loads ONNX Runtime for the configured provider, verifies the manifest's checksums
    /// and creates both sessions. When [`Provider::Auto`] falls back to the CPU provider,
    /// prints one notice on stderr (once per process) and keeps it in
    /// [`LiteMedSam::provider_notice`].
    ///
    /// # Errors
    /// Any [`ModelError`] of setup: runtime missing, manifest missing, checksum mismatch,
    /// session or signature failure; with [`Provider::OpenVino`],
    /// [`ModelError::OpenVinoNotFound`] or [`ModelError::OpenVinoUnavailable`].
    pub fn load(config: &ModelConfig) -> Result<LiteMedSam, ModelError> {
        let provider = if config.wants_openvino() {
            config.provider
        } else {
            Provider::Cpu
        };
        let runtime = runtime::init_for(config.ort_library.as_deref(), provider)?;
        let dir = config.resolve_model_dir()?;
        let manifest = Manifest::load(&dir)?;
        if manifest.image_size != MODEL_SIZE {
            return Err(ModelError::Manifest {
                path: dir.join("manifest.json"),
                reason: format!(
                    "image_size {} but cosam's preprocessing makes {MODEL_SIZE}",
                    manifest.image_size
                ),
            });
        }
        let on_cpu = EncoderPrecision::for_this_cpu();
        let precision =
            config
                .encoder
                .unwrap_or(if provider != Provider::Cpu && runtime.has_openvino() {
                    EncoderPrecision::Fp32
                } else {
                    on_cpu
                });
        let load_encoder = |precision: EncoderPrecision, provider| {
            ImageEncoder::load_on(
                runtime,
                &manifest.verified_path(precision.manifest_name())?,
                config.threads,
                provider,
                config.openvino_cache.as_deref(),
            )
        };
        let mut encoder = load_encoder(precision, provider)?;
        let mut precision = precision;
        if config.encoder.is_none() && encoder.provider() == Provider::Cpu && precision != on_cpu {
            // OpenVINO refused the fp32 graph: the CPU provider's own pick, same notice
            let notice = encoder.notice().map(str::to_string);
            encoder = load_encoder(on_cpu, Provider::Cpu)?.with_notice(notice);
            precision = on_cpu;
        }
        if let Some(notice) = encoder.notice() {
            print_notice_once(notice);
        }
        let decoder =
            MaskDecoder::load(runtime, &manifest.verified_path("decoder")?, config.threads)?;
        Ok(LiteMedSam {
            encoder,
            decoder,
            manifest,
            runtime,
            threads: config.threads,
            encoder_precision: precision,
        })
    }

    /// Loads the CoSAM heads of `source`: a shipped task of the manifest, or a folder
    /// holding `heads.json` (for example leave-one-domain-out heads).
    ///
    /// # Errors
    /// [`ModelError::UnknownTask`], checksum, session or signature errors.
    pub fn load_heads(&self, source: &HeadsSource) -> Result<TaskHeads, ModelError> {
        let dir = match source {
            HeadsSource::Task(name) => self.manifest.task_dir(name)?,
            HeadsSource::Dir(dir) => dir.clone(),
        };
        TaskHeads::load(self.runtime, &dir, self.threads)
    }

    /// The execution provider that runs the image encoder: [`Provider::OpenVino`] or
    /// [`Provider::Cpu`], never `Auto`. The decoders and heads run on the CPU provider.
    pub fn provider(&self) -> Provider {
        self.encoder.provider()
    }

    /// Why [`Provider::Auto`] fell back to the CPU provider, if it did.
    pub fn provider_notice(&self) -> Option<&str> {
        self.encoder.notice()
    }

    /// The ONNX Runtime library the sessions run in.
    pub fn runtime_library(&self) -> &Path {
        self.runtime.library()
    }

    /// Which image encoder was loaded.
    pub fn encoder_precision(&self) -> EncoderPrecision {
        self.encoder_precision
    }

    /// The manifest the models were loaded from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

#[cfg(test)]
mod tests {
    use super::EncoderPrecision;

    #[test]
    fn encoder_names_round_trip_and_auto_follows_the_cpu() {
        for e in EncoderPrecision::ALL {
            assert_eq!(e.name().parse::<EncoderPrecision>(), Ok(e));
        }
        assert_eq!("auto".parse(), Ok(EncoderPrecision::for_this_cpu()));
        let err = "fp16".parse::<EncoderPrecision>().unwrap_err();
        assert!(
            err.contains("fp16") && err.contains("auto, fp32 or int8"),
            "{err}"
        );
    }
}
