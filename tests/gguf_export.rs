//! GGUF export round trips: write a model as GGUF, read it back with podar's own loader, and get
//! the same logits (q/k permutation and Gemma norm offsets undone exactly).

use podar::export::gguf::{write_gguf, GgufDtype};
use std::io::Cursor;
use std::path::PathBuf;

fn load(name: &str) -> podar::Model {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(name);
    let cfg = std::fs::read(d.join("config.json")).unwrap();
    let st = std::fs::read(d.join("model.safetensors")).unwrap();
    podar::load_hf_weights(&cfg, vec![Cursor::new(st)]).unwrap()
}

fn logits(m: &podar::Model) -> Vec<f32> {
    let ids: Vec<u32> = (0..12).map(|i| (i * 29 % 256) as u32).collect();
    m.forward(&ids, 1, 12, None).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn gguf_round_trip_keeps_logits() {
    for (name, dtype, tol) in [
        ("llama", GgufDtype::F32, 1e-5),
        ("llama3", GgufDtype::F32, 1e-5),
        ("qwen2", GgufDtype::F32, 1e-5),
        ("qwen3", GgufDtype::F32, 1e-5),
        ("gemma2", GgufDtype::F32, 1e-5),
        // Its config puts a full-attention layer every 3rd layer, not llama.cpp's default 6th.
        ("gemma3", GgufDtype::F32, 1e-5),
        ("mistral", GgufDtype::F16, 2e-2),
    ] {
        let m = load(name);
        let mut buf = Vec::new();
        write_gguf(&m, &mut m.layers.clone(), &[], dtype, &mut buf).unwrap();
        let back = podar::load_gguf(Cursor::new(buf), &mut |_, _| true).unwrap();
        assert_eq!(back.model.cfg.arch.gguf_name(), m.cfg.arch.gguf_name());
        // Llama 3 rope scaling goes out as `rope_freqs.weight` and comes back as the same scaling.
        let freqs = |m: &podar::Model| {
            m.cfg.rope_scaling.as_ref().and_then(|r| r.llama3_factors(m.cfg.rope_theta, m.cfg.head_dim))
        };
        assert_eq!(freqs(&m).is_some(), name == "llama3");
        if let (Some(a), Some(b)) = (freqs(&m), freqs(&back.model)) {
            assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-5 * x), "{a:?} vs {b:?}");
        }
        let (a, b) = (logits(&m), logits(&back.model));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < tol, "{name} {dtype:?}: max diff {worst}");
    }
}

#[test]
fn gemma_layouts_gguf_cannot_record_are_refused() {
    use podar::model::config::LayerType;
    // Gemma 2 without its first layer: full, sliding, … no longer alternates from sliding.
    let mut m = load("gemma2");
    m.layers.remove(0);
    m.cfg.layer_types.remove(0);
    m.cfg.num_hidden_layers -= 1;
    let err = write_gguf(&m, &mut m.layers.clone(), &[], GgufDtype::F32, &mut Vec::new()).unwrap_err().to_string();
    assert!(err.contains("--format hf"), "{err}");
    // Gemma 3 with a layout of no period (full, sliding, full over its first layers) is refused; one
    // that has a period is written with it and read back with the same layout.
    let mut m = load("gemma3");
    let n = m.cfg.layer_types.len();
    assert!(n >= 3);
    m.cfg.layer_types = (0..n).map(|i| if i == 1 { LayerType::Sliding } else { LayerType::Full }).collect();
    assert!(write_gguf(&m, &mut m.layers.clone(), &[], GgufDtype::F32, &mut Vec::new()).is_err());
    m.cfg.layer_types = vec![LayerType::Sliding; n];
    let mut buf = Vec::new();
    write_gguf(&m, &mut m.layers.clone(), &[], GgufDtype::F32, &mut buf).unwrap();
    let back = podar::load_gguf(Cursor::new(buf), &mut |_, _| true).unwrap();
    assert_eq!(back.model.cfg.layer_types, m.cfg.layer_types);
}

