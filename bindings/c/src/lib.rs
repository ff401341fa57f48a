//! The C ABI of cosam (`libcosam.so`, header `include/cosam.h`): opaque handles, `int`
//! status codes, a per-thread last error, buffers owned by the caller.
//!
//! Thin by design: each function checks its pointers, converts C arrays to
//! the library's types, calls one library function and converts the result or error back.
//! Behaviour (intensity mapping, prompts, refinement, threading) is the library's.
//!
//! Every entry point catches panics: none crosses into C. Threads: a `CosamSegmenter` may
//! be used from several threads at once (the encoder and the decoder each hold their own
//! lock, so an embed on a worker thread does not block a predict on the UI thread); a
//! `CosamEmbedding` is immutable and may be shared between threads. Free each handle once,
//! after every call using it has returned.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use cosam_lib::model::ModelConfig;
use cosam_lib::{
    BoxXyxy, EmbeddedSlice, Modality, Point, PointLabel, Prompts, Segmenter, SegmenterOptions,
};
use ndarray::{ArrayView2, ShapeBuilder};

/// Success.
pub const COSAM_OK: c_int = 0;
/// A bad argument: a NULL pointer where one is required, a size of zero, an unknown
/// modality or point label.
pub const COSAM_ERR_ARGUMENT: c_int = 1;
/// The models or ONNX Runtime could not be found or loaded.
pub const COSAM_ERR_SETUP: c_int = 2;
/// cosam refused the input or a model run failed (a prompt outside the image, a
/// constant image, an inference error).
pub const COSAM_ERR_INPUT: c_int = 3;
/// A bug in cosam (a caught panic); the message says where.
pub const COSAM_ERR_INTERNAL: c_int = 4;

/// Side of the model frame: `logits_out` and `mask_input` hold 256 x 256 floats, row-major.
pub const COSAM_LOGITS_SIDE: usize = 256;

/// `modality` of [`cosam_embed`]: a display image (already 0..255), min-max scaled.
pub const COSAM_MODALITY_DISPLAY: c_int = 0;
/// `modality` of [`cosam_embed`]: CT in Hounsfield units, soft-tissue window (W 400 / L 40).
pub const COSAM_MODALITY_CT: c_int = 1;
/// `modality` of [`cosam_embed`]: MR, clipped at the slice's 0.5/99.5 percentiles.
pub const COSAM_MODALITY_MR: c_int = 2;
/// `modality` of [`cosam_embed`]: guessed from the values (CT below -500, display when all
/// are integers in 0..255, MR otherwise).
pub const COSAM_MODALITY_AUTO: c_int = -1;

/// Loaded models (an image encoder and a mask decoder). Opaque.
pub struct CosamSegmenter {
    inner: Segmenter,
}

/// One embedded slice, the result of [`cosam_embed`]. Opaque, about 4 MiB.
pub struct CosamEmbedding {
    inner: EmbeddedSlice,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: String) {
    // A NUL inside a message would truncate it; replace it rather than lose the message.
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// A failed call: its status and message.
struct Failure(c_int, String);

fn argument(message: impl Into<String>) -> Failure {
    Failure(COSAM_ERR_ARGUMENT, message.into())
}

impl From<cosam_lib::Error> for Failure {
    fn from(e: cosam_lib::Error) -> Failure {
        let status = if e.is_setup() {
            COSAM_ERR_SETUP
        } else {
            COSAM_ERR_INPUT
        };
        // The whole chain, as the CLI prints it.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Failure(status, message)
    }
}

impl From<cosam_lib::model::PromptError> for Failure {
    fn from(e: cosam_lib::model::PromptError) -> Failure {
        Failure::from(cosam_lib::Error::from(e))
    }
}

/// Runs `body` with panics caught; records the error of a failure.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_error(String::new());
            COSAM_OK
        }
        Ok(Err(Failure(status, message))) => {
            set_error(message);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(format!("internal error in cosam: {what}"));
            COSAM_ERR_INTERNAL
        }
    }
}

/// An optional path argument: NULL or "" means "search".
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn optional_path(p: *const c_char, what: &str) -> Result<Option<PathBuf>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    let s = unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| argument(format!("{what} is not UTF-8")))?;
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// The message of the last failed call on this thread ("" after a success). The string
/// belongs to cosam and stays valid until the next cosam call on this thread.
#[no_mangle]
pub extern "C" fn cosam_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

