//! Logits of every supported family against transformers (tiny random-weight models made by
//! tests/fixtures/make_tiny_models.py), within 1e-4 max-abs, and greedy continuations with the KV cache.

use podar::formats::safetensors::shard_names;
use serde::Deserialize;
use std::fs;
use std::io::Cursor;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Expected {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(name)
}

fn load(name: &str) -> podar::Model {
    let d = dir(name);
    let config = fs::read(d.join("config.json")).unwrap();
    let shards: Vec<Vec<u8>> = if d.join("model.safetensors.index.json").exists() {
        let idx = fs::read(d.join("model.safetensors.index.json")).unwrap();
        shard_names(&idx).unwrap().iter().map(|n| fs::read(d.join(n)).unwrap()).collect()
    } else {
        vec![fs::read(d.join("model.safetensors")).unwrap()]
    };
    podar::load_hf_weights(&config, shards.into_iter().map(Cursor::new).collect()).unwrap()
}

fn check(name: &str) {
    let exp: Expected = serde_json::from_slice(&fs::read(dir(name).join("expected.json")).unwrap()).unwrap();
    let model = load(name);
    let t = exp.input_ids.len();
    let logits: Vec<Vec<f32>> = model.forward(&exp.input_ids, 1, t, None).unwrap().to_vec2().unwrap();
    let mut worst = 0f32;
    for (row, erow) in logits.iter().zip(&exp.logits) {
        assert_eq!(row.len(), erow.len());
        for (a, b) in row.iter().zip(erow) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst < 1e-4, "{name}: max |podar − transformers| = {worst}");
    let got = podar::greedy(&model, &exp.input_ids, exp.greedy.len(), &[], &mut |_| true).unwrap();
    assert_eq!(got, exp.greedy, "{name}: greedy continuation differs");
}

macro_rules! families {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            check(stringify!($name));
        }
    )*};
}

families!(llama, llama3, llama_bf16, llama_sharded, qwen2, qwen3, mistral, gemma2, gemma3);

#[test]
fn batched_forward_equals_single() {
    let exp: Expected = serde_json::from_slice(&fs::read(dir("gemma2").join("expected.json")).unwrap()).unwrap();
    let model = load("gemma2");
    let t = exp.input_ids.len();
    let mut two = exp.input_ids.clone();
    two.extend(exp.input_ids.iter().rev());
    let both: Vec<Vec<f32>> = model.forward(&two, 2, t, None).unwrap().to_vec2().unwrap();
    let single: Vec<Vec<f32>> = model.forward(&exp.input_ids, 1, t, None).unwrap().to_vec2().unwrap();
    for (a, b) in both[..t].iter().zip(&single) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5);
        }
    }
}
