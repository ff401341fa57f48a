// Keep-largest, step 2: among the roots of the largest size in each domain, the smallest
// (ties go to the component met first). CPU twin: CpuMaskOps::keep_largest.

struct Params {
    n: u32,
    domain: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> sizes: array<u32>;
@group(0) @binding(3) var<storage, read> best: array<u32>;
@group(0) @binding(4) var<storage, read_write> pick: array<atomic<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n || labels[i] != i) {
        return;
    }
    let d = i / p.domain;
    if (sizes[i] == best[d]) {
        atomicMin(&pick[d], i);
    }
}
