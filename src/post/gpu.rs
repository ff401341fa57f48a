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
use std::sync::{Arc, Mutex};

use ndarray::{Array3, ArrayView3};
use wgpu::util::DeviceExt;

use super::cpu::{self, finish_distance, spacing2, NONE};
use super::{
    bilinear_taps, check_logits, Backend, Border, Cleanup, Connectivity, GpuError, MaskOps, Peak,
    PostError, Tap,
};
use crate::io::Spacing;
use crate::preprocess::{Transform, MODEL_SIZE};

/// Invocations per workgroup of every kernel (`@workgroup_size` in each `.wgsl`, checked
/// by a test).
pub(crate) const WORKGROUP_SIZE: u32 = 256;

/// Elements each invocation of `histogram_keys.wgsl` reads (its `ITEMS` constant).
const HISTOGRAM_ITEMS: u32 = 64;

/// Largest buffer one chunk may use, whatever the adapter allows: keeps a software
/// adapter's memory use moderate.
const MAX_CHUNK_BYTES: u64 = 512 << 20;

/// The compute kernels, in the order of [`KERNELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    ThresholdLogits,
    UpsampleLogits,
    InitLabels,
    MergeLabels,
    CompressLabels,
    CountSizes,
    FindLargest,
    PickLargest,
    KeepLargest,
    RemoveSmall,
    MarkBorder,
    FillHoles,
    ScanColumns,
    EnvelopeRows,
    CompareDistance,
    HistogramKeys,
    GatherTop,
}

/// A kernel's file name, source and storage bindings (binding 0 is always the uniform
/// parameters; storage bindings follow from 1, `true` = read-only).
pub(crate) struct KernelSpec {
    pub(crate) name: &'static str,
    pub(crate) source: &'static str,
    pub(crate) read_only: &'static [bool],
}

macro_rules! kernel {
    ($name:literal, $ro:expr) => {
        KernelSpec {
            name: $name,
            source: include_str!(concat!("../../shaders/", $name, ".wgsl")),
            read_only: $ro,
        }
    };
}

/// Every kernel, indexed by [`Kernel`].
pub(crate) const KERNELS: [KernelSpec; 17] = [
    kernel!("threshold_logits", &[true, true, false]),
    kernel!("upsample_logits", &[true, true, false]),
    kernel!("init_labels", &[true, false]),
    kernel!("merge_labels", &[true, false]),
    kernel!("compress_labels", &[false]),
    kernel!("count_sizes", &[true, false]),
    kernel!("find_largest", &[true, true, false]),
    kernel!("pick_largest", &[true, true, true, false]),
    kernel!("keep_largest", &[true, true, false]),
    kernel!("remove_small", &[true, true, false]),
    kernel!("mark_border", &[true, false]),
    kernel!("fill_holes", &[true, true, true, false]),
    kernel!("scan_columns", &[true, false, false]),
    kernel!("envelope_rows", &[true, false, false, false]),
    kernel!("compare_distance", &[true, false]),
    kernel!("histogram_keys", &[true, false]),
    kernel!("gather_top", &[true, false, false]),
];

/// Uniform parameters of one dispatch: 16 words, each kernel's `Params` struct reads a
/// prefix of them (f32 fields as their bits).
type Params = [u32; 16];

fn params(values: &[u32]) -> Params {
    let mut p = [0u32; 16];
    for (d, &v) in p.iter_mut().zip(values) {
        *d = v;
    }
    p
}

/// One dispatch: a kernel, its parameters, its storage buffers (bindings 1..) and the
/// number of workgroups.
struct Dispatch {
    kernel: Kernel,
    params: Params,
    buffers: Vec<wgpu::Buffer>,
    workgroups: u32,
}

/// Workgroups to cover `invocations`.
fn groups(invocations: u64) -> Result<u32, GpuError> {
    u32::try_from(invocations.div_ceil(u64::from(WORKGROUP_SIZE))).map_err(|_| GpuError::TooLarge {
        operation: "dispatch",
        bytes: invocations,
        limit: u64::from(u32::MAX),
    })
}

/// Where a map callback leaves its result.
type MapSlot = Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>>;

struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// The device, its queue and every pipeline, built once per process.
pub(crate) struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    description: String,
    /// A software rasteriser (lavapipe, llvmpipe, WARP): correct, but slower than the CPU
    /// path, so `--device auto` does not pick it.
    software: bool,
    limits: wgpu::Limits,
    pipelines: Vec<Pipeline>,
    /// Errors wgpu reported outside any error scope (for example a lost device).
    uncaptured: Arc<Mutex<Vec<String>>>,
    /// One batch at a time: error scopes and map waits are per submission.
    lock: Mutex<()>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.description)
            .finish_non_exhaustive()
    }
}

