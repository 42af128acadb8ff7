//! Tests written once and run on both targets: natively with `cargo test`, and in headless Chromium
//! (in a dedicated worker, where the page runs podar) with `cargo test --target wasm32-unknown-unknown`.
//! The tiny llama fixture is compiled in, so the browser needs no file access.

use podar::export::job::{self, EvalPair, OutputFormat, Record};
use podar::formats::zip::{read_stored, ZipWriter};
use podar::prune::{prune_mlp, PruneOptions, Score};
use podar::{load_hf, Bundle, Error, HfFiles, StorageDtype};
use serde::Deserialize;
use std::io::Cursor;
use wasm_bindgen_test::wasm_bindgen_test;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_dedicated_worker);

const CONFIG: &[u8] = include_bytes!("fixtures/tiny/llama/config.json");
const WEIGHTS: &[u8] = include_bytes!("fixtures/tiny/llama/model.safetensors");
const TOKENIZER: &[u8] = include_bytes!("fixtures/tiny/llama/tokenizer.json");
const EXPECTED: &[u8] = include_bytes!("fixtures/tiny/llama/expected.json");

#[derive(Deserialize)]
struct Expected {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn bundle() -> Bundle {
    let files = HfFiles {
        config: CONFIG.to_vec(),
        tokenizer_json: Some(TOKENIZER.to_vec()),
        tokenizer_config: None,
        generation_config: None,
        shards: vec![Cursor::new(WEIGHTS)],
    };
    load_hf(files, &mut |_, _| true).unwrap()
}

fn text() -> String {
    (0..60).map(|i| format!("fn f{i}(x: u32) -> u32 {{ x * {} + {} }}\n", i % 7, i % 5)).collect()
}

#[wasm_bindgen_test(unsupported = test)]
fn logits_and_greedy_match_transformers() {
    let exp: Expected = serde_json::from_slice(EXPECTED).unwrap();
    let b = bundle();
    let t = exp.input_ids.len();
    let logits: Vec<Vec<f32>> = b.model.forward(&exp.input_ids, 1, t, None).unwrap().to_vec2().unwrap();
    let worst =
        logits.iter().flatten().zip(exp.logits.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "max |podar − transformers| = {worst}");
    let got = podar::greedy(&b.model, &exp.input_ids, exp.greedy.len(), &[], &mut |_| true).unwrap();
    assert_eq!(got, exp.greedy);
}

#[wasm_bindgen_test(unsupported = test)]
fn byte_tokenizer_round_trips() {
    let b = bundle();
    let tok = b.tokenizer().unwrap();
    let s = "héllo, wörld\n\tfn main() {}";
    let ids = tok.encode(s, false).unwrap();
    assert_eq!(ids.len(), s.len(), "one id per byte");
    assert_eq!(tok.decode(&ids).unwrap(), s);
}

/// Prune with calibration and recovery, export the Hugging Face folder as a zip, read it back with
/// podar's loader: the shapes match the config and the perplexity is the pruned model's.
#[wasm_bindgen_test(unsupported = test)]
fn prune_export_zip_reload() {
    let b = bundle();
    let ids = b.tokenizer().unwrap().encode(&text(), false).unwrap();
    let o = PruneOptions {
        mlp_fraction: Some(0.5),
        score: Score::Optipfair,
        calib_samples: 8,
        calib_len: 32,
        heads: Some(0.5),
        drop_block: Some(1),
        ..PruneOptions::default()
    };
    let calib = podar::prune::calib::windows(&ids, 8, 32).unwrap();
    let pruned = prune_mlp(&b.model, Some(&calib), &o, &mut |_, _, _| true).unwrap();
    let cfg = &pruned.model.cfg;
    assert_eq!((cfg.intermediate_size, cfg.num_key_value_heads, cfg.num_hidden_layers), (64, 1, 2));
    let plan = job::plan(&b.model.cfg, &o, OutputFormat::Hf(StorageDtype::F32)).unwrap();
    assert_eq!(plan.parameters_after, pruned.model.parameter_count());
    let evals = [EvalPair { name: "t".into(), before: 1.0, after: 2.0 }];
    let record = Record {
        source_name: "tiny",
        source_sha256: None,
        source: &b.model.cfg,
        pruned: &pruned,
        options: &o,
        calib_ids: Some(&calib),
        evals: &evals,
        seconds: job::Seconds::default(),
    };
    let mut z = ZipWriter::new(Vec::new());
    job::write_model(&b, &pruned.model, &mut pruned.model.layers.clone(), OutputFormat::Hf(StorageDtype::F32), &mut z)
        .unwrap();
    job::write_record(&record, &mut z).unwrap();
    let zip = z.finish().unwrap();
    let files = read_stored(&zip).unwrap();
    let get = |n: &str| files.iter().find(|f| f.0 == n).map(|f| f.1.clone());
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    for n in ["model.safetensors", "config.json", "tokenizer.json", "podar-report.json", "README.md"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert_eq!(
        plan.bytes_after as usize,
        get("model.safetensors").unwrap().len() - 8 - {
            let h = get("model.safetensors").unwrap();
            u64::from_le_bytes(h[..8].try_into().unwrap()) as usize
        }
    );
    let back =
        podar::load_named(files.iter().map(|(n, b)| (n.clone(), Cursor::new(b))).collect(), &mut |_, _| true).unwrap();
    let eval_ids = &ids[256..512];
    let p1 = podar::perplexity(&pruned.model, eval_ids, 64, &mut |_, _| true).unwrap().perplexity;
    let p2 = podar::perplexity(&back.model, eval_ids, 64, &mut |_, _| true).unwrap().perplexity;
    assert_eq!(p1, p2);
    let report: serde_json::Value = serde_json::from_slice(&get("podar-report.json").unwrap()).unwrap();
    assert_eq!(report["kept_layers"].as_array().unwrap().len(), 2);
    assert_eq!(report["parameters_after"], pruned.model.parameter_count());
}

#[wasm_bindgen_test(unsupported = test)]
fn a_false_progress_answer_cancels() {
    let b = bundle();
    let ids = b.tokenizer().unwrap().encode(&text(), false).unwrap();
    let mut calls = 0;
    let r = podar::perplexity(&b.model, &ids, 64, &mut |_, _| {
        calls += 1;
        false
    });
    assert!(matches!(r, Err(Error::Cancelled)));
    assert_eq!(calls, 1);
    let calib = podar::prune::calib::windows(&ids, 4, 32).unwrap();
    let o = PruneOptions { mlp_fraction: Some(0.25), calib_samples: 4, calib_len: 32, ..PruneOptions::default() };
    let r = prune_mlp(&b.model, Some(&calib), &o, &mut |_, _, _| false);
    assert!(matches!(r, Err(Error::Cancelled)));
    // The model is untouched and still works.
    assert!(podar::perplexity(&b.model, &ids, 64, &mut |_, _| true).is_ok());
}

/// The matrix kernels of this target (AVX-512 or gemm natively, SIMD128 in the browser) against
/// plain f64 products, on sizes around their tile and panel edges.
#[wasm_bindgen_test(unsupported = test)]
fn matrix_kernels_match_plain_products() {
    use candle_core::{Device, Tensor};
    let wavy = |r: usize, c: usize, s: usize| -> Tensor {
        let v: Vec<f32> = (0..r * c).map(|i| (((i * 7 + s * 13) % 23) as f32 - 11.0) / 7.0).collect();
        Tensor::from_vec(v, (r, c), &Device::Cpu).unwrap()
    };
    let rows = |t: &Tensor| t.to_vec2::<f32>().unwrap();
    let close = |got: &[Vec<f32>], want: &[Vec<f64>], what: &str| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            for (j, (&g, &w)) in g.iter().zip(w).enumerate() {
                assert!((g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}: ({i}, {j}) {g} vs {w}");
            }
        }
    };
    for (m, n, k) in
        [(1, 1, 1), (2, 5, 3), (3, 12, 16), (4, 13, 17), (7, 25, 33), (13, 40, 64), (50, 37, 300), (520, 13, 40)]
    {
        let (x, w) = (wavy(m, k, 1), wavy(n, k, 2));
        let (xv, wv) = (rows(&x), rows(&w));
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&p, &q)| p as f64 * q as f64).sum::<f64>();
        let want: Vec<Vec<f64>> = xv.iter().map(|r| wv.iter().map(|c| dot(r, c)).collect()).collect();
        close(&rows(&podar::kernels::linear(&x, &w, None).unwrap()), &want, &format!("linear {m}x{n}x{k}"));
        // xᵀx and xᵀy over the m rows (tokens).
        let col = |v: &[Vec<f32>], j: usize| v.iter().map(|r| r[j]).collect::<Vec<f32>>();
        let y = wavy(m, n, 3);
        let yv = rows(&y);
        let gram: Vec<Vec<f64>> = (0..k).map(|i| (0..k).map(|j| dot(&col(&xv, i), &col(&xv, j))).collect()).collect();
        close(&rows(&podar::kernels::gram(&x).unwrap()), &gram, &format!("gram {m}x{k}"));
        let cross: Vec<Vec<f64>> = (0..k).map(|i| (0..n).map(|j| dot(&col(&xv, i), &col(&yv, j))).collect()).collect();
        close(&rows(&podar::kernels::cross(&x, &y).unwrap()), &cross, &format!("cross {m}x{k}x{n}"));
    }
}