/// Loads the models. `models_dir`: the folder holding `manifest.json`, or NULL to search
/// (`COSAM_MODELS`, `models/` beside the executable, in the current folder, in the source
/// checkout the library was built from). `ort_lib`: the ONNX Runtime library (a file or
/// its folder), or NULL to search (`ORT_DYLIB_PATH`, the executable's folder,
/// `third_party/onnxruntime/`). `threads`: ONNX Runtime threads per model, or <= 0 for
/// one per core. The encoder runs on OpenVINO (fp32) where its runtime loads, else on the
/// CPU provider (int8 where the CPU has int8 dot products, else fp32).
/// On success `*out` owns the models: release them with [`cosam_segmenter_free`].
///
/// # Safety
/// `models_dir` and `ort_lib` are NULL or NUL-terminated strings; `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn cosam_segmenter_new(
    models_dir: *const c_char,
    ort_lib: *const c_char,
    threads: c_int,
    out: *mut *mut CosamSegmenter,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(argument("out is NULL"));
        }
        let mut model = ModelConfig::lite_medsam();
        if let Some(dir) = unsafe { optional_path(models_dir, "models_dir") }? {
            model = model.with_model_dir(dir);
        }
        if let Some(lib) = unsafe { optional_path(ort_lib, "ort_lib") }? {
            model = model.with_ort_library(lib);
        }
        if let Ok(n) = usize::try_from(threads) {
            if n > 0 {
                model = model.with_threads(n);
            }
        }
        let inner = Segmenter::new(SegmenterOptions::default().with_model(model))?;
        unsafe { *out = Box::into_raw(Box::new(CosamSegmenter { inner })) };
        Ok(())
    })
}

/// Releases models from [`cosam_segmenter_new`]; NULL is ignored.
///
/// # Safety
/// `s` is NULL or a handle from [`cosam_segmenter_new`] not yet freed and not in use.
#[no_mangle]
pub unsafe extern "C" fn cosam_segmenter_free(s: *mut CosamSegmenter) {
    if !s.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(s) })));
    }
}

/// Embeds one slice: `pixels` holds `rows * cols` floats, row-major, in the image's units
/// (HU for CT). `modality` is one of `COSAM_MODALITY_*`. The pixels are copied: the
/// caller may free them on return. Takes the encoder's time (about a second on a laptop
/// CPU); run it off the UI thread. On success `*out` owns the embedding: release it with
/// [`cosam_embedding_free`].
///
/// # Safety
/// `s` is a live segmenter, `pixels` points to `rows * cols` floats, `out` is valid.
#[no_mangle]
pub unsafe extern "C" fn cosam_embed(
    s: *mut CosamSegmenter,
    pixels: *const f32,
    rows: usize,
    cols: usize,
    modality: c_int,
    out: *mut *mut CosamEmbedding,
) -> c_int {
    guard(|| {
        let s = unsafe { s.as_ref() }.ok_or_else(|| argument("segmenter is NULL"))?;
        if pixels.is_null() || out.is_null() {
            return Err(argument("pixels or out is NULL"));
        }
        let len = rows
            .checked_mul(cols)
            .filter(|&n| n > 0)
            .ok_or_else(|| argument(format!("image of {rows} x {cols} pixels")))?;
        let modality = match modality {
            COSAM_MODALITY_AUTO => None,
            COSAM_MODALITY_DISPLAY => Some(Modality::Display),
            COSAM_MODALITY_CT => Some(Modality::Ct),
            COSAM_MODALITY_MR => Some(Modality::Mr),
            other => {
                return Err(argument(format!(
                    "modality {other} is not -1 (auto), 0 (display), 1 (CT) or 2 (MR)"
                )))
            }
        };
        let pixels = unsafe { std::slice::from_raw_parts(pixels, len) };
        let view =
            ArrayView2::from_shape((rows, cols), pixels).map_err(|e| argument(e.to_string()))?;
        let inner = s.inner.embed_pixels(view, modality, None, None)?;
        unsafe { *out = Box::into_raw(Box::new(CosamEmbedding { inner })) };
        Ok(())
    })
}

/// The source size of an embedded slice (the size of `mask_out` in [`cosam_predict`]).
///
/// # Safety
/// `e` is a live embedding; `rows` and `cols` are valid pointers.
#[no_mangle]
pub unsafe extern "C" fn cosam_embedding_size(
    e: *const CosamEmbedding,
    rows: *mut usize,
    cols: *mut usize,
) -> c_int {
    guard(|| {
        let e = unsafe { e.as_ref() }.ok_or_else(|| argument("embedding is NULL"))?;
        if rows.is_null() || cols.is_null() {
            return Err(argument("rows or cols is NULL"));
        }
        let t = e.inner.transform();
        unsafe {
            *rows = t.source_rows;
            *cols = t.source_cols;
        }
        Ok(())
    })
}

