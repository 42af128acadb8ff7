//! The page's API (`podar::web::Session`) in headless Chromium, inside a dedicated worker as the page
//! uses it: files handed over as `File`s and read in slices, progress callbacks, cancel, and the
//! zip export read back with podar's own loader.
#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Function, Uint8Array};
use podar::web::Session;
use serde_json::Value;
use std::io::Cursor;
use wasm_bindgen::prelude::*;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_dedicated_worker);

const CONFIG: &[u8] = include_bytes!("fixtures/tiny/llama/config.json");
const WEIGHTS: &[u8] = include_bytes!("fixtures/tiny/llama/model.safetensors");
const TOKENIZER: &[u8] = include_bytes!("fixtures/tiny/llama/tokenizer.json");

fn file(bytes: &[u8], name: &str) -> web_sys::File {
    let parts = Array::of1(&Uint8Array::from(bytes));
    web_sys::File::new_with_u8_array_sequence(&parts, name).unwrap()
}

fn files() -> Array {
    Array::of3(&file(TOKENIZER, "tokenizer.json"), &file(WEIGHTS, "model.safetensors"), &file(CONFIG, "config.json"))
}

fn json(v: JsValue) -> Value {
    serde_wasm_bindgen::from_value(v).unwrap()
}

fn yes() -> Function {
    Function::new_with_args("stage, done, total", "return true")
}

fn text() -> String {
    (0..60).map(|i| format!("fn f{i}(x: u32) -> u32 {{ x * {} + {} }}\n", i % 7, i % 5)).collect()
}

fn options(mlp: f64) -> JsValue {
    let o = serde_json::json!({"mlp_fraction": mlp, "score": "optipfair", "calib_samples": 8, "calib_len": 32});
    o.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).unwrap()
}

use serde::Serialize;

