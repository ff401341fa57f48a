// Keep-largest, step 3: the packed mask of the picked component of each domain, 4 pixels
// per invocation. CPU twin: CpuMaskOps::keep_largest.

struct Params {
    n: u32,
    words: u32,
    domain: u32,
}

const WG: u32 = 256u;
const NONE: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> labels: array<u32>;
@group(0) @binding(2) var<storage, read> pick: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let w = gid.x + gid.y * nwg.x * WG;
    if (w >= p.words) {
        return;
    }
    var word = 0u;
    for (var j = 0u; j < 4u; j++) {
        let i = w * 4u + j;
        if (i < p.n) {
            let l = labels[i];
            if (l != NONE && l == pick[i / p.domain]) {
                word |= 1u << (j * 8u);
            }
        }
    }
    out[w] = word;
}