fn boxed(
    e: impl std::error::Error + Send + Sync + 'static,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

impl GpuContext {
    fn open() -> Result<GpuContext, GpuError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| GpuError::NoAdapter { source: boxed(e) })?;
        let info = adapter.get_info();
        let description = format!("{}, {:?}", info.name, info.backend);
        let software = info.device_type == wgpu::DeviceType::Cpu;
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        {
            return Err(GpuError::NoAdapter {
                source: format!("{description} cannot run compute shaders").into(),
            });
        }
        // everything the adapter offers (the largest buffers); some drivers (NVIDIA over
        // GL) refuse that, so retry with downlevel limits raised to the adapter's buffer
        // sizes
        let offered = adapter.limits();
        let modest = wgpu::Limits {
            max_storage_buffer_binding_size: offered.max_storage_buffer_binding_size,
            max_buffer_size: offered.max_buffer_size,
            max_compute_workgroups_per_dimension: offered.max_compute_workgroups_per_dimension,
            ..wgpu::Limits::downlevel_defaults()
        };
        let mut failures = Vec::new();
        let mut opened = None;
        for limits in [offered, modest] {
            let request = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("cosam post"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            }));
            match request {
                Ok(pair) => {
                    opened = Some((pair, limits));
                    break;
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        let Some(((device, queue), limits)) = opened else {
            return Err(GpuError::RequestDevice {
                adapter: description,
                source: failures.join("; then, with downlevel limits: ").into(),
            });
        };
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut errors) = sink.lock() {
                errors.push(e.to_string());
            }
        }));
        let mut pipelines = Vec::with_capacity(KERNELS.len());
        for spec in &KERNELS {
            pipelines.push(build_pipeline(&device, spec)?);
        }
        Ok(GpuContext {
            device,
            queue,
            description,
            software,
            limits,
            pipelines,
            uncaptured,
            lock: Mutex::new(()),
        })
    }

    /// Largest single buffer allowed.
    fn max_buffer(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(MAX_CHUNK_BYTES)
    }

    /// A storage buffer holding `data` (padded to a multiple of 4 bytes).
    fn upload(&self, data: &[u8]) -> wgpu::Buffer {
        let padded;
        let contents = if data.len().is_multiple_of(4) && !data.is_empty() {
            data
        } else {
            let mut v = data.to_vec();
            v.resize(data.len().div_ceil(4).max(1) * 4, 0);
            padded = v;
            &padded
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// A zeroed storage buffer of `bytes` (rounded up to 4).
    fn scratch(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.div_ceil(4).max(1) * 4,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// Records `dispatches` in order, submits them, and reads back the first `bytes` of
    /// each buffer in `readback`. Every failure (validation, out of memory, lost device,
    /// failed map) becomes a [`GpuError`].
    fn run(
        &self,
        operation: &'static str,
        dispatches: &[Dispatch],
        readback: &[(&wgpu::Buffer, u64)],
    ) -> Result<Vec<Vec<u8>>, GpuError> {
        let _guard = self.lock.lock().map_err(|_| GpuError::Unusable {
            message: "a thread panicked while using the GPU".into(),
        })?;
        let fail = |message: String| GpuError::Run { operation, message };
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(operation),
            });
        let max_x = self.limits.max_compute_workgroups_per_dimension.max(1);
        let uniforms: Vec<wgpu::Buffer> = dispatches
            .iter()
            .map(|d| {
                self.device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: None,
                        contents: bytemuck::cast_slice(&d.params),
                        usage: wgpu::BufferUsages::UNIFORM,
                    })
            })
            .collect();
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(operation),
                timestamp_writes: None,
            });
            for (d, uniform) in dispatches.iter().zip(&uniforms) {
                if d.workgroups == 0 {
                    continue;
                }
                let pipeline = &self.pipelines[d.kernel as usize];
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                }];
                for (b, buffer) in d.buffers.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: b as u32 + 1,
                        resource: buffer.as_entire_binding(),
                    });
                }
                let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(KERNELS[d.kernel as usize].name),
                    layout: &pipeline.layout,
                    entries: &entries,
                });
                pass.set_pipeline(&pipeline.pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                let x = d.workgroups.min(max_x);
                let y = d.workgroups.div_ceil(x);
                if y > max_x {
                    return Err(GpuError::TooLarge {
                        operation,
                        bytes: u64::from(d.workgroups) * u64::from(WORKGROUP_SIZE),
                        limit: u64::from(max_x) * u64::from(max_x) * u64::from(WORKGROUP_SIZE),
                    });
                }
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        let mut staging = Vec::with_capacity(readback.len());
        for &(buffer, bytes) in readback {
            let size = bytes.div_ceil(4).max(1) * 4;
            let s = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            encoder.copy_buffer_to_buffer(buffer, 0, &s, 0, size);
            staging.push((s, bytes));
        }
        self.queue.submit([encoder.finish()]);
        let results: Vec<MapSlot> = staging
            .iter()
            .map(|(s, _)| {
                let slot = Arc::new(Mutex::new(None));
                let sink = Arc::clone(&slot);
                s.map_async(wgpu::MapMode::Read, .., move |r| {
                    if let Ok(mut v) = sink.lock() {
                        *v = Some(r);
                    }
                });
                slot
            })
            .collect();
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        if let Some(e) = pollster::block_on(oom.pop()) {
            return Err(fail(e.to_string()));
        }
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(fail(e.to_string()));
        }
        if let Ok(mut errors) = self.uncaptured.lock() {
            if !errors.is_empty() {
                let message = errors.join("; ");
                errors.clear();
                return Err(fail(message));
            }
        }
        polled.map_err(|e| GpuError::Readback {
            operation,
            source: boxed(e),
        })?;
        let mut out = Vec::with_capacity(staging.len());
        for ((s, bytes), slot) in staging.iter().zip(results) {
            let status = slot.lock().ok().and_then(|mut v| v.take());
            match status {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return Err(GpuError::Readback {
                        operation,
                        source: boxed(e),
                    })
                }
                None => {
                    return Err(GpuError::Readback {
                        operation,
                        source: "the map callback did not run".into(),
                    })
                }
            }
            let data = {
                let view = s.get_mapped_range(..).map_err(|e| GpuError::Readback {
                    operation,
                    source: boxed(e),
                })?;
                let n = usize::try_from(*bytes)
                    .unwrap_or(usize::MAX)
                    .min(view.len());
                view[..n].to_vec()
            };
            s.unmap();
            out.push(data);
        }
        Ok(out)
    }
}

