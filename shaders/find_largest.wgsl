// Keep-largest, step 1: the largest component size of each domain (a slice, or the whole
// volume when p.domain = n). CPU twin: CpuMaskOps::keep_largest.

struct Params {
    n: u32,
    domain: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> sizes: array<u32>;
@group(0) @binding(3) var<storage, read_write> best: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n || labels[i] != i) {
        return;
    }
    atomicMax(&best[i / p.domain], sizes[i]);
}
