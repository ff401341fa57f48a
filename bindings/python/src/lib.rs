//! The Python module `cosam._native` (re-exported by `cosam`): numpy arrays in and out,
//! the GIL released during model calls, library errors raised as `cosam.CosamError`.
//!
//! Thin by design: each method converts its arguments to the library's
//! types, calls one library function with the GIL released, and converts the result or
//! error back. Behaviour is the library's and is tested there (tests/viewer.rs); the
//! Python tests (bindings/python/tests) smoke-test the conversions.

use std::path::PathBuf;
use std::sync::Arc;

use cosam::correct::{Quality as LibQuality, DEFAULT_REVIEW_THRESHOLD};
use cosam::model::{EncoderPrecision, HeadsSource, ModelConfig, TaskHeads};
use cosam::{
    BoxXyxy, EmbeddedSlice, Modality, Point, PointLabel, Prompts, Segmenter as LibSegmenter,
    SegmenterOptions, SlicePrediction, WindowLevel,
};
use ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pyo3::create_exception!(
    cosam,
    CosamError,
    PyException,
    "An error of the cosam library: a missing model or runtime, a prompt outside the image, a failed model run."
);

/// The library error's whole chain as one message, as the CLI prints it.
fn error(e: impl Into<cosam::Error>) -> PyErr {
    let e: cosam::Error = e.into();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    CosamError::new_err(message)
}

/// A 2D numpy array of a supported dtype as f32.
fn pixels(image: &Bound<'_, PyAny>) -> PyResult<Array2<f32>> {
    if let Ok(a) = image.extract::<PyReadonlyArray2<'_, f32>>() {
        return Ok(a.as_array().to_owned());
    }
    macro_rules! try_dtype {
        ($($t:ty),*) => {$(
            if let Ok(a) = image.extract::<PyReadonlyArray2<'_, $t>>() {
                return Ok(a.as_array().mapv(f32::from));
            }
        )*};
    }
    try_dtype!(u8, i16, u16);
    match image.extract::<numpy::PyReadonlyArrayDyn<'_, f32>>() {
        Ok(a) => Err(PyValueError::new_err(format!(
            "image must be 2D [rows, cols], got {} dimensions",
            a.ndim()
        ))),
        Err(_) => Err(PyTypeError::new_err(
            "image must be a 2D numpy array of uint8, int16, uint16 or float32",
        )),
    }
}

/// LiteMedSAM loaded: embed a slice once, then predict a mask for every prompt.
#[pyclass(module = "cosam", subclass, frozen)]
struct Segmenter {
    inner: Arc<LibSegmenter>,
}

/// One embedded slice (about 4 MiB): the input of every `predict` on that slice.
#[pyclass(module = "cosam", frozen)]
struct Embedding {
    inner: EmbeddedSlice,
}

/// How much to trust a prompt-free mask.
#[pyclass(module = "cosam", frozen, get_all)]
#[derive(Clone)]
struct Quality {
    /// Higher is better, 0..1: (1 - predicted_error_fraction) * iou_head.
    score: f64,
    /// Whether a person should check the mask (score below 0.5, the CLI's default).
    needs_review: bool,
    /// Predicted error pixels over mask plus predicted error pixels, 0..1.
    predicted_error_fraction: f64,
    /// The IoU head's estimate (None for an empty mask).
    iou_head: Option<f64>,
}

impl From<LibQuality> for Quality {
    fn from(q: LibQuality) -> Quality {
        Quality {
            score: q.score,
            needs_review: q.needs_review(DEFAULT_REVIEW_THRESHOLD),
            predicted_error_fraction: q.predicted_error_fraction,
            iou_head: q.iou_head,
        }
    }
}

#[pymethods]
impl Quality {
    fn __repr__(&self) -> String {
        format!(
            "Quality(score={:.3}, needs_review={})",
            self.score,
            if self.needs_review { "True" } else { "False" }
        )
    }
}

/// A predicted mask: `mask` (uint8 [rows, cols], 0/1), `iou` (the model's estimate),
/// `logits` (float32 [256, 256], model frame: pass them as `mask_input` to refine), and
/// `quality` for a prompt-free mask (None otherwise).
#[pyclass(module = "cosam", frozen, get_all)]
struct Prediction {
    mask: Py<PyArray2<u8>>,
    iou: f32,
    logits: Py<PyArray2<f32>>,
    quality: Option<Py<Quality>>,
}