/// Releases an embedding from [`cosam_embed`]; NULL is ignored.
///
/// # Safety
/// `e` is NULL or a handle from [`cosam_embed`] not yet freed and not in use.
#[no_mangle]
pub unsafe extern "C" fn cosam_embedding_free(e: *mut CosamEmbedding) {
    if !e.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(e) })));
    }
}

/// Decodes a mask from prompts on an embedded slice: one decoder call (milliseconds).
/// Prompts, in source pixels (x = column, y = row), each optional (NULL):
/// - `box4`: x0, y0, x1, y1;
/// - `points_xy`: `n_points` pairs x, y, with `labels` (1 foreground, 0 background; NULL
///   means all foreground);
/// - `mask_input_256x256`: the `logits_out` of an earlier call on this embedding, to
///   refine that mask with the new prompts.
///
/// At least a box or a point is needed. Outputs, each optional (NULL), owned by the
/// caller: `mask_out`, `rows * cols` bytes (0 or 1, row-major, see
/// [`cosam_embedding_size`]); `logits_out_256x256`, 256 * 256 floats in the model frame;
/// `iou_out`, the model's IoU estimate.
///
/// # Safety
/// `s` and `e` are live handles; each non-NULL pointer points to as many elements as
/// described above.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cosam_predict(
    s: *mut CosamSegmenter,
    e: *const CosamEmbedding,
    box4: *const f32,
    points_xy: *const f32,
    labels: *const i32,
    n_points: usize,
    mask_input_256x256: *const f32,
    mask_out: *mut u8,
    logits_out_256x256: *mut f32,
    iou_out: *mut f32,
) -> c_int {
    guard(|| {
        let s = unsafe { s.as_ref() }.ok_or_else(|| argument("segmenter is NULL"))?;
        let e = unsafe { e.as_ref() }.ok_or_else(|| argument("embedding is NULL"))?;
        let mut prompts = Prompts::default();
        if let Some(b) = unsafe { box4.as_ref() } {
            let b = unsafe { std::slice::from_raw_parts(b, 4) };
            prompts.bbox = Some(BoxXyxy::new(
                f64::from(b[0]),
                f64::from(b[1]),
                f64::from(b[2]),
                f64::from(b[3]),
            )?);
        }
        if n_points > 0 {
            if points_xy.is_null() {
                return Err(argument("points_xy is NULL but n_points > 0"));
            }
            let xy = unsafe { std::slice::from_raw_parts(points_xy, 2 * n_points) };
            let labels = (!labels.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(labels, n_points) });
            for (i, p) in xy.chunks_exact(2).enumerate() {
                let label = match labels.map_or(1, |l| l[i]) {
                    1 => PointLabel::Positive,
                    0 => PointLabel::Negative,
                    other => {
                        return Err(cosam_lib::model::PromptError::InvalidLabel(other.into()).into())
                    }
                };
                prompts.points.push(Point {
                    x: f64::from(p[0]),
                    y: f64::from(p[1]),
                    label,
                });
            }
        }
        let side = COSAM_LOGITS_SIDE;
        let mask_input = (!mask_input_256x256.is_null()).then(|| {
            let m = unsafe { std::slice::from_raw_parts(mask_input_256x256, side * side) };
            ArrayView2::from_shape((side, side).strides((side, 1)), m)
        });
        let mask_input = mask_input
            .transpose()
            .map_err(|e| argument(e.to_string()))?;
        let p = s.inner.predict(&e.inner, &prompts, mask_input)?;
        if !mask_out.is_null() {
            let out = unsafe { std::slice::from_raw_parts_mut(mask_out, p.mask.0.len()) };
            for (o, v) in out.iter_mut().zip(p.mask.0.iter()) {
                *o = *v;
            }
        }
        if !logits_out_256x256.is_null() {
            let out = unsafe { std::slice::from_raw_parts_mut(logits_out_256x256, side * side) };
            for (o, v) in out.iter_mut().zip(p.logits.iter()) {
                *o = *v;
            }
        }
        if let Some(iou) = unsafe { iou_out.as_mut() } {
            *iou = p.iou;
        }
        Ok(())
    })
}