#[test]
fn q8_0_weights_stay_within_one_quantization_step() {
    let m = load("llama");
    let mut buf = Vec::new();
    write_gguf(&m, &mut m.layers.clone(), &[], GgufDtype::Q8_0, &mut buf).unwrap();
    let back = podar::load_gguf(Cursor::new(buf), &mut |_, _| true).unwrap().model;
    for ((name, a), (_, b)) in m.named_tensors().iter().zip(back.named_tensors().iter()) {
        let (a, b): (Vec<f32>, Vec<f32>) =
            (a.flatten_all().unwrap().to_vec1().unwrap(), b.flatten_all().unwrap().to_vec1().unwrap());
        for (ba, bb) in a.chunks(32).zip(b.chunks(32)) {
            let step = ba.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
            for (x, y) in ba.iter().zip(bb) {
                assert!((x - y).abs() <= step * 0.6 + 1e-6, "{name}: {x} vs {y} (step {step})");
            }
        }
    }
}

/// Q8_0 quantizes blocks of 32 values of a row: a pruned MLP width that is not a multiple of 32
/// leaves the down projection in F16 (not F32), and the plan says so before the job runs.
#[test]
fn q8_0_rows_of_other_lengths_are_stored_as_f16_with_a_warning() {
    use podar::export::job::{plan, OutputFormat};
    use podar::prune::{prune_mlp, PruneOptions, Score};
    let m = load("llama");
    let o = PruneOptions { mlp_size: Some(100), score: Score::Maw, ..Default::default() };
    let fmt = OutputFormat::Gguf(GgufDtype::Q8_0);
    let warnings = plan(&m.cfg, &o, fmt).unwrap().warnings;
    assert!(warnings.iter().any(|w| w.contains("rows of 100 values are stored as F16")), "{warnings:?}");
    assert!(plan(&m.cfg, &PruneOptions { mlp_size: Some(96), ..o.clone() }, fmt).unwrap().warnings.is_empty());
    let p = prune_mlp(&m, None, &o, &mut |_, _, _| true).unwrap();
    let mut buf = Vec::new();
    write_gguf(&p.model, &mut p.model.layers.clone(), &[], GgufDtype::Q8_0, &mut buf).unwrap();
    let (src, _) = podar::model::gguf::GgufSource::new(Cursor::new(buf)).unwrap();
    use candle_core::quantized::GgmlDType;
    assert_eq!(src.ggml_dtype("model.layers.0.mlp.down_proj.weight"), Some(GgmlDType::F16));
    assert_eq!(src.ggml_dtype("model.layers.0.mlp.up_proj.weight"), Some(GgmlDType::Q8_0));
}

#[test]
fn default_model_gguf_export_keeps_tokenizer_and_perplexity() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let b = podar::load_gguf(Cursor::new(std::fs::read(p).unwrap()), &mut |_, _| true).unwrap();
    let meta = b.gguf_tokenizer_metadata().unwrap();
    let mut buf = Vec::new();
    write_gguf(&b.model, &mut b.model.layers.clone(), &meta, GgufDtype::F32, &mut buf).unwrap();
    let back = podar::load_gguf(Cursor::new(buf), &mut |_, _| true).unwrap();
    let text = "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n";
    let ids = b.tokenizer().unwrap().encode(text, false).unwrap();
    assert_eq!(back.tokenizer().unwrap().encode(text, false).unwrap(), ids);
    let (x, y) = (
        podar::perplexity(&b.model, &ids, ids.len(), &mut |_, _| true).unwrap().perplexity,
        podar::perplexity(&back.model, &ids, ids.len(), &mut |_, _| true).unwrap().perplexity,
    );
    assert!((x / y - 1.0).abs() < 1e-5, "{x} vs {y}");
    // The tokenizer derived from tokenizer.json (the HF export path) gives the same ids.
    let derived = b.tokenizer().unwrap().gguf_metadata().unwrap();
    let get = |m: &[(String, candle_core::quantized::gguf_file::Value)], k: &str| {
        m.iter().find(|(n, _)| n == k).map(|(_, v)| format!("{v:?}"))
    };
    for k in
        ["tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]
    {
        assert_eq!(get(&derived, k), get(&meta, k), "{k}");
    }
    assert_eq!(get(&derived, "tokenizer.ggml.merges"), get(&meta, "tokenizer.ggml.merges"));
    assert_eq!(get(&derived, "tokenizer.ggml.tokens"), get(&meta, "tokenizer.ggml.tokens"));
}