/// The recovery's ridge re-fit (blocked Cholesky factorisation and solves, in f32 or f64 as the
/// conditioning allows, in this target's matrix products) against a plain f64 solve of its normal equations,
/// `W_S (G[S,S] + λI) = W G[:,S] + α Cᵀ[:,S] + λ W[:,S]`, on a problem several blocks wide.
#[wasm_bindgen_test(unsupported = test)]
fn ridge_refit_matches_a_plain_solve() {
    use candle_core::{Device, Tensor};
    use podar::prune::stats::ErrorCross;
    let (n, h, t) = (230, 40, 500);
    let wavy = |r: usize, c: usize, s: usize| -> Vec<f32> {
        (0..r * c)
            .map(|i| ((((i * 7919 + s * 104729) % 1009) as f32) / 1009.0 - 0.5) * (1.0 + (i % 5) as f32))
            .collect()
    };
    let x = Tensor::from_vec(wavy(t, n, 1), (t, n), &Device::Cpu).unwrap();
    let gram = x.t().unwrap().matmul(&x).unwrap();
    let down = Tensor::from_vec(wavy(h, n, 2), (h, n), &Device::Cpu).unwrap();
    let c = (Tensor::from_vec(wavy(n, h, 3), (n, h), &Device::Cpu).unwrap() * 100.0).unwrap();
    // The default ridge keeps the system well conditioned, and it is solved in f32; a small one
    // does not, and it is solved in f64 (where the f32 right-hand side's rounding grows with κ).
    for (ratio, tol) in [(0.3, 3e-4), (3e-3, 5e-4)] {
        let kept: Vec<usize> = (0..n).filter(|i| i % 4 != 2).collect();
        let alpha = 0.5;
        let ec = ErrorCross::Full(c.clone());
        let ws = podar::prune::refit_down(&down, &gram, &kept, ratio, Some((&ec, alpha))).unwrap();
        assert_eq!(ws.dims(), [h, kept.len()]);
        let (g, w, c, ws) = (
            gram.to_vec2::<f32>().unwrap(),
            down.to_vec2::<f32>().unwrap(),
            c.to_vec2::<f32>().unwrap(),
            ws.to_vec2::<f32>().unwrap(),
        );
        // The same system solved plainly: Gaussian elimination on [G[S,S] + λI | B], B = the right-hand
        // side transposed ([k, h]).
        let k = kept.len();
        let lambda = ratio * (0..n).map(|i| g[i][i] as f64).sum::<f64>() / n as f64;
        let mut m: Vec<Vec<f64>> = kept
            .iter()
            .enumerate()
            .map(|(q, &j)| {
                let mut row: Vec<f64> = kept.iter().map(|&i| g[j][i] as f64).collect();
                row[q] += lambda;
                row.extend((0..h).map(|r| {
                    (0..n).map(|i| w[r][i] as f64 * g[i][j] as f64).sum::<f64>()
                        + alpha * c[j][r] as f64
                        + lambda * w[r][j] as f64
                }));
                row
            })
            .collect();
        for p in 0..k {
            for q in p + 1..k {
                let f = m[q][p] / m[p][p];
                let src = m[p].clone();
                m[q].iter_mut().zip(&src).skip(p).for_each(|(a, b)| *a -= f * b);
            }
        }
        let mut want = vec![vec![0f64; h]; k];
        for p in (0..k).rev() {
            for r in 0..h {
                let s: f64 = (p + 1..k).map(|q| m[p][q] * want[q][r]).sum();
                want[p][r] = (m[p][k + r] - s) / m[p][p];
            }
        }
        let scale = want.iter().flatten().fold(0f64, |a, v| a.max(v.abs()));
        let worst = (0..h)
            .flat_map(|r| (0..k).map(move |p| (r, p)))
            .map(|(r, p)| (ws[r][p] as f64 - want[p][r]).abs())
            .fold(0f64, f64::max);
        // Rounding (the right-hand side is formed in f32) leaves ≈ 4e-5; α off by 1% gives 2e-3.
        assert!(
            worst <= tol * scale,
            "ratio {ratio}: re-fit differs from a plain solve by {worst} (largest weight {scale})"
        );
    }
}

