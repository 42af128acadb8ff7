//! The CLI on bad input: one clear line on stderr naming the file, exit code 2, never a panic.
//! And on good input: `inspect --json` and `eval --json` print what scripts depend on.

use std::path::{Path, PathBuf};
use std::process::Command;

fn podar(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_podar")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The calibration precision `auto` gives, from the kernels' part of a report: bf16 where a
/// timed product ran at least 1.15 times as fast in bf16.
fn auto_precision(kernels: &serde_json::Value) -> &'static str {
    let t = &kernels["bf16_trial"];
    match (t["bf16_gflops"].as_f64(), t["f32_gflops"].as_f64()) {
        (Some(b), Some(f)) if b >= 1.15 * f => "bf16",
        _ => "f32",
    }
}

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(name)
}

fn real_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A folder `name` holding these files of the tiny Llama fixture, for a test to add its own to.
fn tiny_llama_copy(name: &str, files: &[&str]) -> PathBuf {
    let dir = tmp(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in files {
        std::fs::copy(tiny("llama").join(f), dir.join(f)).unwrap();
    }
    dir
}

/// A path in this test binary's own folder under target/ (emptied once per run, so runs do not
/// pile up files; they came to 683 MB a run in the system's temporary folder).
fn tmp(name: &str) -> PathBuf {
    static EMPTIED: std::sync::Once = std::sync::Once::new();
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-test");
    EMPTIED.call_once(|| {
        let _ = std::fs::remove_dir_all(&d);
    });
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Asserts a clean failure: exit 2, one stderr line that names `file` and contains `needle`.
fn fails(args: &[&str], file: &Path, needle: &str) {
    let (code, _, err) = podar(args);
    assert_eq!(code, 2, "args {args:?}: stderr {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panic: {err}");
    let line = err.trim_end();
    assert_eq!(line.lines().count(), 1, "expected one line, got {err:?}");
    assert!(line.contains(&*file.to_string_lossy()), "{line:?} does not name {}", file.display());
    assert!(line.to_lowercase().contains(&needle.to_lowercase()), "{line:?} does not say {needle:?}");
}

#[test]
fn missing_file() {
    let p = tmp("nope.gguf");
    fails(&["inspect", p.to_str().unwrap()], &p, "no such file");
    // Every subcommand says a missing file the same way, whichever file it is.
    let (m, t) = (tiny("llama"), tmp("nope.txt"));
    let (m, ts) = (m.to_str().unwrap(), t.to_str().unwrap());
    let out = tmp("never-written");
    fails(&["eval", m, "--text", ts], &t, "no such file or folder");
    fails(&["eval", m, "--ids", ts], &t, "no such file or folder");
    fails(&["importance", m, "--calib", ts], &t, "no such file or folder");
    fails(&["prune", m, "--calib", ts, "--mlp", "0.2", "--out", out.to_str().unwrap()], &t, "no such file or folder");
    fails(&["generate", p.to_str().unwrap(), "--prompt", "hi"], &p, "no such file or folder");
    assert!(!out.exists(), "a failed prune left its output folder");
}

#[test]
fn corrupt_gguf() {
    let p = tmp("garbage.gguf");
    std::fs::write(&p, b"this is not a gguf file at all, just text").unwrap();
    fails(&["inspect", p.to_str().unwrap()], &p, "GGUF");
    fails(&["eval", p.to_str().unwrap(), "--ids", p.to_str().unwrap()], &p, "GGUF");
}

#[test]
fn gguf_with_a_tensor_type_podar_cannot_read() {
    // A GGUF of the tiny model, then one tensor's type field set to 20 (IQ4_NL).
    let dir = tmp("iq_source");
    let (code, _, err) = podar(&[
        "prune",
        tiny("llama").to_str().unwrap(),
        "--mlp",
        "0.5",
        "--score",
        "l2",
        "--format",
        "gguf",
        "--out",
        dir.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(code, 0, "{err}");
    let mut bytes = std::fs::read(dir.join("model.gguf")).unwrap();
    let name = b"blk.0.ffn_down.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * dims;
    bytes[ty..ty + 4].copy_from_slice(&20u32.to_le_bytes());
    let p = tmp("iq4_nl.gguf");
    std::fs::write(&p, bytes).unwrap();
    fails(&["inspect", p.to_str().unwrap()], &p, "stored as IQ4_NL, which podar cannot read");
}

#[test]
fn truncated_gguf() {
    let bytes = std::fs::read(real_model()).expect("make test fetches the default model");
    for (i, cut) in [100usize, 1 << 20, bytes.len() - 1000].into_iter().enumerate() {
        let p = tmp(&format!("truncated{i}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let ids = tmp("ids.json");
        std::fs::write(&ids, "[1,2,3,4,5,6,7,8]").unwrap();
        fails(&["eval", p.to_str().unwrap(), "--ids", ids.to_str().unwrap(), "--ctx", "4"], &p, "GGUF");
    }
}

#[test]
fn unknown_architecture() {
    let d = tmp("gpt2");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), br#"{"model_type":"gpt2","n_embd":64}"#).unwrap();
    std::fs::copy(tiny("llama").join("model.safetensors"), d.join("model.safetensors")).unwrap();
    fails(&["inspect", d.to_str().unwrap()], &d, "unsupported architecture `gpt2`");
}

#[test]
fn config_disagrees_with_shapes() {
    let d = tmp("liar");
    std::fs::create_dir_all(&d).unwrap();
    let cfg = std::fs::read_to_string(tiny("llama").join("config.json")).unwrap();
    let cfg = cfg.replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    assert!(cfg.contains("96"));
    std::fs::write(d.join("config.json"), cfg).unwrap();
    std::fs::copy(tiny("llama").join("model.safetensors"), d.join("model.safetensors")).unwrap();
    fails(&["inspect", d.to_str().unwrap()], &d, "gate_proj.weight` has shape [128, 64], the config implies [96, 64]");
    // A config that describes fewer layers than the weights hold.
    let fewer = tmp("fewer_layers");
    std::fs::create_dir_all(&fewer).unwrap();
    let cfg = std::fs::read_to_string(tiny("llama").join("config.json")).unwrap();
    std::fs::write(fewer.join("config.json"), cfg.replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 2"))
        .unwrap();
    std::fs::copy(tiny("llama").join("model.safetensors"), fewer.join("model.safetensors")).unwrap();
    fails(
        &["inspect", fewer.to_str().unwrap()],
        &fewer,
        "the weights hold layer 2, but the model's config describes 2",
    );
}

#[test]
fn truncated_safetensors() {
    let d = tmp("short");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(tiny("llama").join("config.json"), d.join("config.json")).unwrap();
    let st = std::fs::read(tiny("llama").join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    fails(&["inspect", d.to_str().unwrap()], &d, "truncated");
}

#[test]
fn text_too_short_and_ctx_out_of_range() {
    let t = tmp("short.txt");
    std::fs::write(&t, "def f(x): return x").unwrap();
    let m = real_model();
    let (m, t_s) = (m.to_str().unwrap(), t.to_str().unwrap());
    fails(&["eval", m, "--text", t_s], &t, "needs at least 512");
    fails(&["eval", m, "--text", t_s, "--ctx", "1"], &t, "--ctx must be between 2");
    fails(&["eval", m, "--text", t_s, "--ctx", "10000"], Path::new(m), "longer than the model's context of 8192");
}

/// Weights that are not numbers, and tensor data that does not fit the header, are refused when
/// the model is read, with what is wrong.
#[test]
fn broken_weights_and_layouts_are_refused() {
    // The tiny llama with one weight of its first MLP set to NaN.
    let dir = tmp("nan_model");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny("llama").join(f), dir.join(f)).unwrap();
    }
    let mut st = std::fs::read(tiny("llama").join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    let start = header["model.layers.0.mlp.up_proj.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    st[8 + n + start..8 + n + start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(dir.join("model.safetensors"), &st).unwrap();
    let ids = tmp("nan_ids.json");
    std::fs::write(&ids, "[1,2,3,4,5,6,7,8]").unwrap();
    let d = dir.to_str().unwrap();
    fails(&["eval", d, "--ids", ids.to_str().unwrap(), "--ctx", "4"], &dir, "up_proj.weight` holds 1 NaN");
    // A GGUF cut short: its header is whole, its last tensors are not.
    let bytes = std::fs::read(real_model()).unwrap();
    let p = tmp("cut.gguf");
    std::fs::write(&p, &bytes[..60 << 20]).unwrap();
    fails(&["inspect", p.to_str().unwrap()], &p, "the file is truncated");
}

#[test]
fn text_files_are_utf8_without_a_byte_order_mark() {
    let m = real_model();
    let text = "def area(r):\n    return 3.14159 * r * r\n\nprint(area(2.0))\n".repeat(8);
    let (plain, bom, latin1) = (tmp("plain.txt"), tmp("bom.txt"), tmp("latin1.txt"));
    std::fs::write(&plain, &text).unwrap();
    std::fs::write(&bom, [&[0xef, 0xbb, 0xbf][..], text.as_bytes()].concat()).unwrap();
    std::fs::write(&latin1, b"Gr\xfc\xdfe aus M\xfcnchen").unwrap();
    // As a browser reads a file: the mark is not text, so both files give the same tokens.
    let eval = |p: &Path| {
        let (code, out, err) =
            podar(&["eval", m.to_str().unwrap(), "--text", p.to_str().unwrap(), "--ctx", "32", "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (v["tokens"].as_u64().unwrap(), v["perplexity"].as_f64().unwrap())
    };
    assert_eq!(eval(&plain), eval(&bom));
    fails(&["eval", m.to_str().unwrap(), "--text", latin1.to_str().unwrap()], &latin1, "not UTF-8");
}

#[test]
fn inspect_json_uses_transformers_names() {
    let (code, out, err) = podar(&["inspect", real_model().to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["num_hidden_layers"], 30);
    assert_eq!(v["hidden_size"], 576);
    assert_eq!(v["intermediate_size"], 1536);
    assert_eq!(v["num_attention_heads"], 9);
    assert_eq!(v["num_key_value_heads"], 3);
    assert_eq!(v["vocab_size"], 49152);
    assert_eq!(v["parameters"], 134_515_008u64);
    assert_eq!(v["dtype"], "Q4_1");
}

#[test]
fn eval_json_on_tiny_model() {
    let ids = tmp("tiny_ids.json");
    let list: Vec<u32> = (0..40).map(|i| (i * 37 % 256) as u32).collect();
    std::fs::write(&ids, serde_json::to_string(&list).unwrap()).unwrap();
    let (code, out, err) =
        podar(&["eval", tiny("qwen2").to_str().unwrap(), "--ids", ids.to_str().unwrap(), "--ctx", "16", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"], 40);
    assert_eq!(v["predictions"], 30);
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);
    assert!(v["seconds"].as_f64().is_some());
}

#[test]
fn prune_writes_a_consistent_hf_folder_and_report() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Calibration and evaluation text: podar's own source code, a "code" domain every clone has.
    let calib = root.join("src/model/transformer.rs");
    let eval = root.join("src/prune/mod.rs");
    let out = tmp("pruned_hf");
    let (code, stdout, err) = podar(&[
        "prune",
        real_model().to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--calib-samples",
        "4",
        "--calib-len",
        "64",
        "--mlp",
        "0.2",
        "--heads",
        "0.34",
        "--drop-layers",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--eval",
        eval.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for k in ["parameters_before", "parameters_after", "seconds", "out"] {
        assert!(v.get(k).is_some(), "--json lacks {k}: {stdout}");
    }
    assert!(v["perplexity"][0]["after"].as_f64().unwrap() > 1.0, "--json lacks the --eval perplexity: {stdout}");
    assert!(v["parameters_after"].as_u64() < v["parameters_before"].as_u64());
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["intermediate_size"], 1229);
    assert_eq!(cfg["num_hidden_layers"], 29);
    assert_eq!(cfg["num_key_value_heads"], 2);
    assert_eq!(cfg["num_attention_heads"], 6);
    assert_eq!(cfg["head_dim"], 64);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("podar-report.json")).unwrap()).unwrap();
    assert_eq!(report["kept_layers"].as_array().unwrap().len(), 29);
    assert_eq!(report["calibration"]["tokens"], 256);
    assert_eq!(report["source_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["calibration"]["ids_sha256"].as_str().unwrap().len(), 64);
    // The calibration's number format by default: bf16 where the CPU's bf16 products ran faster
    // when timed, as the report says.
    assert_eq!(report["method"]["calib_precision"], auto_precision(&report["kernels"]));
    assert_eq!(report["method"]["error_estimate"], "residuals");
    let ppl = &report["perplexity"][0];
    assert!(ppl["before"].as_f64().unwrap() > 1.0 && ppl["after"].as_f64().unwrap() > 1.0);
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    // podar reads its own export, with the same tokenizer, and inspect agrees with the config.
    let (code, stdout, err) = podar(&["inspect", out.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["parameters"], v["parameters_after"]);
    let (code, _, err) = podar(&["generate", out.to_str().unwrap(), "--prompt", "def add(a, b):", "--max-tokens", "5"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn prune_writes_gguf() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = tmp("pruned_gguf");
    let (code, _, err) = podar(&[
        "prune",
        real_model().to_str().unwrap(),
        "--mlp-size",
        "1024",
        "--format",
        "gguf",
        "--dtype",
        "q8_0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("static weight scores"), "no warning about static scores: {err}");
    let (code, stdout, err) = podar(&["inspect", out.join("model.gguf").to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{err}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["intermediate_size"], 1024);
    assert_eq!(s["dtype"], "Q8_0");
    let _ = root;
}

#[test]
fn importance_json_scores_every_layer_and_neuron() {
    let calib = tmp("importance_calib.txt");
    std::fs::write(&calib, "def f(x):\n    return x * 2\n".repeat(100)).unwrap();
    let m = tiny("llama");
    let args = ["importance", m.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--calib-len", "32"];
    let (code, out, err) = podar(&[&args[..], &["--calib-samples", "4", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The default score is prune's: energy.
    assert_eq!(v["score"], "energy");
    assert_eq!(v["tokens"], 128);
    let influence = v["layer_influence"].as_array().unwrap();
    assert_eq!(influence.len(), 3);
    assert!(influence.iter().all(|x| x.as_f64().is_some_and(|x| x.is_finite())));
    let mlp = v["mlp"].as_array().unwrap();
    assert_eq!(mlp.len(), 3);
    for layer in mlp {
        let scores: Vec<f64> = layer.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(scores.len(), 128);
        assert!(scores.iter().all(|x| x.is_finite() && *x >= 0.0), "{scores:?}");
        assert!(scores.iter().any(|&x| x != scores[0]), "all neurons scored alike");
    }
    // The products' number format, as prune's (auto: bf16 where it ran faster), stated; f32 on request.
    assert_eq!(v["calib_precision"], auto_precision(&v["kernels"]));
    let (code, out, err) =
        podar(&[&args[..], &["--calib-samples", "4", "--calib-precision", "f32", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let f32_ = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(f32_["calib_precision"], "f32");
    // Held to AVX2 (the path of a CPU without AVX-512): no bf16 products, so `auto` is f32, and
    // the same scores within rounding (the products are summed in another order).
    let (code, out, err) = podar(&[&["--kernels", "avx2"], &args[..], &["--calib-samples", "4", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let avx2: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(avx2["calib_precision"], "f32");
    assert_ne!(avx2["kernels"]["isa"], "avx512");
    assert!(avx2["kernels"]["bf16_trial"].is_null());
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        let mut xs: Vec<f64> = v["layer_influence"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        for layer in v["mlp"].as_array().unwrap() {
            xs.extend(layer.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()));
        }
        xs
    };
    for (a, b) in floats(&avx2).iter().zip(floats(&f32_)) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(1e-6), "AVX2 {a} against the default kernels' {b}");
    }
    // Too little text for the windows asked: the same message as prune's.
    fails(&[&args[..], &["--calib-samples", "1000"]].concat(), &calib, "1000 windows of 32 need");
}

#[test]
fn generate_within_the_models_context() {
    // The tiny model with a context of 8 positions.
    let dir = tiny_llama_copy("short_context", &["model.safetensors", "tokenizer.json", "generation_config.json"]);
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny("llama").join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 8.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let d = dir.to_str().unwrap();
    // Generation that reaches the context says so.
    let (code, _, err) = podar(&["generate", d, "--prompt", "hello", "--max-tokens", "10"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stopped at the model's context of 8 tokens"), "{err}");
    // A prompt that fills the context leaves no room: refused, not run past the context.
    fails(&["generate", d, "--prompt", "hello world", "--max-tokens", "3"], &dir, "the model's context is 8");
    // Read from the files a layer at a time, the same text, and the same stop.
    let (code, held, _) = podar(&["generate", d, "--prompt", "hello", "--max-tokens", "10", "--stream", "off"]);
    assert_eq!(code, 0);
    let (code, streamed, err) = podar(&["generate", d, "--prompt", "hello", "--max-tokens", "10", "--stream", "on"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(streamed, held);
    assert!(err.contains("stopped at the model's context of 8 tokens"), "{err}");
    let (code, _, err) = podar(&["generate", d, "--prompt", "hi", "--stream", "sometimes"]);
    assert!(code != 0 && err.contains("--stream must be auto, on or off"), "{err}");
}

#[test]
fn a_chat_template_that_never_ends_is_stopped() {
    // A model whose tokenizer_config.json holds three nested loops of 9999.
    let dir = tiny_llama_copy("endless_template", &["model.safetensors", "tokenizer.json", "config.json"]);
    let tpl = "{% for a in range(9999) %}{% for b in range(9999) %}{% for c in range(9999) %}x{% endfor %}{% endfor %}{% endfor %}";
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::json!({ "chat_template": tpl }).to_string()).unwrap();
    let t0 = std::time::Instant::now();
    fails(&["generate", dir.to_str().unwrap(), "--prompt", "hi", "--chat"], &dir, "chat template stopped");
    eprintln!("endless chat template stopped after {:.2} s", t0.elapsed().as_secs_f64());
}

#[test]
fn prune_refuses_bad_requests() {
    let out = tmp("never");
    let m = real_model();
    let m = m.to_str().unwrap();
    let t = tmp("tiny_calib.txt");
    std::fs::write(&t, "def f(x):\n    return x\n").unwrap();
    fails(
        &["prune", m, "--calib", t.to_str().unwrap(), "--mlp", "0.2", "--out", out.to_str().unwrap()],
        &t,
        "need 8192",
    );
    fails(&["prune", m, "--mlp", "1.5", "--out", out.to_str().unwrap()], Path::new(m), "--mlp must be a fraction");
    // Nothing to prune is refused (it used to write an unpruned copy without a word).
    fails(
        &["prune", m, "--calib", t.to_str().unwrap(), "--out", out.to_str().unwrap()],
        Path::new(m),
        "nothing to prune",
    );
    let bad_precision = ["prune", m, "--mlp", "0.2", "--calib-precision", "f16", "--out", out.to_str().unwrap()];
    fails(&bad_precision, Path::new(m), "unknown calibration precision `f16` (auto, f32, bf16)");
    let bad_estimate = ["prune", m, "--mlp", "0.2", "--error-estimate", "exact", "--out", out.to_str().unwrap()];
    fails(&bad_estimate, Path::new(m), "unknown --error-estimate `exact` (residuals, stream)");
    fails(
        &["prune", m, "--mlp", "0.2", "--score", "wanda", "--out", out.to_str().unwrap()],
        Path::new(m),
        "need calibration text",
    );
    fails(&["prune", m, "--drop-layers-at", "30", "--out", out.to_str().unwrap()], Path::new(m), "names layer 30");
    // SmolLM2 has 3 KV groups: 0.2 of them rounds to none.
    fails(&["prune", m, "--heads", "0.2", "--out", out.to_str().unwrap()], Path::new(m), "removes none");
    // Windows longer than the model's context (256 positions for the tiny model).
    let long = tmp("long_calib.txt");
    std::fs::write(&long, "def f(x):\n    return x * 2\n".repeat(200)).unwrap();
    let tiny_llama = tiny("llama");
    let (l, o) = (long.to_str().unwrap(), out.to_str().unwrap());
    let args =
        ["prune", tiny_llama.to_str().unwrap(), "--calib", l, "--calib-samples", "1", "--mlp", "0.5", "--out", o];
    fails(&[&args[..], &["--calib-len", "300"]].concat(), &tiny_llama, "longer than the model's context of 256");
}

#[test]
fn prune_guards_its_output_folder() {
    let src = tiny("llama");
    let s = src.to_str().unwrap();
    // Into the input model's own folder: refused, even with --force.
    for force in [false, true] {
        let mut args = vec!["prune", s, "--mlp", "0.5", "--score", "l2", "--out", s];
        if force {
            args.push("--force");
        }
        fails(&args, &src, "input model");
    }
    // A folder that holds files: refused without --force.
    let out = tmp("guarded");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("model.gguf"), b"an earlier export").unwrap();
    std::fs::write(out.join("model-00001-of-00002.safetensors"), b"an earlier shard").unwrap();
    let o = out.to_str().unwrap();
    fails(&["prune", s, "--mlp", "0.5", "--score", "l2", "--out", o], &out, "not empty");
    // With --force the earlier model files go, so the folder holds one model, which loads.
    let (code, _, err) = podar(&["prune", s, "--mlp", "0.5", "--score", "l2", "--out", o, "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.join("model.gguf").exists() && !out.join("model-00001-of-00002.safetensors").exists());
    let (code, stdout, err) = podar(&["inspect", o, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(v["intermediate_size"], cfg["intermediate_size"]);
    // --out naming a file is refused, and so, before any work, is a folder that cannot be made.
    let file = tmp("a-file");
    std::fs::write(&file, b"x").unwrap();
    fails(&["prune", s, "--mlp", "0.5", "--score", "l2", "--out", file.to_str().unwrap()], &file, "names a file");
    let under = file.join("sub");
    fails(&["prune", s, "--mlp", "0.5", "--score", "l2", "--out", under.to_str().unwrap()], &under, "not a directory");
    // A job refused before it writes leaves no folder behind (here: Gemma 2's alternating layers,
    // which a GGUF cannot describe once one layer is gone).
    let (g, gone) = (tiny("gemma2"), tmp("gemma2_gguf"));
    let args =
        ["prune", g.to_str().unwrap(), "--drop-layers-at", "1", "--format", "gguf", "--out", gone.to_str().unwrap()];
    fails(&args, &g, "no longer alternate");
    assert!(!gone.exists(), "the refused job left {}", gone.display());
}

#[test]
fn a_streamed_prune_writes_what_a_loaded_one_writes() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let calib = root.join("src/model/transformer.rs");
    let eval = root.join("src/prune/mod.rs");
    let model = tiny("llama");
    for format in ["hf", "gguf"] {
        let run = |stream: &str| {
            let out = tmp(&format!("streamed_{format}_{stream}"));
            let (code, stdout, err) = podar(&[
                "prune",
                model.to_str().unwrap(),
                "--calib",
                calib.to_str().unwrap(),
                "--calib-samples",
                "4",
                "--calib-len",
                "32",
                "--mlp",
                "0.25",
                "--heads",
                "0.5",
                "--drop-layers",
                "1",
                "--format",
                format,
                "--out",
                out.to_str().unwrap(),
                "--eval",
                eval.to_str().unwrap(),
                "--stream",
                stream,
                "--json",
            ]);
            assert_eq!(code, 0, "--stream {stream}: {err}");
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            let weights = if format == "hf" { "model.safetensors" } else { "model.gguf" };
            (std::fs::read(out.join(weights)).unwrap(), v["perplexity"].clone())
        };
        let (loaded, ppl_loaded) = run("off");
        let (streamed, ppl_streamed) = run("on");
        assert!(loaded == streamed, "{format}: the streamed prune wrote other weights");
        // Streamed, the LM head is read by blocks of the vocabulary, its log-sum-exp folded block by
        // block: the same perplexities within rounding.
        let (a, b) = (ppl_loaded[0].clone(), ppl_streamed[0].clone());
        assert_eq!(a["name"], b["name"]);
        for k in ["before", "after"] {
            let (x, y) = (a[k].as_f64().unwrap(), b[k].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-6 * x, "{format}: perplexity {k} {x} loaded, {y} streamed");
        }
    }
    let (code, _, err) = podar(&["prune", model.to_str().unwrap(), "--mlp", "0.2", "--out", "x", "--stream", "maybe"]);
    assert_ne!(code, 0);
    assert!(err.contains("--stream must be auto, on or off"), "{err}");
}
