//! The passes of each operation over a volume, split into chunks of slices that fit the
//! adapter's buffers: thresholding and upsampling, connected components and their uses,
//! the distance transform and the top-K selection.

use super::context::groups;
use super::kernels::{HISTOGRAM_ITEMS, WORKGROUP_SIZE};
use super::*;

/// Bytes of a packed mask of `pixels` pixels.
pub(super) fn mask_bytes(pixels: usize) -> u64 {
    (pixels as u64).div_ceil(4) * 4
}

pub(super) fn words_u32(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(super) fn words_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub(super) fn mask_contiguous<'a>(mask: &ArrayView3<'a, u8>) -> Cow<'a, [u8]> {
    match mask.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(mask.iter().copied().collect()),
    }
}

pub(super) fn into_array<T>(
    dims: (usize, usize, usize),
    data: Vec<T>,
) -> Result<Array3<T>, PostError> {
    let found = data.len();
    Array3::from_shape_vec(dims, data).map_err(|_| PostError::Shape {
        what: "GPU result",
        expected: format!("{dims:?}"),
        found: format!("{found} values"),
    })
}

pub(super) fn u32_of(operation: &'static str, n: usize) -> Result<u32, GpuError> {
    u32::try_from(n).map_err(|_| GpuError::TooLarge {
        operation,
        bytes: n as u64,
        limit: u64::from(u32::MAX),
    })
}

/// Labelling mode of merge_labels.wgsl.
pub(super) fn merge_mode(neighbours: cpu::Neighbours) -> u32 {
    match neighbours {
        cpu::Neighbours::Four => 0,
        cpu::Neighbours::Eight => 1,
        cpu::Neighbours::TwentySix => 2,
    }
}

/// What to do with the labels of a chunk.
#[derive(Clone, Copy)]
pub(super) enum LabelUse {
    Labels,
    KeepLargest,
    RemoveSmall(u32),
    FillHoles,
}

/// Geometry of one chunk: slices, rows, columns.
pub(super) type Dims = (usize, usize, usize);

impl GpuMaskOps {
    /// Chunks of whole slices for a per-slice operation whose largest buffer holds
    /// `per_slice` bytes per slice, or the whole volume in one chunk for a volumetric one.
    pub(super) fn chunks(
        &self,
        operation: &'static str,
        slices: usize,
        per_slice: u64,
        whole: bool,
    ) -> Result<Vec<std::ops::Range<usize>>, GpuError> {
        if whole {
            self.check_size(operation, per_slice * slices as u64)?;
            return Ok(std::iter::once(0..slices).collect());
        }
        let step = self.chunk_slices(operation, per_slice)?;
        Ok((0..slices)
            .step_by(step)
            .map(|a| a..(a + step).min(slices))
            .collect())
    }

