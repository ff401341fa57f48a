//! The GPU path of post-processing: WGSL kernels from `shaders/` (one kernel per file, each
//! with a CPU twin in `cpu.rs`) run through wgpu on Vulkan or GL.
//!
//! One [`GpuContext`] per process opens the device and builds every pipeline once. One
//! helper, [`GpuContext::run`], records a batch of dispatches, submits it, reads results back
//! and checks every step (error scope, map callback, mapped range); no other code touches
//! mapping. Large volumes are processed in chunks of slices sized by the adapter's buffer
//! limits; a 26-connected labelling needs the whole volume in one buffer and reports
//! [`GpuError::TooLarge`] when it does not fit. wgpu types never leave this module.

use std::borrow::Cow;
use std::sync::Arc;

use ndarray::{Array3, ArrayView3};

use super::cpu::{self, finish_distance, spacing2, NONE};
use super::{
    bilinear_taps, check_logits, Backend, Border, Cleanup, Connectivity, GpuError, MaskOps, Peak,
    PostError, Tap,
};
use crate::io::Spacing;
use crate::preprocess::{Transform, MODEL_SIZE};

mod context;
mod kernels;
mod passes;
mod probe;

use context::{context, params, Dispatch, GpuContext};
use kernels::Kernel;
use passes::*;

/// The GPU (wgpu) implementation of [`MaskOps`].
#[derive(Debug, Clone)]
pub struct GpuMaskOps {
    ctx: Arc<GpuContext>,
    /// Cap on each buffer, bytes (the adapter's limit and `MAX_CHUNK_BYTES` otherwise).
    max_buffer: Option<u64>,
}

impl GpuMaskOps {
    /// Opens the process-wide GPU context (adapter, device, every pipeline) or reuses it.
    /// The first open runs every kernel on a small fixed input and compares the answers
    /// with the CPU path's.
    ///
    /// # Errors
    /// [`GpuError::NoAdapter`] without a usable Vulkan or GL adapter,
    /// [`GpuError::RequestDevice`] when the device will not open, [`GpuError::Shader`]
    /// when a kernel does not build, [`GpuError::WrongResults`] when the adapter's answers
    /// differ from the CPU path's.
    pub fn new() -> Result<GpuMaskOps, GpuError> {
        let ops = GpuMaskOps {
            ctx: context()?,
            max_buffer: None,
        };
        let wrong = match ops.ctx.checked.get() {
            Some(&wrong) => wrong,
            None => {
                let wrong = probe::check(&ops).map_err(|e| match e {
                    PostError::Gpu(e) => e,
                    other => GpuError::Unusable {
                        message: format!("the known-answer check failed: {other}"),
                    },
                })?;
                // two threads opening at once both check; either verdict is the same
                let _ = ops.ctx.checked.set(wrong);
                wrong
            }
        };
        match wrong {
            None => Ok(ops),
            Some(operation) => Err(GpuError::WrongResults {
                adapter: ops.ctx.description.clone(),
                operation,
            }),
        }
    }

    /// True when the adapter is a software rasteriser (Mesa lavapipe or llvmpipe): it runs
    /// the kernels on the CPU, slower than [`super::CpuMaskOps`].
    pub fn is_software(&self) -> bool {
        self.ctx.software
    }

    /// Caps every GPU buffer at `bytes` (at least 4 KiB): volumes are then processed in more,
    /// smaller chunks of slices, and an operation that cannot be split (26-connected
    /// labelling) fails with [`GpuError::TooLarge`] when the whole volume does not fit.
    pub fn with_max_buffer_bytes(mut self, bytes: u64) -> GpuMaskOps {
        self.max_buffer = Some(bytes.max(4096));
        self
    }

    fn max_buffer(&self) -> u64 {
        let adapter = self.ctx.max_buffer();
        self.max_buffer.map_or(adapter, |cap| cap.min(adapter))
    }

    fn check_size(&self, operation: &'static str, bytes: u64) -> Result<(), GpuError> {
        let limit = self.max_buffer();
        if bytes > limit {
            return Err(GpuError::TooLarge {
                operation,
                bytes,
                limit,
            });
        }
        Ok(())
    }

    /// How many slices fit in one chunk when the largest buffer takes `bytes_per_slice`.
    fn chunk_slices(
        &self,
        operation: &'static str,
        bytes_per_slice: u64,
    ) -> Result<usize, GpuError> {
        self.check_size(operation, bytes_per_slice)?;
        Ok(usize::try_from(self.max_buffer() / bytes_per_slice.max(1))
            .unwrap_or(usize::MAX)
            .max(1))
    }

    /// The adapter's name and graphics API.
    pub fn adapter(&self) -> &str {
        &self.ctx.description
    }
}

impl MaskOps for GpuMaskOps {
    fn backend(&self) -> Backend {
        Backend::Gpu(self.ctx.description.clone())
    }

    fn upsample_threshold(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
        threshold_logit: f32,
    ) -> Result<Array3<u8>, PostError> {
        let out = self.run_from_logits(
            "upsampling",
            logits,
            transform,
            Some(threshold_logit),
            &Cleanup::default(),
        )?;
        into_array(
            (logits.dim().0, transform.source_rows, transform.source_cols),
            out,
        )
    }

    fn upsample(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
    ) -> Result<Array3<f32>, PostError> {
        let out =
            self.run_from_logits("upsampling", logits, transform, None, &Cleanup::default())?;
        into_array(
            (logits.dim().0, transform.source_rows, transform.source_cols),
            words_f32(&out),
        )
    }