fn build_pipeline(device: &wgpu::Device, spec: &KernelSpec) -> Result<Pipeline, GpuError> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(spec.name),
        source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(spec.source)),
    });
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }];
    for (i, &read_only) in spec.read_only.iter().enumerate() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(spec.name),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(spec.name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(spec.name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(GpuError::Shader {
            kernel: spec.name,
            message: e.to_string(),
        });
    }
    Ok(Pipeline { pipeline, layout })
}

/// The process-wide context, opened on first use; a failure is not cached, so a later
/// call tries again.
fn context() -> Result<Arc<GpuContext>, GpuError> {
    static CONTEXT: Mutex<Option<Arc<GpuContext>>> = Mutex::new(None);
    let mut slot = CONTEXT.lock().map_err(|_| GpuError::Unusable {
        message: "a thread panicked while opening the GPU".into(),
    })?;
    if let Some(ctx) = slot.as_ref() {
        return Ok(Arc::clone(ctx));
    }
    let ctx = Arc::new(GpuContext::open()?);
    *slot = Some(Arc::clone(&ctx));
    Ok(ctx)
}

/// The GPU (wgpu) implementation of [`MaskOps`].
#[derive(Debug, Clone)]
pub struct GpuMaskOps {
    ctx: Arc<GpuContext>,
    /// Cap on each buffer, bytes (the adapter's limit and `MAX_CHUNK_BYTES` otherwise).
    max_buffer: Option<u64>,
}

impl GpuMaskOps {
    /// Opens the process-wide GPU context (adapter, device, every pipeline) or reuses it.
    ///
    /// # Errors
    /// [`GpuError::NoAdapter`] without a usable Vulkan or GL adapter,
    /// [`GpuError::RequestDevice`] when the device will not open, [`GpuError::Shader`]
    /// when a kernel does not build.
    pub fn new() -> Result<GpuMaskOps, GpuError> {
        Ok(GpuMaskOps {
            ctx: context()?,
            max_buffer: None,
        })
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

/// Bytes of a packed mask of `pixels` pixels.
fn mask_bytes(pixels: usize) -> u64 {
    (pixels as u64).div_ceil(4) * 4
}

fn words_u32(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn words_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn mask_contiguous<'a>(mask: &ArrayView3<'a, u8>) -> Cow<'a, [u8]> {
    match mask.to_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(mask.iter().copied().collect()),
    }
}

