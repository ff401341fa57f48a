// Morphology by a disk from squared distances: dilation keeps pixels within the radius of
// the foreground (d2 <= r2), erosion keeps those farther than the radius from the
// background (d2 > r2); a packed mask, 4 pixels per invocation. CPU twin: post::cpu::morph.

struct Params {
    n: u32,
    words: u32,
    r2: f32,
    dilate: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> d2: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

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
            let d = d2[i];
            let keep = select(d > p.r2, d <= p.r2, p.dilate != 0u);
            if (keep) {
                word |= 1u << (j * 8u);
            }
        }
    }
    out[w] = word;
}
