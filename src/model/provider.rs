//! Which ONNX Runtime execution provider runs the graphs: the default CPU provider, or
//! OpenVINO's (Intel's runtime, from the PyPI wheel `onnxruntime-openvino`, which ships its
//! own ONNX Runtime library; `scripts/fetch-onnxruntime` unpacks it into
//! `third_party/onnxruntime-openvino/`). On a 2-core AVX-512 EPYC the OpenVINO provider runs
//! the fp32 encoder about 1.7x faster than the CPU provider, with embeddings equal to
//! within 1e-5 (docs/performance.md, "OpenVINO").
//!
//! Owns the provider choice, the OpenVINO options and its compiled-model cache folder. Must
//! not import `pipeline`, `post` or the CLI.

use std::path::PathBuf;

/// The file that makes an ONNX Runtime folder an OpenVINO one.
#[cfg(target_os = "windows")]
pub(crate) const OPENVINO_PROVIDER_LIBRARY: &str = "onnxruntime_providers_openvino.dll";
/// The file that makes an ONNX Runtime folder an OpenVINO one.
#[cfg(not(target_os = "windows"))]
pub(crate) const OPENVINO_PROVIDER_LIBRARY: &str = "libonnxruntime_providers_openvino.so";

/// Environment variable naming the OpenVINO model cache folder; `off` disables the cache.
pub const OPENVINO_CACHE_ENV: &str = "COSAM_OPENVINO_CACHE";

/// Which execution provider runs the image encoder (`--provider auto|openvino|cpu`).
///
/// The runtime library is chosen from it, once per process (ONNX Runtime cannot be loaded
/// twice): `openvino` and `auto` load the OpenVINO runtime
/// (`third_party/onnxruntime-openvino/`), `cpu` the plain one
/// (`third_party/onnxruntime/`). An explicit library (`--ort-lib`, `ORT_DYLIB_PATH`) wins
/// over both; it offers OpenVINO when `libonnxruntime_providers_openvino.so` lies beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Provider {
    /// OpenVINO when its runtime loads and accepts the model, else the CPU provider with a
    /// one-line notice ([`crate::model::LiteMedSam::provider_notice`]).
    #[default]
    Auto,
    /// OpenVINO's CPU plugin; an error when it is missing or refuses the model.
    OpenVino,
    /// ONNX Runtime's default CPU provider.
    Cpu,
}

impl Provider {
    const ALL: [Provider; 3] = [Provider::Auto, Provider::OpenVino, Provider::Cpu];

    /// The name `--provider` takes and `report.json` writes.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Auto => "auto",
            Provider::OpenVino => "openvino",
            Provider::Cpu => "cpu",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `auto`, `openvino` or `cpu` (case-insensitive).
impl std::str::FromStr for Provider {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|p| p.name() == lower)
            .ok_or_else(|| format!("unknown provider '{s}'; expected auto, openvino or cpu"))
    }
}

/// Where OpenVINO keeps compiled models, so that a later process loads the blob instead of
/// compiling the graph again: `COSAM_OPENVINO_CACHE` (`off`: no cache), else
/// `$XDG_CACHE_HOME/cosam/openvino`, else `~/.cache/cosam/openvino`. `None` when caching
/// is off or no home is known.
pub fn default_openvino_cache() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os(OPENVINO_CACHE_ENV).filter(|v| !v.is_empty()) {
        return (v != "off").then(|| PathBuf::from(v));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("cosam").join("openvino"))
}

/// The OpenVINO provider's options for one session: CPU device, fp32 inference (bf16 was
/// slower on this AVX-512 CPU without AMX, issue 19), `threads` inference threads and
/// the compiled-model cache.
pub(crate) fn openvino_ep(
    threads: usize,
    cache: Option<&std::path::Path>,
) -> ort::ep::ExecutionProviderDispatch {
    let mut ep = ort::ep::OpenVINO::default()
        .with_device_type("CPU")
        .with_precision("FP32")
        .with_num_threads(threads.max(1));
    if let Some(dir) = cache {
        ep = ep.with_cache_dir(dir.display());
    }
    ep.build().error_on_failure()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_round_trip_and_unknown_ones_list_the_choices() {
        for p in Provider::ALL {
            assert_eq!(p.name().parse::<Provider>(), Ok(p));
        }
        assert_eq!("OpenVINO".parse(), Ok(Provider::OpenVino));
        assert_eq!(Provider::default(), Provider::Auto);
        let err = "cuda".parse::<Provider>().unwrap_err();
        assert!(
            err.contains("cuda") && err.contains("auto, openvino or cpu"),
            "{err}"
        );
    }
}