/// A tokenizer whose chat template is `tpl` (as a model file would hand it over).
fn with_template(tpl: &str) -> podar::Tokenizer {
    let cfg = serde_json::json!({ "chat_template": tpl, "bos_token": "<s>" });
    podar::Tokenizer::from_hf(TOKENIZER, Some(cfg.to_string().as_bytes())).unwrap()
}

#[wasm_bindgen_test(unsupported = test)]
fn hostile_chat_templates_stop_with_an_error() {
    let ok = with_template("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}");
    assert_eq!(ok.apply_chat_template("hi").unwrap(), "<s><user>hi");
    let cases = [
        // Three nested loops of 9999: ~10^12 steps.
        ("{% for a in range(9999) %}{% for b in range(9999) %}{% for c in range(9999) %}x{% endfor %}{% endfor %}{% endfor %}", "steps"),
        // A loop that rebuilds itself without end.
        ("{% set ns = namespace(n=0) %}{% for a in range(99999) %}{% for b in range(99999) %}{% set ns.n = ns.n + 1 %}{% endfor %}{% endfor %}", "steps"),
        // Recursion without end.
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "chat template"),
        // A lot of output from few steps.
        ("{% for a in range(1000) %}{{ 'x' * 100000 }}{% endfor %}", "wrote more than"),
        // A single range too long.
        ("{% for a in range(10**12) %}x{% endfor %}", "chat template"),
        ("{% for a in ", "does not parse"),
    ];
    for (tpl, says) in cases {
        let err = with_template(tpl).apply_chat_template("hi").unwrap_err().to_string();
        assert!(err.contains(says), "{tpl}: {err}");
    }
}