#[wasm_bindgen_test]
fn load_plan_prune_eval_export() {
    let mut s = Session::new();
    let summary = json(s.inspect(files()).unwrap());
    assert_eq!(summary["num_hidden_layers"], 3);
    let summary = json(s.load(files(), &yes(), None).unwrap());
    assert_eq!(summary["intermediate_size"], 128);
    let info = json(s.text_info(&text(), 32, usize::MAX).unwrap());
    assert_eq!(info["tokens"].as_u64().unwrap() as usize, text().len());
    assert_eq!(info["complete"], true);
    let plan = json(s.plan(options(0.5), "hf", "f32").unwrap());
    assert_eq!(plan["intermediate_after"], 64);
    let r = json(s.prune(&text(), options(0.5), &yes()).unwrap());
    assert_eq!(r["intermediate_after"], 64);
    assert_eq!(r["parameters_after"], plan["parameters_after"]);
    let before = json(s.perplexity("source", &text(), 256, 256, 64, &yes()).unwrap())["perplexity"].as_f64().unwrap();
    let after = json(s.perplexity("pruned", &text(), 256, 256, 64, &yes()).unwrap())["perplexity"].as_f64().unwrap();
    assert!(before.is_finite() && after.is_finite());
    let out = s.generate("pruned", "fn f", 5, false, &Function::new_with_args("piece", "return true")).unwrap();
    assert!(!out.is_empty());
    // The export arrives in chunks; put them together and read the zip back.
    let chunks = Array::new();
    let push = Closure::<dyn FnMut(Uint8Array)>::new({
        let chunks = chunks.clone();
        move |c: Uint8Array| {
            chunks.push(&c);
        }
    });
    // (Its name is known before it is written, for a page that asks where to save it.)
    assert_eq!(s.export_name("gguf"), "model-podar.gguf");
    assert_eq!(s.export_name("hf"), "model-podar.zip");
    let name = s.export("hf", "f32", JsValue::NULL, push.as_ref().unchecked_ref()).unwrap();
    assert_eq!(name, "model-podar.zip");
    let mut zip = Vec::new();
    for c in chunks.iter() {
        zip.extend(c.dyn_into::<Uint8Array>().unwrap().to_vec());
    }
    let files = podar::formats::zip::read_stored(&zip).unwrap();
    // Every file sits in one folder named as the archive.
    assert!(
        files.iter().all(|(n, _)| n.starts_with("model-podar/")),
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let files: Vec<(String, Vec<u8>)> =
        files.into_iter().map(|(n, b)| (n.trim_start_matches("model-podar/").to_string(), b)).collect();
    let get = |n: &str| files.iter().find(|f| f.0 == n).map(|f| f.1.clone());
    let back =
        podar::load_named(files.iter().map(|(n, b)| (n.clone(), Cursor::new(b))).collect(), &mut |_, _| true).unwrap();
    let ids = back.tokenizer().unwrap().encode(&text(), false).unwrap();
    let again = podar::perplexity(&back.model, &ids[256..512], 64, &mut |_, _| true).unwrap().perplexity;
    assert!((again - after).abs() < 1e-9 * after, "{again} vs {after}");
    let report: Value = serde_json::from_slice(&get("podar-report.json").unwrap()).unwrap();
    assert_eq!(report["source_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["parameters_before"], summary["parameters"]);
    // The prune consumed the original; a second prune reads it again and gives the same model.
    let again = json(s.prune(&text(), options(0.5), &yes()).unwrap());
    assert_eq!(again["parameters_after"], r["parameters_after"]);
    let after2 = json(s.perplexity("pruned", &text(), 256, 256, 64, &yes()).unwrap())["perplexity"].as_f64().unwrap();
    assert_eq!(after2, after);
}

/// The export of the last prune, its chunks put together.
fn exported(s: &mut Session, format: &str, dtype: &str) -> Vec<u8> {
    let chunks = Array::new();
    let push = Closure::<dyn FnMut(Uint8Array)>::new({
        let chunks = chunks.clone();
        move |c: Uint8Array| {
            chunks.push(&c);
        }
    });
    s.export(format, dtype, JsValue::NULL, push.as_ref().unchecked_ref()).unwrap();
    chunks.iter().flat_map(|c| c.dyn_into::<Uint8Array>().unwrap().to_vec()).collect()
}

#[wasm_bindgen_test]
fn a_streamed_model_prunes_scores_and_exports_as_the_one_in_memory() {
    let ppl = |s: &mut Session, which: &str| {
        json(s.perplexity(which, &text(), 256, 256, 64, &yes()).unwrap())["perplexity"].as_f64().unwrap()
    };
    let mut held = Session::new();
    held.load(files(), &yes(), Some(false)).unwrap();
    assert!(!held.streamed());
    let mut streamed = Session::new();
    streamed.load(files(), &yes(), Some(true)).unwrap();
    assert!(streamed.streamed());
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() <= 1e-6 * a, "{what}: {a} held, {b} streamed");
    close(ppl(&mut held, "source"), ppl(&mut streamed, "source"), "perplexity before");
    let a = json(held.prune(&text(), options(0.5), &yes()).unwrap());
    let b = json(streamed.prune(&text(), options(0.5), &yes()).unwrap());
    assert_eq!(a["parameters_after"], b["parameters_after"]);
    assert_eq!(a["layer_influence"], b["layer_influence"]);
    close(ppl(&mut held, "pruned"), ppl(&mut streamed, "pruned"), "perplexity after");
    // The original again after the prune (read from its files again), then the same downloads.
    close(ppl(&mut held, "source"), ppl(&mut streamed, "source"), "perplexity before, after the prune");
    assert!(exported(&mut held, "gguf", "q8_0") == exported(&mut streamed, "gguf", "q8_0"), "the GGUFs differ");
    let weights = |zip: Vec<u8>| {
        let files = podar::formats::zip::read_stored(&zip).unwrap();
        files.into_iter().find(|(n, _)| n.ends_with("/model.safetensors")).unwrap().1
    };
    let (a, b) = (weights(exported(&mut held, "hf", "bf16")), weights(exported(&mut streamed, "hf", "bf16")));
    assert!(a == b, "the safetensors differ");
    // Generation reads the layers from the files a step at a time: the same text.
    let on_text = Function::new_with_args("piece", "return true");
    for which in ["pruned", "source"] {
        let a = held.generate(which, "fn f", 5, false, &on_text).unwrap();
        let b = streamed.generate(which, "fn f", 5, false, &on_text).unwrap();
        assert_eq!(a, b, "{which}: streamed generation differs");
    }
}

#[wasm_bindgen_test]
fn errors_are_messages_and_cancel_keeps_the_session() {
    let mut s = Session::new();
    assert!(s.prune("x", options(0.5), &yes()).is_err(), "no model yet");
    let bad = Array::of1(&file(b"GGUF\x03\x00\x00\x00garbage", "broken.gguf"));
    assert!(s.load(bad, &yes(), None).is_err());
    s.load(files(), &yes(), None).unwrap();
    assert!(s.prune("too short", options(0.5), &yes()).is_err());
    let no = Function::new_with_args("stage, done, total", "return false");
    assert!(s.prune(&text(), options(0.5), &no).is_err());
    // Still usable after the cancel.
    assert!(s.prune(&text(), options(0.5), &yes()).is_ok());
}

/// Pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Every element within relative 1e-3 of the CPU's (plus a floor for values near zero).
fn assert_close(gpu: &[f32], cpu: &[f32], what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths");
    let scale = cpu.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!((g - c).abs() <= 1e-3 * (c.abs() + 1e-2 * scale), "{what}[{i}]: GPU {g} vs CPU {c}");
    }
}

/// The WGSL kernels against the CPU kernels, on SwiftShader in headless Chromium (the test runner
/// passes --enable-unsafe-webgpu). Sizes are not multiples of the 64×64 tile, and small bindings
/// force the weight, the input and the Gram input into several row blocks.
#[cfg(feature = "gpu")]
#[wasm_bindgen_test]
async fn webgpu_products_equal_the_cpu_kernels() {
    use candle_core::{Device, Tensor};
    let mut gpu = podar::gpu::Gpu::open().await.expect("Chromium with --enable-unsafe-webgpu has an adapter");
    let (rows, k, n) = (150, 200, 130);
    let x = noise(rows * k, 1);
    let w = noise(n * k, 2);
    let xt = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
    let cpu = podar::kernels::linear(&xt, &wt, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    gpu.upload(7, &w, n, k).unwrap();
    assert_close(&gpu.linear(7, &x, rows, k).await.unwrap(), &cpu, "linear");
    // Bindings of 40 rows of 200: the weight in 4 blocks, the input in 4 row blocks.
    gpu.limit_binding(40 * 200 * 4);
    gpu.upload(8, &w, n, k).unwrap();
    assert_close(&gpu.linear(8, &x, rows, k).await.unwrap(), &cpu, "linear in row blocks");
    // A Gram matrix of 500 tokens × 100 features, its input in 5 row blocks of 100 accumulated.
    let (t, m) = (500, 100);
    let a = noise(t * m, 3);
    let at = Tensor::from_vec(a.clone(), (t, m), &Device::Cpu).unwrap();
    let g_cpu = podar::kernels::gram(&at).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut small = podar::gpu::Gpu::open().await.unwrap();
    small.limit_binding((m * m * 4) as u64);
    assert_close(&small.gram(&a, t, m).await.unwrap(), &g_cpu, "gram in row blocks");
    // Inner dimensions that are not a multiple of 4 (a pruned width such as 1229) are padded.
    let (k3, m3) = (203, 101);
    let (x3, w3, a3) = (noise(rows * k3, 4), noise(n * k3, 5), noise(t * m3, 6));
    let cpu3 = podar::kernels::linear(
        &Tensor::from_vec(x3.clone(), (rows, k3), &Device::Cpu).unwrap(),
        &Tensor::from_vec(w3.clone(), (n, k3), &Device::Cpu).unwrap(),
        None,
    )
    .unwrap();
    gpu.upload(9, &w3, n, k3).unwrap();
    assert_close(
        &gpu.linear(9, &x3, rows, k3).await.unwrap(),
        &cpu3.flatten_all().unwrap().to_vec1().unwrap(),
        "odd k",
    );
    let g3 = podar::kernels::gram(&Tensor::from_vec(a3.clone(), (t, m3), &Device::Cpu).unwrap()).unwrap();
    let plain = podar::gpu::Gpu::open().await.unwrap();
    assert_close(&plain.gram(&a3, t, m3).await.unwrap(), &g3.flatten_all().unwrap().to_vec1().unwrap(), "odd gram");
    // An unknown weight and a wrong shape are errors, not panics.
    assert!(gpu.linear(99, &x, rows, k).await.is_err());
    assert!(gpu.linear(7, &x[..10], rows, k).await.is_err());
}

/// A Blob whose bytes the worker holds as parts (`podarBytes`, as worker.js sets on a downloaded
/// model) reads the same bytes as the Blob's own slices, across part boundaries and in every size.
#[wasm_bindgen_test]
fn a_blob_read_from_its_parts_gives_its_bytes() {
    use std::io::{Read, Seek, SeekFrom};
    let bytes: Vec<u8> = (0..9_000_017u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let cuts = [0, 1, 65_536, 4_194_303, 4_194_304, 7_000_000, bytes.len()];
    let parts = Array::new();
    for w in cuts.windows(2) {
        parts.push(&Uint8Array::from(&bytes[w[0]..w[1]]));
    }
    let blob: web_sys::Blob = web_sys::File::new_with_u8_array_sequence(&parts, "m.gguf").unwrap().into();
    let plain = podar::web::BlobReader::new(blob.clone()).unwrap();
    js_sys::Reflect::set(&blob, &JsValue::from_str("podarBytes"), &parts).unwrap();
    let held = podar::web::BlobReader::new(blob).unwrap();
    for mut r in [plain, held] {
        for (at, len) in [(0usize, 10usize), (65_530, 20), (4_194_300, 8 << 20), (8_999_000, 5_000), (3, 4_194_304)] {
            r.seek(SeekFrom::Start(at as u64)).unwrap();
            let mut out = vec![0u8; len];
            let mut got = 0;
            while got < len {
                let n = r.read(&mut out[got..]).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            let want = &bytes[at..(at + len).min(bytes.len())];
            assert_eq!(got, want.len(), "read at {at}");
            assert!(&out[..got] == want, "bytes at {at} differ");
        }
    }
}