impl Prediction {
    fn new(py: Python<'_>, p: SlicePrediction, quality: Option<LibQuality>) -> PyResult<Self> {
        Ok(Prediction {
            mask: p.mask.0.into_pyarray(py).unbind(),
            iou: p.iou,
            logits: p.logits.into_pyarray(py).unbind(),
            quality: quality.map(|q| Py::new(py, Quality::from(q))).transpose()?,
        })
    }
}

#[pymethods]
impl Prediction {
    fn __repr__(&self, py: Python<'_>) -> String {
        let area: u64 = self
            .mask
            .bind(py)
            .readonly()
            .as_array()
            .iter()
            .map(|&v| u64::from(v))
            .sum();
        format!("Prediction(area={area} px, iou={:.3})", self.iou)
    }
}

/// CoSAM's trained heads of one task: prompt-free segmentation with a quality score.
#[pyclass(module = "cosam", frozen)]
struct Task {
    segmenter: Arc<LibSegmenter>,
    heads: TaskHeads,
}

#[pymethods]
impl Task {
    /// The structures the heads segment.
    #[getter]
    fn structures(&self) -> Vec<String> {
        self.heads.info.structures.clone()
    }

    /// The task's name.
    #[getter]
    fn name(&self) -> String {
        self.heads.info.task.clone()
    }

    /// Segments `structure` (a name from `structures`) on an embedded slice without
    /// prompts: the coarse mask and the self-correcting loop. The Prediction has `quality`.
    fn segment(
        &self,
        py: Python<'_>,
        embedding: &Embedding,
        structure: &str,
    ) -> PyResult<Prediction> {
        let index = self.heads.structure_named(structure).map_err(error)?;
        let out = py
            .detach(|| {
                self.segmenter
                    .predict_prompt_free(&embedding.inner, &self.heads, index, None)
            })
            .map_err(error)?;
        Prediction::new(py, out.prediction, Some(out.quality))
    }
}

#[pymethods]
impl Embedding {
    /// The slice as bytes, for a cache (`Embedding.from_bytes` reads them back).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    /// An embedding from `to_bytes` output; a predict refuses it under another encoder.
    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Embedding> {
        Ok(Embedding {
            inner: EmbeddedSlice::from_bytes(data).map_err(error)?,
        })
    }

    /// (rows, cols) of the embedded image.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        let t = self.inner.transform();
        (t.source_rows, t.source_cols)
    }

    fn __repr__(&self) -> String {
        let (rows, cols) = self.shape();
        format!("Embedding(shape=({rows}, {cols}))")
    }
}

#[pymethods]
impl Segmenter {
    /// Loads the models. `models`: the folder holding manifest.json (None searches);
    /// `ort_lib`: the ONNX Runtime library or its folder (None searches); `threads`:
    /// ONNX Runtime threads per model (None: one per core); `encoder`: "auto" (fp32 on
    /// the OpenVINO provider, which runs where its runtime is fetched; else int8 on CPUs
    /// with int8 dot products), "fp32" or "int8".
    #[new]
    #[pyo3(signature = (models=None, ort_lib=None, threads=None, encoder="auto"))]
    fn new(
        py: Python<'_>,
        models: Option<PathBuf>,
        ort_lib: Option<PathBuf>,
        threads: Option<usize>,
        encoder: &str,
    ) -> PyResult<Segmenter> {
        let mut config = ModelConfig::lite_medsam();
        if encoder != "auto" {
            let encoder: EncoderPrecision = encoder.parse().map_err(PyValueError::new_err)?;
            config = config.with_encoder(encoder);
        }
        if let Some(dir) = models {
            config = config.with_model_dir(dir);
        }
        if let Some(lib) = ort_lib {
            config = config.with_ort_library(lib);
        }
        if let Some(n) = threads {
            if n == 0 {
                return Err(PyValueError::new_err("threads must be at least 1"));
            }
            config = config.with_threads(n);
        }
        let options = SegmenterOptions::default().with_model(config);
        let inner = py.detach(|| LibSegmenter::new(options)).map_err(error)?;
        Ok(Segmenter {
            inner: Arc::new(inner),
        })
    }

