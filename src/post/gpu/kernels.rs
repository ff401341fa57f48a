//! The WGSL kernels: one per file in `shaders/`, embedded here, with their storage
//! bindings, and the workgroup size every kernel declares.

/// Invocations per workgroup of every kernel (`@workgroup_size` in each `.wgsl`, checked
/// by a test).
pub(crate) const WORKGROUP_SIZE: u32 = 256;

/// Elements each invocation of `histogram_keys.wgsl` reads (its `ITEMS` constant).
pub(super) const HISTOGRAM_ITEMS: u32 = 64;

/// Largest buffer one chunk may use, whatever the adapter allows: keeps a software
/// adapter's memory use moderate.
pub(super) const MAX_CHUNK_BYTES: u64 = 512 << 20;

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
            source: include_str!(concat!("../../../shaders/", $name, ".wgsl")),
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
