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

/// A GGUF header of one metadata key whose array claims `n` strings, followed by `have` empty ones.
fn gguf_claiming(key: &str, n: u64, have: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes()); // version
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata keys
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key.as_bytes());
    b.extend(9u32.to_le_bytes()); // array
    b.extend(8u32.to_le_bytes()); // of strings
    b.extend(n.to_le_bytes());
    for _ in 0..have {
        b.extend(0u64.to_le_bytes());
    }
    b
}

#[test]
fn a_vocabulary_claimed_larger_than_the_file_is_refused_before_it_is_allocated() {
    // 10⁹ tokens claimed in a 60-byte file: refused from the header, nothing allocated for them.
    let b = gguf_claiming("tokenizer.ggml.tokens", 1_000_000_000, 0);
    let err = podar::formats::gguf::GgufHeader::read(&mut Cursor::new(&b)).err().expect("refused").to_string();
    assert!(err.contains("array of 1000000000 elements needs at least"), "{err}");
    // One string short of the claim: the same.
    let b = gguf_claiming("tokenizer.ggml.tokens", 4, 3);
    assert!(podar::formats::gguf::GgufHeader::read(&mut Cursor::new(&b)).is_err());
    // Exactly as many as claimed: read (the tokenizer then says what else is missing).
    let b = gguf_claiming("tokenizer.ggml.tokens", 4, 4);
    let h = podar::formats::gguf::GgufHeader::read(&mut Cursor::new(&b)).unwrap();
    assert!(podar::Tokenizer::from_gguf(&h).is_err());
}

#[test]
fn the_vocabulary_cap_holds_at_its_boundary() {
    // podar's own cap (4,000,000 tokens, above every released model's vocabulary) on an array the
    // file does hold: one more is refused before a tokenizer is built.
    let over = gguf_claiming("tokenizer.ggml.tokens", 4_000_001, 4_000_001);
    let h = podar::formats::gguf::GgufHeader::read(&mut Cursor::new(&over)).unwrap();
    let err = podar::Tokenizer::from_gguf(&h).err().expect("refused").to_string();
    assert!(err.contains("4000001 entries, more than the 4000000 cap"), "{err}");
    let at = gguf_claiming("tokenizer.ggml.tokens", 4_000_000, 4_000_000);
    let h = podar::formats::gguf::GgufHeader::read(&mut Cursor::new(&at)).unwrap();
    let err = podar::Tokenizer::from_gguf(&h).err().expect("no model type").to_string();
    assert!(!err.contains("cap"), "{err}");
}