    /// Appends the dispatches that label the packed `mask` of a chunk and apply `usage`;
    /// returns the buffer of the result: labels (chunk-local roots, or NONE) for
    /// [`LabelUse::Labels`], a packed mask otherwise.
    pub(super) fn label_passes(
        &self,
        operation: &'static str,
        mask: &wgpu::Buffer,
        dims: Dims,
        neighbours: cpu::Neighbours,
        usage: LabelUse,
        out: &mut Vec<Dispatch>,
    ) -> Result<wgpu::Buffer, GpuError> {
        let ctx = &self.ctx;
        let (s, r, c) = dims;
        let n = s * r * c;
        let n32 = u32_of(operation, n)?;
        let (s32, r32, c32) = (s as u32, r as u32, c as u32);
        let want = u32::from(!matches!(usage, LabelUse::FillHoles));
        let labels = ctx.scratch(n as u64 * 4);
        let g = groups(n as u64)?;
        let words = n.div_ceil(4);
        let words32 = u32_of(operation, words)?;
        let wg = groups(words as u64)?;
        out.push(Dispatch {
            kernel: Kernel::InitLabels,
            params: params(&[n32, want]),
            buffers: vec![mask.clone(), labels.clone()],
            workgroups: g,
        });
        out.push(Dispatch {
            kernel: Kernel::MergeLabels,
            params: params(&[s32, r32, c32, merge_mode(neighbours), want]),
            buffers: vec![mask.clone(), labels.clone()],
            workgroups: g,
        });
        out.push(Dispatch {
            kernel: Kernel::CompressLabels,
            params: params(&[n32]),
            buffers: vec![labels.clone()],
            workgroups: g,
        });
        let domain = if neighbours == cpu::Neighbours::TwentySix {
            n32
        } else {
            r32 * c32
        };
        let domains = n.div_ceil((domain as usize).max(1)).max(1);
        let result = match usage {
            LabelUse::Labels => return Ok(labels),
            LabelUse::KeepLargest | LabelUse::RemoveSmall(_) => {
                let sizes = ctx.scratch(n as u64 * 4);
                let result = ctx.scratch(mask_bytes(n));
                out.push(Dispatch {
                    kernel: Kernel::CountSizes,
                    params: params(&[n32]),
                    buffers: vec![labels.clone(), sizes.clone()],
                    workgroups: g,
                });
                if let LabelUse::RemoveSmall(min) = usage {
                    out.push(Dispatch {
                        kernel: Kernel::RemoveSmall,
                        params: params(&[n32, words32, min]),
                        buffers: vec![labels, sizes, result.clone()],
                        workgroups: wg,
                    });
                } else {
                    let best = ctx.scratch(domains as u64 * 4);
                    let pick = ctx.upload(bytemuck::cast_slice(&vec![NONE; domains]));
                    out.push(Dispatch {
                        kernel: Kernel::FindLargest,
                        params: params(&[n32, domain]),
                        buffers: vec![labels.clone(), sizes.clone(), best.clone()],
                        workgroups: g,
                    });
                    out.push(Dispatch {
                        kernel: Kernel::PickLargest,
                        params: params(&[n32, domain]),
                        buffers: vec![labels.clone(), sizes, best, pick.clone()],
                        workgroups: g,
                    });
                    out.push(Dispatch {
                        kernel: Kernel::KeepLargest,
                        params: params(&[n32, words32, domain]),
                        buffers: vec![labels, pick, result.clone()],
                        workgroups: wg,
                    });
                }
                result
            }
            LabelUse::FillHoles => {
                let flags = ctx.scratch(n as u64 * 4);
                let result = ctx.scratch(mask_bytes(n));
                out.push(Dispatch {
                    kernel: Kernel::MarkBorder,
                    params: params(&[s32, r32, c32]),
                    buffers: vec![labels.clone(), flags.clone()],
                    workgroups: g,
                });
                out.push(Dispatch {
                    kernel: Kernel::FillHoles,
                    params: params(&[n32, words32]),
                    buffers: vec![mask.clone(), labels, flags, result.clone()],
                    workgroups: wg,
                });
                result
            }
        };
        Ok(result)
    }