    /// The image encoder loaded: "fp32" or "int8".
    #[getter]
    fn encoder(&self) -> &'static str {
        self.inner.model().encoder_precision().name()
    }

    /// Embeds a 2D image [rows, cols] (uint8, int16, uint16 or float32, in its units: HU
    /// for CT). `modality`: "auto" (CT when a value is below -500, display when all are
    /// integers in 0..255, MR otherwise), "ct", "mr" or "display". `window`: a CT window
    /// as (center, width) in HU or a name ("soft-tissue", "bone", "lung", "brain");
    /// implies CT. The GIL is released while the encoder runs.
    #[pyo3(signature = (image, modality="auto", window=None))]
    fn embed(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        modality: &str,
        window: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Embedding> {
        let pixels = pixels(image)?;
        let modality = match modality.to_ascii_lowercase().as_str() {
            "auto" => None,
            "ct" => Some(Modality::Ct),
            "mr" => Some(Modality::Mr),
            "display" => Some(Modality::Display),
            other => {
                return Err(PyValueError::new_err(format!(
                    "unknown modality '{other}'; expected auto, ct, mr or display"
                )))
            }
        };
        let window = match window {
            None => None,
            Some(w) => Some(if let Ok(name) = w.extract::<String>() {
                name.parse::<WindowLevel>()
                    .map_err(|e| PyValueError::new_err(e.to_string()))?
            } else {
                let (center, width) = w.extract::<(f64, f64)>().map_err(|_| {
                    PyTypeError::new_err("window must be (center, width) in HU or a name")
                })?;
                WindowLevel::new(center, width).map_err(|e| PyValueError::new_err(e.to_string()))?
            }),
        };
        let window = match (modality, window) {
            (None | Some(Modality::Ct), w) => w,
            (Some(_), Some(_)) => {
                return Err(PyValueError::new_err(
                    "a window applies to CT only: pass modality='ct' or 'auto' with it",
                ))
            }
            (Some(_), None) => None,
        };
        let inner = py
            .detach(|| {
                self.inner
                    .embed_pixels(pixels.view(), modality, window, None)
            })
            .map_err(error)?;
        Ok(Embedding { inner })
    }

    /// Predicts a mask on an embedded slice: one decoder call. `box`: (x0, y0, x1, y1);
    /// `points`: [(x, y), ...] with `labels` (1 foreground, 0 background; default all 1),
    /// in pixels of the embedded image (x = column); `mask_input`: the `logits` of an
    /// earlier Prediction on this embedding, to refine that mask. The GIL is released
    /// while the decoder runs.
    #[pyo3(signature = (embedding, r#box=None, points=None, labels=None, mask_input=None))]
    fn predict(
        &self,
        py: Python<'_>,
        embedding: &Embedding,
        r#box: Option<(f64, f64, f64, f64)>,
        points: Option<Vec<(f64, f64)>>,
        labels: Option<Vec<i64>>,
        mask_input: Option<PyReadonlyArray2<'_, f32>>,
    ) -> PyResult<Prediction> {
        let mut prompts = Prompts::default();
        if let Some((x0, y0, x1, y1)) = r#box {
            prompts.bbox = Some(BoxXyxy::new(x0, y0, x1, y1).map_err(error)?);
        }
        let points = points.unwrap_or_default();
        let labels = labels.unwrap_or_else(|| vec![1; points.len()]);
        if labels.len() != points.len() {
            return Err(PyValueError::new_err(format!(
                "{} points but {} labels",
                points.len(),
                labels.len()
            )));
        }
        for ((x, y), l) in points.into_iter().zip(labels) {
            let label = match l {
                1 => PointLabel::Positive,
                0 => PointLabel::Negative,
                other => return Err(error(cosam::model::PromptError::InvalidLabel(other))),
            };
            prompts.points.push(Point { x, y, label });
        }
        let mask_input = mask_input.as_ref().map(|m| m.as_array());
        let out = py
            .detach(|| self.inner.predict(&embedding.inner, &prompts, mask_input))
            .map_err(error)?;
        Prediction::new(py, out, None)
    }

    /// Loads CoSAM heads: a task shipped with the models ("abdomen", "brain") or a
    /// folder holding heads.json.
    fn load_task(&self, py: Python<'_>, name_or_heads_dir: PathBuf) -> PyResult<Task> {
        let source = if name_or_heads_dir.join("heads.json").is_file() {
            HeadsSource::Dir(name_or_heads_dir)
        } else {
            HeadsSource::Task(name_or_heads_dir.to_string_lossy().into_owned())
        };
        let heads = py
            .detach(|| self.inner.load_heads(&source))
            .map_err(error)?;
        Ok(Task {
            segmenter: Arc::clone(&self.inner),
            heads,
        })
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Segmenter>()?;
    m.add_class::<Embedding>()?;
    m.add_class::<Prediction>()?;
    m.add_class::<Quality>()?;
    m.add_class::<Task>()?;
    m.add("CosamError", m.py().get_type::<CosamError>())?;
    Ok(())
}
