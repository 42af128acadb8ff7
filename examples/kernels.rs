//! `make bench` (first part): the matrix kernels on the shapes calibration multiplies for
//! SmolLM2-135M (chunks of 1024 tokens, hidden 576, MLP 1536), in GFLOP/s on all threads.
//! Prints numbers; asserts nothing. `cargo run --release --example kernels`.
use candle_core::{Device, Tensor};
use podar::kernels::{bf16_available, bf16_products, cross, gram, linear, threads, Accum};

fn random(rows: usize, cols: usize) -> Tensor {
    Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).expect("a random matrix")
}

/// Runs `f` once to warm up, then `n` times, and prints its mean time and rate.
fn time(name: &str, flop: f64, f: impl Fn()) {
    f();
    let n = 10;
    let t = std::time::Instant::now();
    (0..n).for_each(|_| f());
    let dt = t.elapsed().as_secs_f64() / n as f64;
    println!("{name:44} {:8.2} ms {:7.1} GFLOP/s", dt * 1e3, flop / dt / 1e9);
}

fn main() {
    let (t, h, i) = (1024, 576, 1536);
    println!("== matrix kernels, {} threads", threads());
    let (x, mid) = (random(t, h), random(t, i));
    let (w_up, w_down, w_q, w_k) = (random(i, h), random(h, i), random(h, h), random(h / 3, h));
    let f = |m: usize, n: usize, k: usize| 2.0 * (m * n * k) as f64;
    time("linear 1024x576 . (1536x576)^T  gate, up", f(t, i, h), || drop(linear(&x, &w_up, None)));
    time("linear 1024x1536 . (576x1536)^T  down", f(t, h, i), || drop(linear(&mid, &w_down, None)));
    time("linear 1024x576 . (576x576)^T  q, o", f(t, h, h), || drop(linear(&x, &w_q, None)));
    time("linear 1024x576 . (192x576)^T  k, v", f(t, h / 3, h), || drop(linear(&x, &w_k, None)));
    if bf16_available() {
        // Calibration's products in bf16 (`--calib-precision bf16`; the default where it is faster).
        let _bf16 = bf16_products(true);
        time("bf16 linear 1024x576 . (1536x576)^T", f(t, i, h), || drop(linear(&x, &w_up, None)));
        time("bf16 linear 1024x1536 . (576x1536)^T", f(t, h, i), || drop(linear(&mid, &w_down, None)));
        time("bf16 linear 1024x576 . (576x576)^T", f(t, h, h), || drop(linear(&x, &w_q, None)));
        time("bf16 linear 1024x576 . (192x576)^T", f(t, h / 3, h), || drop(linear(&x, &w_k, None)));
        time("bf16 gram 1536x1536 over 1024 tokens", f(i, i, t) / 2.0, || drop(gram(&mid)));
        time("bf16 cross 1536x576 over 1024 tokens", f(i, h, t), || drop(cross(&mid, &x)));
        let chunks: Vec<Tensor> = (0..8).map(|_| random(t, i)).collect();
        time("bf16 gram 1536x1536 over 8 chunks of 1024 tokens", 8.0 * f(i, i, t) / 2.0, || {
            let mut acc = Accum::default();
            chunks.iter().for_each(|c| acc.add_gram(c).expect("gram"));
            drop(acc.into_tensor((i, i)));
        });
        let acc = std::cell::RefCell::new(Accum::default());
        time("bf16 add_gram 1536x1536 over 1024 tokens into one buffer", f(i, i, t) / 2.0, || {
            acc.borrow_mut().add_gram(&chunks[0]).expect("gram")
        });
    }
    // The Gram matrix is symmetric: half of a plain product's work is counted.
    time("gram 1536x1536 over 1024 tokens", f(i, i, t) / 2.0, || drop(gram(&mid)));
    time("cross 1536x576 over 1024 tokens", f(i, h, t), || drop(cross(&mid, &x)));
    // As calibration sums them: 8 chunks of 1024 tokens into one buffer.
    let chunks: Vec<Tensor> = (0..8).map(|_| random(t, i)).collect();
    time("gram 1536x1536 over 8 chunks of 1024 tokens", 8.0 * f(i, i, t) / 2.0, || {
        let mut acc = Accum::default();
        chunks.iter().for_each(|c| acc.add_gram(c).expect("gram"));
        drop(acc.into_tensor((i, i)));
    });
}
