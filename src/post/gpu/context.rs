//! The process-wide GPU context: adapter, device, queue and every pipeline, built once,
//! and [`GpuContext::run`], the one helper that records, submits and reads back a batch
//! of dispatches.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};

use wgpu::util::DeviceExt;

use super::kernels::{Kernel, KernelSpec, KERNELS, MAX_CHUNK_BYTES, WORKGROUP_SIZE};
use super::GpuError;

/// Uniform parameters of one dispatch: 16 words, each kernel's `Params` struct reads a
/// prefix of them (f32 fields as their bits).
pub(super) type Params = [u32; 16];

pub(super) fn params(values: &[u32]) -> Params {
    let mut p = [0u32; 16];
    for (d, &v) in p.iter_mut().zip(values) {
        *d = v;
    }
    p
}

/// One dispatch: a kernel, its parameters, its storage buffers (bindings 1..) and the
/// number of workgroups.
pub(super) struct Dispatch {
    pub(super) kernel: Kernel,
    pub(super) params: Params,
    pub(super) buffers: Vec<wgpu::Buffer>,
    pub(super) workgroups: u32,
}

/// Workgroups to cover `invocations`.
pub(super) fn groups(invocations: u64) -> Result<u32, GpuError> {
    u32::try_from(invocations.div_ceil(u64::from(WORKGROUP_SIZE))).map_err(|_| GpuError::TooLarge {
        operation: "dispatch",
        bytes: invocations,
        limit: u64::from(u32::MAX),
    })
}

/// Where a map callback leaves its result.
pub(super) type MapSlot = Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>>;

pub(super) struct Pipeline {
    pub(super) pipeline: wgpu::ComputePipeline,
    pub(super) layout: wgpu::BindGroupLayout,
}

/// The device, its queue and every pipeline, built once per process.
pub(crate) struct GpuContext {
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) description: String,
    /// A software rasteriser (lavapipe, llvmpipe, WARP): correct, but slower than the CPU
    /// path, so `--device auto` does not pick it.
    pub(super) software: bool,
    pub(super) limits: wgpu::Limits,
    pub(super) pipelines: Vec<Pipeline>,
    /// Errors wgpu reported outside any error scope (for example a lost device).
    pub(super) uncaptured: Arc<Mutex<Vec<String>>>,
    /// One batch at a time: error scopes and map waits are per submission.
    pub(super) lock: Mutex<()>,
    /// The known-answer check's verdict once it has run: the first operation whose
    /// answers differed from the CPU path's, or `None`.
    pub(super) checked: OnceLock<Option<&'static str>>,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.description)
            .finish_non_exhaustive()
    }
}

pub(super) fn boxed(
    e: impl std::error::Error + Send + Sync + 'static,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

impl GpuContext {
    pub(super) fn open() -> Result<GpuContext, GpuError> {
        // A driver's probe can panic (EGL on the UI thread of a Qt host that holds the X
        // display answers BadAccess): that is "no adapter" too, never a panic in the host.
        let probe = std::panic::catch_unwind(|| {
            let instance = wgpu::Instance::new(
                wgpu::InstanceDescriptor::new_without_display_handle_from_env(),
            );
            pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            }))
        });
        let adapter = match probe {
            Ok(found) => found.map_err(|e| GpuError::NoAdapter { source: boxed(e) })?,
            Err(panic) => {
                let reason = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("no message");
                return Err(GpuError::NoAdapter {
                    source: format!("the GPU driver's probe failed: {reason}").into(),
                });
            }
        };
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
            checked: OnceLock::new(),
        })
    }

    /// Largest single buffer allowed.
    pub(super) fn max_buffer(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            .min(MAX_CHUNK_BYTES)
    }

    /// A storage buffer holding `data` (padded to a multiple of 4 bytes).
    pub(super) fn upload(&self, data: &[u8]) -> wgpu::Buffer {
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
    pub(super) fn scratch(&self, bytes: u64) -> wgpu::Buffer {
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
    pub(super) fn run(
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

pub(super) fn build_pipeline(
    device: &wgpu::Device,
    spec: &KernelSpec,
) -> Result<Pipeline, GpuError> {
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
pub(super) fn context() -> Result<Arc<GpuContext>, GpuError> {
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