    /// Appends the dispatches of the squared distance transform of the packed `mask` of a
    /// chunk; returns the squared distances (f32, mm^2), or with `compare = Some((r2,
    /// dilate))` the packed mask `d2 <= r2` (dilation) or `d2 > r2` (erosion).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn distance_passes(
        &self,
        operation: &'static str,
        mask: &wgpu::Buffer,
        dims: Dims,
        feature: bool,
        border: bool,
        (sy2, sx2): (f32, f32),
        compare: Option<(f32, bool)>,
        out: &mut Vec<Dispatch>,
    ) -> Result<wgpu::Buffer, GpuError> {
        let ctx = &self.ctx;
        let (s, r, c) = dims;
        let n = s * r * c;
        let (s32, r32, c32, n32) = (s as u32, r as u32, c as u32, u32_of(operation, n)?);
        let count = ctx.scratch(n as u64 * 4);
        let g = ctx.scratch(n as u64 * 4);
        let z = ctx.scratch((s * r * (c + 1)) as u64 * 4);
        let d2 = ctx.scratch(n as u64 * 4);
        out.push(Dispatch {
            kernel: Kernel::ScanColumns,
            params: params(&[
                s32,
                r32,
                c32,
                u32::from(feature),
                u32::from(border),
                sy2.to_bits(),
            ]),
            buffers: vec![mask.clone(), count.clone(), g.clone()],
            workgroups: groups((s * c) as u64)?,
        });
        out.push(Dispatch {
            kernel: Kernel::EnvelopeRows,
            params: params(&[s32, r32, c32, u32::from(border), sx2.to_bits()]),
            buffers: vec![g, count, z, d2.clone()],
            workgroups: groups((s * r) as u64)?,
        });
        let Some((r2, dilate)) = compare else {
            return Ok(d2);
        };
        let words = n.div_ceil(4);
        let packed = ctx.scratch(mask_bytes(n));
        out.push(Dispatch {
            kernel: Kernel::CompareDistance,
            params: params(&[
                n32,
                u32_of(operation, words)?,
                r2.to_bits(),
                u32::from(dilate),
            ]),
            buffers: vec![d2, packed.clone()],
            workgroups: groups(words as u64)?,
        });
        Ok(packed)
    }

    /// Appends opening (`close = false`) or closing by a disk of `radius_px`.
    pub(super) fn morph_passes(
        &self,
        operation: &'static str,
        mask: &wgpu::Buffer,
        dims: Dims,
        radius_px: u32,
        close: bool,
        out: &mut Vec<Dispatch>,
    ) -> Result<wgpu::Buffer, GpuError> {
        let r2 = radius_px as f32 * radius_px as f32;
        let unit = (1.0, 1.0);
        // opening: erode (features = background) then dilate (features = foreground)
        let first = self.distance_passes(
            operation,
            mask,
            dims,
            close,
            false,
            unit,
            Some((r2, close)),
            out,
        )?;
        self.distance_passes(
            operation,
            &first,
            dims,
            !close,
            false,
            unit,
            Some((r2, !close)),
            out,
        )
    }

    /// Appends the upsampling of `slices` logit frames in `logits`, thresholded when
    /// `threshold` is set; returns the packed mask or the f32 logits on the source grid.
    pub(super) fn upsample_pass(
        &self,
        operation: &'static str,
        logits: &wgpu::Buffer,
        taps: &wgpu::Buffer,
        dims: Dims,
        threshold: Option<f32>,
        out: &mut Vec<Dispatch>,
    ) -> Result<wgpu::Buffer, GpuError> {
        let (s, rows, cols) = dims;
        let pixels = s * rows * cols;
        let (s32, r32, c32) = (s as u32, rows as u32, cols as u32);
        Ok(match threshold {
            Some(t) => {
                let words = pixels.div_ceil(4);
                let mask = self.ctx.scratch(mask_bytes(pixels));
                out.push(Dispatch {
                    kernel: Kernel::ThresholdLogits,
                    params: params(&[s32, r32, c32, u32_of(operation, words)?, t.to_bits()]),
                    buffers: vec![logits.clone(), taps.clone(), mask.clone()],
                    workgroups: groups(words as u64)?,
                });
                mask
            }
            None => {
                let result = self.ctx.scratch(pixels as u64 * 4);
                out.push(Dispatch {
                    kernel: Kernel::UpsampleLogits,
                    params: params(&[s32, r32, c32, u32_of(operation, pixels)?]),
                    buffers: vec![logits.clone(), taps.clone(), result.clone()],
                    workgroups: groups(pixels as u64)?,
                });
                result
            }
        })
    }

    /// Runs `dispatches` and reads back `bytes` of `buffer`.
    pub(super) fn run_one(
        &self,
        operation: &'static str,
        dispatches: &[Dispatch],
        buffer: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>, GpuError> {
        let result = self
            .ctx
            .run(operation, dispatches, &[(buffer, bytes)])?
            .into_iter()
            .next()
            .unwrap_or_default();
        if (result.len() as u64) < bytes {
            return Err(GpuError::Run {
                operation,
                message: format!("read back {} of {bytes} bytes", result.len()),
            });
        }
        Ok(result)
    }

    /// Runs a per-chunk pipeline over the slices of a mask: `build` appends the dispatches
    /// for one uploaded chunk and returns the buffer to read back, of `bytes_per_pixel`.
    pub(super) fn per_chunk_mask(
        &self,
        operation: &'static str,
        mask: ArrayView3<u8>,
        per_slice: u64,
        whole: bool,
        bytes_per_pixel: u64,
        build: impl Fn(&wgpu::Buffer, Dims, &mut Vec<Dispatch>) -> Result<wgpu::Buffer, GpuError>,
    ) -> Result<Vec<u8>, GpuError> {
        let (slices, r, c) = mask.dim();
        let plane = r * c;
        let data = mask_contiguous(&mask);
        let mut out = Vec::with_capacity(data.len() * bytes_per_pixel as usize);
        for chunk in self.chunks(operation, slices, per_slice, whole)? {
            let n = chunk.len() * plane;
            if n == 0 {
                continue;
            }
            let input = self
                .ctx
                .upload(&data[chunk.start * plane..chunk.end * plane]);
            let mut dispatches = Vec::new();
            let result = build(&input, (chunk.len(), r, c), &mut dispatches)?;
            let bytes =
                self.run_one(operation, &dispatches, &result, n as u64 * bytes_per_pixel)?;
            out.extend_from_slice(&bytes[..n * bytes_per_pixel as usize]);
        }
        Ok(out)
    }

    /// Label-based operations over a volume, chunk by chunk.
    pub(super) fn labelled(
        &self,
        operation: &'static str,
        mask: ArrayView3<u8>,
        connectivity: Connectivity,
        usage: LabelUse,
    ) -> Result<Vec<u8>, GpuError> {
        let (_, r, c) = mask.dim();
        let (neighbours, whole) = match (usage, connectivity) {
            (LabelUse::FillHoles, _) => (cpu::Neighbours::Four, false),
            (_, Connectivity::Planar) => (cpu::Neighbours::Eight, false),
            (_, Connectivity::Volumetric) => (cpu::Neighbours::TwentySix, true),
        };
        let per_pixel = if matches!(usage, LabelUse::Labels) {
            4
        } else {
            1
        };
        self.per_chunk_mask(
            operation,
            mask,
            (r * c) as u64 * 4,
            whole,
            per_pixel,
            |input, dims, out| self.label_passes(operation, input, dims, neighbours, usage, out),
        )
    }

    /// Exact top-`k` candidate indices of one chunk of values by radix selection on the
    /// order keys: four histogram rounds fix the k-th key, four more (only when that key is
    /// tied) fix the last index taken among the ties; one gather pass collects them.
    pub(super) fn top_k_chunk(&self, values: &[f32], k: usize) -> Result<Vec<usize>, GpuError> {
        const OP: &str = "top-k";
        let ctx = &self.ctx;
        let n = values.len();
        if k >= n {
            return Ok((0..n).collect());
        }
        let n32 = u32_of(OP, n)?;
        let values_buf = ctx.upload(bytemuck::cast_slice(values));
        let hist_groups = u32_of(OP, n.div_ceil((WORKGROUP_SIZE * HISTOGRAM_ITEMS) as usize))?;
        let histogram = |mode: u32, shift: u32, mask: u32, prefix: u32, key: u32| {
            let hist = ctx.scratch(256 * 4);
            let bytes = self.run_one(
                OP,
                &[Dispatch {
                    kernel: Kernel::HistogramKeys,
                    params: params(&[n32, shift, mask, prefix, mode, key]),
                    buffers: vec![values_buf.clone(), hist.clone()],
                    workgroups: hist_groups,
                }],
                &hist,
                256 * 4,
            )?;
            Ok::<_, GpuError>(words_u32(&bytes))
        };
        let inconsistent = || GpuError::Run {
            operation: OP,
            message: "histograms do not add up".into(),
        };
        // k-th largest key, from the top byte down
        let mut need = k as u64;
        let (mut prefix, mut mask) = (0u32, 0u32);
        let mut tied = 0u64;
        for shift in [24u32, 16, 8, 0] {
            let h = histogram(0, shift, mask, prefix, 0)?;
            let mut chosen = None;
            for (b, &count) in h.iter().enumerate().rev() {
                let count = u64::from(count);
                if count >= need {
                    chosen = Some((b as u32, count));
                    break;
                }
                need -= count;
            }
            let (b, count) = chosen.ok_or_else(inconsistent)?;
            prefix |= b << shift;
            mask |= 0xff << shift;
            tied = count;
        }
        let key = prefix;
        // last index taken among the ties, from the top byte down
        let mut last = u32::MAX;
        if need < tied {
            let (mut iprefix, mut imask) = (0u32, 0u32);
            for shift in [24u32, 16, 8, 0] {
                let h = histogram(1, shift, imask, iprefix, key)?;
                let mut chosen = None;
                for (b, &count) in h.iter().enumerate() {
                    let count = u64::from(count);
                    if count >= need {
                        chosen = Some(b as u32);
                        break;
                    }
                    need -= count;
                }
                let b = chosen.ok_or_else(inconsistent)?;
                iprefix |= b << shift;
                imask |= 0xff << shift;
            }
            last = iprefix;
        }
        let counter = ctx.scratch(4);
        let found = ctx.scratch(k as u64 * 4);
        let k32 = u32_of(OP, k)?;
        let bytes = ctx.run(
            OP,
            &[Dispatch {
                kernel: Kernel::GatherTop,
                params: params(&[n32, key, last, k32]),
                buffers: vec![values_buf.clone(), counter.clone(), found.clone()],
                workgroups: groups(n as u64)?,
            }],
            &[(&counter, 4), (&found, k as u64 * 4)],
        )?;
        let total = bytes
            .first()
            .map(|b| words_u32(b))
            .and_then(|w| w.first().copied());
        if total != Some(k32) {
            return Err(GpuError::Run {
                operation: OP,
                message: format!("gathered {total:?} of {k} values"),
            });
        }
        let indices = words_u32(bytes.get(1).map_or(&[][..], |b| b));
        let indices: Vec<usize> = indices.into_iter().map(|i| i as usize).collect();
        if indices.len() != k || indices.iter().any(|&i| i >= n) {
            return Err(inconsistent());
        }
        Ok(indices)
    }

    /// Upsampling (and the thresholded variant with its clean-up) over chunks of logit
    /// frames: one upload of the logits, one readback of the result per chunk.
    pub(super) fn run_from_logits(
        &self,
        operation: &'static str,
        logits: ArrayView3<f32>,
        transform: &Transform,
        threshold: Option<f32>,
        cleanup: &Cleanup,
    ) -> Result<Vec<u8>, PostError> {
        check_logits(&logits)?;
        let ctx = &self.ctx;
        let n = logits.dim().0;
        let (rows, cols) = (transform.source_rows, transform.source_cols);
        let plane = rows * cols;
        let sc = transform.scaled_cols.clamp(1, MODEL_SIZE);
        let mut taps: Vec<Tap> = bilinear_taps(transform.scaled_rows.clamp(1, MODEL_SIZE), rows);
        taps.extend(bilinear_taps(sc, cols));
        let taps_buf = ctx.upload(bytemuck::cast_slice(&taps));
        let data: Cow<[f32]> = match logits.to_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(logits.iter().copied().collect()),
        };
        let frame = MODEL_SIZE * MODEL_SIZE;
        // the largest buffer per slice: logits, labels or distance scratch
        let per_slice = (frame as u64 * 4)
            .max(plane as u64 * 4)
            .max((rows * (cols + 1)) as u64 * 4);
        let whole = cleanup.keep_largest == Some(Connectivity::Volumetric)
            || matches!(cleanup.remove_small, Some((Connectivity::Volumetric, _)));
        let per_pixel: u64 = if threshold.is_some() { 1 } else { 4 };
        let mut out = Vec::with_capacity(n * plane * per_pixel as usize);
        for chunk in self.chunks(operation, n, per_slice, whole)? {
            let (start, end) = (chunk.start, chunk.end);
            let pixels = chunk.len() * plane;
            if pixels == 0 {
                continue;
            }
            let dims = (chunk.len(), rows, cols);
            let input = ctx.upload(bytemuck::cast_slice(&data[start * frame..end * frame]));
            let mut d = Vec::new();
            let mut result =
                self.upsample_pass(operation, &input, &taps_buf, dims, threshold, &mut d)?;
            if threshold.is_some() {
                result = self.cleanup_passes(operation, result, dims, cleanup, &mut d)?;
            }
            let bytes = self.run_one(operation, &d, &result, pixels as u64 * per_pixel)?;
            out.extend_from_slice(&bytes[..pixels * per_pixel as usize]);
        }
        Ok(out)
    }

    /// Appends the clean-up steps of `cleanup`, in their documented order.
    pub(super) fn cleanup_passes(
        &self,
        operation: &'static str,
        mut mask: wgpu::Buffer,
        dims: Dims,
        cleanup: &Cleanup,
        d: &mut Vec<Dispatch>,
    ) -> Result<wgpu::Buffer, GpuError> {
        let neighbours = |c: Connectivity| match c {
            Connectivity::Planar => cpu::Neighbours::Eight,
            Connectivity::Volumetric => cpu::Neighbours::TwentySix,
        };
        if let Some(c) = cleanup.keep_largest {
            mask = self.label_passes(
                operation,
                &mask,
                dims,
                neighbours(c),
                LabelUse::KeepLargest,
                d,
            )?;
        }
        if let Some((c, min)) = cleanup.remove_small {
            let min = u32::try_from(min).unwrap_or(u32::MAX);
            mask = self.label_passes(
                operation,
                &mask,
                dims,
                neighbours(c),
                LabelUse::RemoveSmall(min),
                d,
            )?;
        }
        if cleanup.fill_holes {
            mask = self.label_passes(
                operation,
                &mask,
                dims,
                cpu::Neighbours::Four,
                LabelUse::FillHoles,
                d,
            )?;
        }
        if cleanup.open_px > 0 {
            mask = self.morph_passes(operation, &mask, dims, cleanup.open_px, false, d)?;
        }
        if cleanup.close_px > 0 {
            mask = self.morph_passes(operation, &mask, dims, cleanup.close_px, true, d)?;
        }
        Ok(mask)
    }
}