    fn postprocess(
        &self,
        logits: ArrayView3<f32>,
        transform: &Transform,
        threshold_logit: f32,
        cleanup: &Cleanup,
    ) -> Result<Array3<u8>, PostError> {
        let out = self.run_from_logits(
            "post-processing",
            logits,
            transform,
            Some(threshold_logit),
            cleanup,
        )?;
        into_array(
            (logits.dim().0, transform.source_rows, transform.source_cols),
            out,
        )
    }

    fn label(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
    ) -> Result<Array3<u32>, PostError> {
        const OP: &str = "labelling";
        let plane = mask.dim().1 * mask.dim().2;
        let (slices, r, c) = mask.dim();
        let neighbours = match connectivity {
            Connectivity::Planar => cpu::Neighbours::Eight,
            Connectivity::Volumetric => cpu::Neighbours::TwentySix,
        };
        let whole = connectivity == Connectivity::Volumetric;
        let data = mask_contiguous(&mask);
        let mut out = Vec::with_capacity(data.len());
        for chunk in self.chunks(OP, slices, plane as u64 * 4, whole)? {
            let n = chunk.len() * plane;
            if n == 0 {
                continue;
            }
            let input = self
                .ctx
                .upload(&data[chunk.start * plane..chunk.end * plane]);
            let mut d = Vec::new();
            let labels = self.label_passes(
                OP,
                &input,
                (chunk.len(), r, c),
                neighbours,
                LabelUse::Labels,
                &mut d,
            )?;
            let bytes = self.run_one(OP, &d, &labels, n as u64 * 4)?;
            let offset = u32_of(OP, chunk.start * plane)? + 1;
            out.extend(words_u32(&bytes[..n * 4]).into_iter().map(|l| {
                if l == NONE {
                    0
                } else {
                    l + offset
                }
            }));
        }
        into_array(mask.dim(), out)
    }

    fn keep_largest(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
    ) -> Result<Array3<u8>, PostError> {
        let out = self.labelled("keep-largest", mask, connectivity, LabelUse::KeepLargest)?;
        into_array(mask.dim(), out)
    }

    fn remove_small(
        &self,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
        min_pixels: usize,
    ) -> Result<Array3<u8>, PostError> {
        let min = u32::try_from(min_pixels).unwrap_or(u32::MAX);
        let out = self.labelled(
            "remove-small",
            mask,
            connectivity,
            LabelUse::RemoveSmall(min),
        )?;
        into_array(mask.dim(), out)
    }

    fn fill_holes(&self, mask: ArrayView3<u8>) -> Result<Array3<u8>, PostError> {
        let out = self.labelled(
            "hole filling",
            mask,
            Connectivity::Planar,
            LabelUse::FillHoles,
        )?;
        into_array(mask.dim(), out)
    }

    fn open(&self, mask: ArrayView3<u8>, radius_px: u32) -> Result<Array3<u8>, PostError> {
        let (_, r, c) = mask.dim();
        let out = self.per_chunk_mask(
            "opening",
            mask,
            (r * (c + 1)) as u64 * 4,
            false,
            1,
            |m, dims, d| self.morph_passes("opening", m, dims, radius_px, false, d),
        )?;
        into_array(mask.dim(), out)
    }

    fn close(&self, mask: ArrayView3<u8>, radius_px: u32) -> Result<Array3<u8>, PostError> {
        let (_, r, c) = mask.dim();
        let out = self.per_chunk_mask(
            "closing",
            mask,
            (r * (c + 1)) as u64 * 4,
            false,
            1,
            |m, dims, d| self.morph_passes("closing", m, dims, radius_px, true, d),
        )?;
        into_array(mask.dim(), out)
    }

    fn distance(
        &self,
        mask: ArrayView3<u8>,
        spacing: Spacing,
        border: Border,
    ) -> Result<Array3<f32>, PostError> {
        const OP: &str = "distance transform";
        let (_, r, c) = mask.dim();
        let sp2 = spacing2(spacing);
        let bytes = self.per_chunk_mask(
            OP,
            mask,
            (r * (c + 1)) as u64 * 4,
            false,
            4,
            |m, dims, d| {
                self.distance_passes(
                    OP,
                    m,
                    dims,
                    false,
                    border == Border::Background,
                    sp2,
                    None,
                    d,
                )
            },
        )?;
        let d: Vec<f32> = words_f32(&bytes).into_iter().map(finish_distance).collect();
        into_array(mask.dim(), d)
    }

    fn top_k(&self, values: ArrayView3<f32>, k: usize) -> Result<Vec<Peak>, PostError> {
        let data: Cow<[f32]> = match values.to_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(values.iter().copied().collect()),
        };
        if k == 0 || data.is_empty() {
            return Ok(Vec::new());
        }
        let per_chunk = usize::try_from(self.max_buffer() / 4)
            .unwrap_or(usize::MAX)
            .max(1);
        let mut candidates = Vec::new();
        for (ci, chunk) in data.chunks(per_chunk).enumerate() {
            let found = self.top_k_chunk(chunk, k)?;
            candidates.extend(found.into_iter().map(|i| i + ci * per_chunk));
        }
        let mut ranked = cpu::rank(&values, candidates);
        ranked.truncate(k);
        Ok(ranked)
    }
}
