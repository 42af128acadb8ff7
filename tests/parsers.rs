//! Parsers never panic on damaged input: random byte flips and cuts of real headers must give
//! errors or models, not panics.

use std::io::Cursor;

/// Small deterministic generator (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn mutate(src: &[u8], rng: &mut Rng, window: usize) -> Vec<u8> {
    let mut b = src.to_vec();
    for _ in 0..1 + rng.next() % 4 {
        let i = (rng.next() as usize) % window.min(b.len());
        b[i] = rng.next() as u8;
    }
    if rng.next().is_multiple_of(4) {
        b.truncate((rng.next() as usize) % b.len());
    }
    b
}

#[test]
fn safetensors_mutations_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny/llama");
    let cfg = std::fs::read(dir.join("config.json")).unwrap();
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize + 8;
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for _ in 0..300 {
        let b = mutate(&st, &mut rng, header_len);
        let _ = podar::inspect_hf(&cfg, vec![Cursor::new(b)]);
        let c = mutate(&cfg, &mut rng, cfg.len());
        let _ = podar::ModelConfig::from_hf_json(&c);
    }
}

#[test]
fn gguf_mutations_never_panic() {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let bytes = std::fs::read(p).expect("make test fetches the default model");
    // Mutate the header region (metadata and tensor directory: the first ~2 MB).
    let head = &bytes[..bytes.len().min(3 << 20)];
    let mut rng = Rng(0x2545f4914f6cdd1d);
    for _ in 0..60 {
        let b = mutate(head, &mut rng, 2 << 20);
        let _ = podar::inspect_gguf(Cursor::new(b));
    }
}

#[test]
fn configs_that_would_give_nan_are_refused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    for (model, key, value) in [
        ("llama", "rms_norm_eps", serde_json::json!(-1.0)),
        ("llama", "rope_theta", serde_json::json!(0.0)),
        (
            "llama3",
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 0.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        ),
    ] {
        let mut c: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(model).join("config.json")).unwrap()).unwrap();
        assert!(podar::ModelConfig::from_hf_json(c.to_string().as_bytes()).is_ok());
        c[key] = value;
        let err = podar::ModelConfig::from_hf_json(c.to_string().as_bytes()).unwrap_err().to_string();
        assert!(err.contains(key), "{model} with a bad {key}: {err}");
    }
}
