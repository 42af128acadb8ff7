//! The heap's cap (podar::memory), alone in its test binary: a cap applies to every thread, and
//! other tests' allocations would fail under it. Also where a streamed prune shows it holds one
//! layer at a time, not the model (its peak, under a cap of a quarter of the model, with the
//! embedding left in the file too).

/// The cap and the counts are the process's: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn an_allocation_past_the_cap_is_refused_and_noted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let live = podar::memory::live();
    podar::memory::set_cap(Some(live + (1 << 20)));
    let mut v: Vec<u8> = Vec::new();
    let refused = v.try_reserve_exact(2 << 20).is_err();
    let noted = podar::memory::failed_allocation();
    let mut w: Vec<u8> = Vec::new();
    let small = w.try_reserve_exact(512 << 10).is_ok();
    drop(w);
    podar::memory::set_cap(None);
    assert!(refused, "2 MiB past a cap 1 MiB above the heap was allocated");
    assert_eq!(noted, 2 << 20);
    assert!(small, "512 KiB under the cap was refused");
    assert!(v.try_reserve_exact(2 << 20).is_ok(), "the cap stayed after it was lifted");
}

#[cfg(not(target_arch = "wasm32"))]
/// A Llama-shaped model of 16 layers of 4 MiB each (f32) and an embedding of 4 MiB (tied), with
/// random weights, as a safetensors file.
fn random_model_file() -> (Vec<u8>, std::path::PathBuf) {
    let cfg = br#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
        "intermediate_size": 1024, "num_hidden_layers": 16, "num_attention_heads": 8, "num_key_value_heads": 4,
        "head_dim": 32, "hidden_act": "silu", "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "vocab_size": 4096}"#
        .to_vec();
    let shapes = podar::model::transformer::expected_tensors(&podar::ModelConfig::from_hf_json(&cfg).unwrap());
    let header = podar::export::hf::safetensors_header(&shapes, podar::StorageDtype::F32).unwrap();
    let path = std::env::temp_dir().join(format!("podar-capped-{}.safetensors", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    use std::io::Write;
    w.write_all(&header).unwrap();
    let mut x = 99u64;
    for (name, shape) in &shapes {
        let norm = name.ends_with("norm.weight");
        for _ in 0..shape.iter().product::<usize>() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = if norm { 1.0f32 } else { ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1 };
            w.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    w.flush().unwrap();
    (cfg, path)
}

#[cfg(not(target_arch = "wasm32"))]
#[test]
fn a_streamed_prune_holds_one_layer_not_the_model() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use podar::model::store::{FileSpill, LayerStore};
    use podar::prune::{prune_in, prune_owned, PruneOptions};
    let (cfg_json, path) = random_model_file();
    let cfg = podar::ModelConfig::from_hf_json(&cfg_json).unwrap();
    let model_bytes = std::fs::metadata(&path).unwrap().len() as usize;
    let ids: Vec<u32> = (0..8 * 32).map(|i| (i * 997 % 4096) as u32).collect();
    let o = PruneOptions { mlp_fraction: Some(0.25), calib_samples: 8, calib_len: 32, ..Default::default() };
    let open = || podar::SafetensorsSource::new(vec![std::fs::File::open(&path).unwrap()]).unwrap();

    // Streamed, layers and tables, under a cap of a quarter of the model above what the heap held
    // before: the perplexity before, the prune, and the perplexity after.
    let base = podar::memory::live();
    podar::memory::reset_peak();
    podar::memory::set_cap(Some(base + model_bytes / 4));
    let streamed = (|| {
        let mut src = open();
        let shell = podar::Model::load_shell_without_tables(cfg.clone(), &mut src)?;
        let mut layers = podar::model::Streamed::new(&cfg, src, Box::new(FileSpill::new()?)).tables_from_source();
        let eval = |m: &podar::Model, layers: &mut dyn LayerStore| {
            podar::model::eval::perplexity_layered(m, layers, &ids, 64, &mut |_, _| true)
        };
        let before = eval(&shell, &mut layers)?;
        let pruned = prune_in(shell, &mut layers, Some(&ids), &o, &mut |_, _, _| true)?;
        let after = eval(&pruned.model, &mut layers)?;
        podar::Result::Ok((pruned, layers, before, after))
    })();
    podar::memory::set_cap(None);
    let streamed_peak = podar::memory::peak() - base;
    let (streamed, mut layers, before, after) = streamed.unwrap();

    // The same prune with the model in memory: its peak holds the model.
    let model = podar::load_hf_weights(&cfg_json, vec![std::fs::File::open(&path).unwrap()]).unwrap();
    let base = podar::memory::live();
    podar::memory::reset_peak();
    let want_before = podar::perplexity(&model, &ids, 64, &mut |_, _| true).unwrap();
    let whole = prune_owned(model, Some(&ids), &o, &mut |_, _, _| true).unwrap();
    let whole_peak = podar::memory::peak() - base;
    let want_after = podar::perplexity(&whole.model, &ids, 64, &mut |_, _| true).unwrap();
    for (got, want) in [(before, want_before), (after, want_after)] {
        assert!(
            (got.nll - want.nll).abs() <= 1e-6 * want.nll,
            "perplexity {} streamed, {} in memory",
            got.nll,
            want.nll
        );
    }
    std::fs::remove_file(&path).unwrap();
    eprintln!(
        "model {:.1} MiB; peak above the start: streamed {:.1} MiB, in memory {:.1} MiB",
        model_bytes as f64 / 1048576.0,
        streamed_peak as f64 / 1048576.0,
        (whole_peak + model_bytes) as f64 / 1048576.0
    );
    assert!(streamed_peak < model_bytes / 4, "streamed peak {streamed_peak} bytes");
    assert_eq!(streamed.kept, whole.kept);
    for (l, w) in whole.model.layers.iter().enumerate() {
        let got = layers.layer(l).unwrap();
        let a: Vec<f32> = got.down_proj.weight.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = w.down_proj.weight.flatten_all().unwrap().to_vec1().unwrap();
        assert!(a == b, "layer {l}: the streamed prune's down projection differs");
    }
}