#[test]
fn per_layer_widths_go_out_as_deci_and_come_back() {
    use podar::prune::{prune_mlp, PruneOptions, Widths};
    let ids: Vec<u32> = (0..8 * 16).map(|i| (i * 37 % 251) as u32).collect();
    for name in ["llama", "llama3"] {
        let m = load(name);
        let o = PruneOptions {
            mlp_fraction: Some(0.4),
            calib_samples: 8,
            calib_len: 16,
            mlp_widths: Widths::PerLayer,
            ..Default::default()
        };
        let uniform =
            prune_mlp(&m, Some(&ids), &PruneOptions { mlp_widths: Widths::Uniform, ..o.clone() }, &mut |_, _, _| true)
                .unwrap();
        let p = prune_mlp(&m, Some(&ids), &o, &mut |_, _, _| true).unwrap();
        let widths = p.model.cfg.mlp_widths();
        assert!(p.model.cfg.intermediate_sizes.is_some(), "{name}: the layers kept equal widths {widths:?}");
        assert_eq!(widths.iter().sum::<usize>(), uniform.model.cfg.intermediate_size * widths.len(), "{name}");
        assert_eq!(p.model.cfg.parameter_count(), uniform.model.cfg.parameter_count(), "{name}");
        for (l, layer) in p.model.layers.iter().enumerate() {
            assert_eq!(layer.gate_proj.weight.dims()[0], widths[l], "{name}, layer {l}");
            assert_eq!(layer.down_proj.weight.dims()[1], widths[l], "{name}, layer {l}");
        }
        let mut buf = Vec::new();
        write_gguf(&p.model, &mut p.model.layers.clone(), &[], GgufDtype::F32, &mut buf).unwrap();
        let back = podar::load_gguf(Cursor::new(&buf), &mut |_, _| true).unwrap();
        assert_eq!(back.model.cfg.mlp_widths(), widths, "{name}");
        let (a, b) = (logits(&p.model), logits(&back.model));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: max diff {worst}");
        let header = podar::formats::gguf::GgufHeader::read(&mut Cursor::new(&buf)).unwrap();
        assert_eq!(header.architecture().unwrap(), "deci");
        // A model already of per-layer widths is not pruned again.
        let err = prune_mlp(&back.model, Some(&ids), &o, &mut |_, _, _| true).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("widths of their own")), "{err:?}");
    }
    // A family llama.cpp reads one width for, and the Hugging Face format, are refused.
    let mut q = load("qwen2");
    q.cfg.set_mlp_widths(&(0..q.cfg.num_hidden_layers).map(|l| 16 + l).collect::<Vec<_>>());
    let err =
        podar::export::gguf::gguf_architecture(q.cfg.arch, q.cfg.intermediate_sizes.is_some()).unwrap_err().to_string();
    assert!(err.contains("only for Llama"), "{err}");
    let o = PruneOptions { mlp_fraction: Some(0.2), mlp_widths: Widths::PerLayer, ..Default::default() };
    let err = podar::export::job::plan(&load("llama").cfg, &o, podar::OutputFormat::parse("hf", "f32").unwrap())
        .err()
        .map(|e| e.to_string());
    assert!(err.as_deref().is_some_and(|e| e.contains("--format gguf")), "{err:?}");
}
