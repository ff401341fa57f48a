//! The GPU path with a fallback to the CPU path when a GPU call fails.

use super::*;

/// An error and its causes on one line.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The GPU path, falling back to the CPU when a GPU call fails: the first failure prints
/// one warning, and later calls go straight to the CPU.
#[derive(Debug)]
pub(super) struct WithFallback {
    gpu: GpuMaskOps,
    cpu: CpuMaskOps,
    failed: AtomicBool,
}

impl WithFallback {
    pub(super) fn new(gpu: GpuMaskOps) -> WithFallback {
        WithFallback {
            gpu,
            cpu: CpuMaskOps::new(),
            failed: AtomicBool::new(false),
        }
    }

    fn run<T>(
        &self,
        operation: &str,
        gpu: impl FnOnce(&GpuMaskOps) -> Result<T, PostError>,
        cpu: impl FnOnce(&CpuMaskOps) -> Result<T, PostError>,
    ) -> Result<T, PostError> {
        if !self.failed.load(Ordering::Relaxed) {
            match gpu(&self.gpu) {
                Err(PostError::Gpu(e)) => {
                    if !self.failed.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            "GPU {operation} failed ({}); post-processing continues on the CPU",
                            error_chain(&e as &dyn std::error::Error)
                        );
                    }
                }
                other => return other,
            }
        }
        cpu(&self.cpu)
    }
}

impl MaskOps for WithFallback {
    fn backend(&self) -> Backend {
        if self.failed.load(Ordering::Relaxed) {
            Backend::Cpu
        } else {
            self.gpu.backend()
        }
    }

    fn upsample_threshold(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
        threshold_logit: f32,
    ) -> Result<Array3<u8>, PostError> {
        self.run(
            "upsampling",
            |g| g.upsample_threshold(logits, transform, threshold_logit),
            |c| c.upsample_threshold(logits, transform, threshold_logit),
        )
    }

    fn upsample(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
    ) -> Result<Array3<f32>, PostError> {
        self.run(
            "upsampling",
            |g| g.upsample(logits, transform),
            |c| c.upsample(logits, transform),
        )
    }

    fn postprocess(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
        threshold_logit: f32,
        cleanup: &Cleanup,
    ) -> Result<Array3<u8>, PostError> {
        self.run(
            "post-processing",
            |g| g.postprocess(logits, transform, threshold_logit, cleanup),
            |c| c.postprocess(logits, transform, threshold_logit, cleanup),
        )
    }

    fn label(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
    ) -> Result<Array3<u32>, PostError> {
        self.run(
            "labelling",
            |g| g.label(mask, connectivity),
            |c| c.label(mask, connectivity),
        )
    }

    fn keep_largest(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
    ) -> Result<Array3<u8>, PostError> {
        self.run(
            "keep-largest",
            |g| g.keep_largest(mask, connectivity),
            |c| c.keep_largest(mask, connectivity),
        )
    }

    fn remove_small(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
        min_pixels: usize,
    ) -> Result<Array3<u8>, PostError> {
        self.run(
            "remove-small",
            |g| g.remove_small(mask, connectivity, min_pixels),
            |c| c.remove_small(mask, connectivity, min_pixels),
        )
    }

    fn fill_holes(&self, mask: ArrayView3<u8>) -> Result<Array3<u8>, PostError> {
        self.run(
            "hole filling",
            |g| g.fill_holes(mask),
            |c| c.fill_holes(mask),
        )
    }

    fn open(&self, mask: ArrayView3<u8>, radius_px: u32) -> Result<Array3<u8>, PostError> {
        self.run(
            "opening",
            |g| g.open(mask, radius_px),
            |c| c.open(mask, radius_px),
        )
    }

    fn close(&self, mask: ArrayView3<u8>, radius_px: u32) -> Result<Array3<u8>, PostError> {
        self.run(
            "closing",
            |g| g.close(mask, radius_px),
            |c| c.close(mask, radius_px),
        )
    }

    fn distance(
        &self,
        mask: ArrayView3<u8>,
        spacing: Spacing,
        border: Border,
    ) -> Result<Array3<f32>, PostError> {
        self.run(
            "distance transform",
            |g| g.distance(mask, spacing, border),
            |c| c.distance(mask, spacing, border),
        )
    }

    fn top_k(&self, values: ArrayView3<f32>, k: usize) -> Result<Vec<Peak>, PostError> {
        self.run("top-k", |g| g.top_k(values, k), |c| c.top_k(values, k))
    }
}
