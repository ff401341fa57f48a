// Top-K by radix selection, last step: collects the indices of the values whose key is
// above p.key, or equal to it with an index up to p.last (exactly p.k of them), in any
// order; the host sorts them. CPU twin: post::cpu::top_k_keys.

struct Params {
    n: u32,
    key: u32,
    last: u32,
    k: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read_write> counter: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> found: array<u32>;

// Larger values give larger keys; NaN gives 0 (post::order_key).
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        return 0u;
    }
    if ((b & 0x80000000u) != 0u) {
        return ~b;
    }
    return b | 0x80000000u;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i >= p.n) {
        return;
    }
    let key = order_key(values[i]);
    if (key > p.key || (key == p.key && i <= p.last)) {
        let slot = atomicAdd(&counter[0], 1u);
        if (slot < p.k) {
            found[slot] = i;
        }
    }
}
