// Matrix products in f32 for podar's GPU worker. Each invocation computes a 4×4 block of C from
// vec4 loads, with no workgroup memory and no barriers: simple, correct on every WebGPU adapter,
// and fast on software ones (SwiftShader) as well as on GPUs. No f16 needed.
//   nt: C[m×n] (+)= A[m×k] · B[n×k]ᵀ  (the linear layer x·Wᵀ; rows of A and B contiguous in k)
//   tn: C[m×n] (+)= A[k×m]ᵀ · B[k×n]  (the Gram matrix xᵀx; rows contiguous in m and n)
// Sizes along vec4 axes are multiples of 4 (the caller checks); `k`, `lda`, `ldb` count vec4s
// for nt, and for tn `k` counts rows while `lda`, `ldb` count vec4s.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    c_off: u32,
    acc: u32,
}

@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

fn put(i: u32, j0: u32, v: vec4<f32>) {
    if (i >= p.m) {
        return;
    }
    let o = p.c_off + i * p.ldc + j0;
    for (var s = 0u; s < 4u; s++) {
        if (j0 + s < p.n) {
            var x = v[s];
            if (p.acc != 0u) {
                x += c[o + s];
            }
            c[o + s] = x;
        }
    }
}

@compute @workgroup_size(8, 8)
fn nt(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i0 = gid.y * 4u;
    let j0 = gid.x * 4u;
    if (i0 >= p.m || j0 >= p.n) {
        return;
    }
    // Rows past the edge read the last row again; their results are not written.
    let ra = min(vec4<u32>(i0, i0 + 1u, i0 + 2u, i0 + 3u), vec4<u32>(p.m - 1u)) * p.lda;
    let rb = min(vec4<u32>(j0, j0 + 1u, j0 + 2u, j0 + 3u), vec4<u32>(p.n - 1u)) * p.ldb;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var t = 0u; t < p.k; t++) {
        let a0 = a[ra.x + t];
        let a1 = a[ra.y + t];
        let a2 = a[ra.z + t];
        let a3 = a[ra.w + t];
        let b0 = b[rb.x + t];
        let b1 = b[rb.y + t];
        let b2 = b[rb.z + t];
        let b3 = b[rb.w + t];
        c0 += vec4<f32>(dot(a0, b0), dot(a0, b1), dot(a0, b2), dot(a0, b3));
        c1 += vec4<f32>(dot(a1, b0), dot(a1, b1), dot(a1, b2), dot(a1, b3));
        c2 += vec4<f32>(dot(a2, b0), dot(a2, b1), dot(a2, b2), dot(a2, b3));
        c3 += vec4<f32>(dot(a3, b0), dot(a3, b1), dot(a3, b2), dot(a3, b3));
    }
    put(i0, j0, c0);
    put(i0 + 1u, j0, c1);
    put(i0 + 2u, j0, c2);
    put(i0 + 3u, j0, c3);
}

@compute @workgroup_size(8, 8)
fn tn(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i0 = gid.y * 4u;
    let j0 = gid.x * 4u;
    if (i0 >= p.m || j0 >= p.n) {
        return;
    }
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    for (var t = 0u; t < p.k; t++) {
        let av = a[t * p.lda + gid.y];
        let bv = b[t * p.ldb + gid.x];
        c0 += av.x * bv;
        c1 += av.y * bv;
        c2 += av.z * bv;
        c3 += av.w * bv;
    }
    put(i0, j0, c0);
    put(i0 + 1u, j0, c1);
    put(i0 + 2u, j0, c2);
    put(i0 + 3u, j0, c3);
}