fn into_array<T>(dims: (usize, usize, usize), data: Vec<T>) -> Result<Array3<T>, PostError> {
    let found = data.len();
    Array3::from_shape_vec(dims, data).map_err(|_| PostError::Shape {
        what: "GPU result",
        expected: format!("{dims:?}"),
        found: format!("{found} values"),
    })
}

fn u32_of(operation: &'static str, n: usize) -> Result<u32, GpuError> {
    u32::try_from(n).map_err(|_| GpuError::TooLarge {
        operation,
        bytes: n as u64,
        limit: u64::from(u32::MAX),
    })
}

/// Labelling mode of merge_labels.wgsl.
fn merge_mode(neighbours: cpu::Neighbours) -> u32 {
    match neighbours {
        cpu::Neighbours::Four => 0,
        cpu::Neighbours::Eight => 1,
        cpu::Neighbours::TwentySix => 2,
    }
}

/// What to do with the labels of a chunk.
#[derive(Clone, Copy)]
enum LabelUse {
    Labels,
    KeepLargest,
    RemoveSmall(u32),
    FillHoles,
}

/// Geometry of one chunk: slices, rows, columns.
type Dims = (usize, usize, usize);

impl GpuMaskOps {
    /// Chunks of whole slices for a per-slice operation whose largest buffer holds
    /// `per_slice` bytes per slice, or the whole volume in one chunk for a volumetric one.
    fn chunks(
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
    fn label_passes(
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
    fn distance_passes(
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
    fn morph_passes(
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
    fn upsample_pass(
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
    fn run_one(
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
    fn per_chunk_mask(
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
    fn labelled(
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
    fn top_k_chunk(&self, values: &[f32], k: usize) -> Result<Vec<usize>, GpuError> {
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
    fn run_from_logits(
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
    fn cleanup_passes(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_declares_the_rust_workgroup_size() {
        let expected = "@workgroup_size(WG)";
        for spec in &KERNELS {
            assert_eq!(
                spec.source.matches("@workgroup_size(").count(),
                1,
                "{}: one entry point",
                spec.name
            );
            assert!(spec.source.contains(expected), "{}: {expected}", spec.name);
            assert!(
                spec.source
                    .contains(&format!("const WG: u32 = {WORKGROUP_SIZE}u;")),
                "{}: WG = {WORKGROUP_SIZE}",
                spec.name
            );
        }
    }

    #[test]
    fn histogram_items_match_the_kernel() {
        let src = KERNELS[Kernel::HistogramKeys as usize].source;
        assert!(src.contains(&format!("const ITEMS: u32 = {HISTOGRAM_ITEMS}u;")));
    }

    #[test]
    fn every_kernel_is_valid_wgsl_with_the_bindings_the_host_declares() {
        use wgpu::naga;
        for spec in &KERNELS {
            let module = naga::front::wgsl::parse_str(spec.source)
                .unwrap_or_else(|e| panic!("{}: {}", spec.name, e.emit_to_string(spec.source)));
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", spec.name));
            assert_eq!(module.entry_points.len(), 1, "{}", spec.name);
            assert_eq!(module.entry_points[0].name, "main", "{}", spec.name);
            let mut bindings: Vec<(u32, bool)> = module
                .global_variables
                .iter()
                .filter_map(|(_, g)| {
                    let b = g.binding.as_ref()?;
                    assert_eq!(b.group, 0, "{}", spec.name);
                    let read_only = match g.space {
                        naga::AddressSpace::Uniform => true,
                        naga::AddressSpace::Storage { access } => {
                            !access.contains(naga::StorageAccess::STORE)
                        }
                        _ => return None,
                    };
                    Some((b.binding, read_only))
                })
                .collect();
            bindings.sort_unstable();
            let mut expected = vec![(0, true)];
            expected.extend(
                spec.read_only
                    .iter()
                    .enumerate()
                    .map(|(i, &ro)| (i as u32 + 1, ro)),
            );
            assert_eq!(bindings, expected, "{}: bindings", spec.name);
        }
    }

    #[test]
    fn kernel_table_follows_the_enum() {
        assert_eq!(KERNELS[Kernel::GatherTop as usize].name, "gather_top");
        assert_eq!(
            KERNELS[Kernel::ThresholdLogits as usize].name,
            "threshold_logits"
        );
        assert_eq!(KERNELS[Kernel::EnvelopeRows as usize].name, "envelope_rows");
    }
}
