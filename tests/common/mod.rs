//! What several native test binaries share.

/// Token ids for the tiny fixtures: a deterministic pseudo-random walk over their 256-token vocabulary.
pub fn pseudo_ids(n: usize) -> Vec<u32> {
    let mut x = 12345u64;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) % 256) as u32
        })
        .collect()
}
