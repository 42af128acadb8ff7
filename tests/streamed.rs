//! Models whose layers are read from their file as they are used (`podar::model::Streamed`): the
//! same prune and the same perplexities as the model held in memory, bit for bit, for every family,
//! with recovery, error correction, heads and layers dropped, and static scores. (Native: the
//! spill file and the fixtures are on disk.)
#![cfg(not(target_arch = "wasm32"))]

mod common;

use podar::formats::safetensors::SafetensorsSource;
use podar::model::eval::perplexity_layered;
use podar::model::store::{FileSpill, LayerStore, MemorySpill, Spill};
use podar::model::{Layer, Streamed};
use podar::prune::{prune_in, prune_mlp, PruneOptions, Score};
use podar::{perplexity, Model, ModelConfig, TensorSource};
use std::io::Cursor;
use std::path::PathBuf;

fn files(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny").join(name);
    (std::fs::read(dir.join("config.json")).unwrap(), std::fs::read(dir.join("model.safetensors")).unwrap())
}

/// The model shaped `cfg` with its layers streamed from `st`.
fn streamed(cfg: &[u8], st: &[u8], spill: Box<dyn Spill>) -> (Model, Streamed<SafetensorsSource<Cursor<Vec<u8>>>>) {
    let cfg = ModelConfig::from_hf_json(cfg).unwrap();
    let mut src = SafetensorsSource::new(vec![Cursor::new(st.to_vec())]).unwrap();
    let shell = Model::load_shell(cfg.clone(), &mut src as &mut dyn TensorSource).unwrap();
    (shell, Streamed::new(&cfg, src, spill))
}

/// Token ids over the tiny vocabulary.
fn ids(n: usize) -> Vec<u32> {
    common::pseudo_ids(n)
}

fn same_layers(a: &Layer, b: &Layer, what: &str) {
    let (a, b) = (a.named(), b.named());
    assert_eq!(a.len(), b.len(), "{what}");
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb, "{what}");
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = tb.flatten_all().unwrap().to_vec1().unwrap();
        assert!(va == vb, "{what}: {na} differs");
    }
}

#[test]
fn a_streamed_model_prunes_and_scores_as_the_one_in_memory() {
    let calib = ids(8 * 16);
    let eval = ids(4 * 24);
    let options = [
        PruneOptions { mlp_fraction: Some(0.25), calib_samples: 8, calib_len: 16, ..Default::default() },
        PruneOptions {
            mlp_fraction: Some(0.25),
            heads: Some(0.5),
            drop_layers: Some(1),
            score: Score::Obs,
            calib_samples: 8,
            calib_len: 16,
            ..Default::default()
        },
        PruneOptions { mlp_fraction: Some(0.5), score: Score::Maw, ..Default::default() },
    ];
    for name in ["llama", "qwen2", "qwen3", "gemma3"] {
        let (cfg, st) = files(name);
        let model = podar::load_hf_weights(&cfg, vec![Cursor::new(st.clone())]).unwrap();
        let (shell, mut layers) = streamed(&cfg, &st, Box::new(FileSpill::new().unwrap()));
        let before = perplexity(&model, &eval, 24, &mut |_, _| true).unwrap();
        let got = perplexity_layered(&shell, &mut layers, &eval, 24, &mut |_, _| true).unwrap();
        assert_eq!(before.nll.to_bits(), got.nll.to_bits(), "{name}: perplexity before pruning");
        // The shell alone refuses to run.
        assert!(shell.forward(&eval[..8], 1, 8, None).unwrap_err().to_string().contains("read from its file"));
        for (k, o) in options.iter().enumerate() {
            let data = o.score.needs_data().then_some(&calib[..]);
            let want = prune_mlp(&model, data, o, &mut |_, _, _| true).unwrap();
            for spill in [Box::new(MemorySpill::default()) as Box<dyn Spill>, Box::new(FileSpill::new().unwrap())] {
                let (shell, mut layers) = streamed(&cfg, &st, spill);
                let got = prune_in(shell, &mut layers, data, o, &mut |_, _, _| true).unwrap();
                let what = format!("{name}, options {k}");
                assert_eq!(got.kept, want.kept, "{what}");
                assert_eq!(got.kept_layers, want.kept_layers, "{what}");
                assert_eq!(got.kept_heads, want.kept_heads, "{what}");
                assert_eq!(got.model.cfg.to_hf_json(), want.model.cfg.to_hf_json(), "{what}");
                assert_eq!(layers.count(), want.model.layers.len(), "{what}");
                for (l, w) in want.model.layers.iter().enumerate() {
                    same_layers(&layers.layer(l).unwrap(), w, &format!("{what}, layer {l}"));
                }
                let after = perplexity(&want.model, &eval, 24, &mut |_, _| true).unwrap();
                let got = perplexity_layered(&got.model, &mut layers, &eval, 24, &mut |_, _| true).unwrap();
                assert_eq!(after.nll.to_bits(), got.nll.to_bits(), "{what}: perplexity after pruning");
            }
        }
    }
}

#[test]
fn a_spill_file_is_removed_when_dropped() {
    let (cfg, st) = files("llama");
    let model = podar::load_hf_weights(&cfg, vec![Cursor::new(st)]).unwrap();
    let mut spill = FileSpill::new().unwrap();
    spill.put(1, &model.layers[1]).unwrap();
    spill.put(0, &model.layers[0]).unwrap();
    same_layers(&spill.get(1).unwrap(), &model.layers[1], "layer 1");
    same_layers(&spill.get(0).unwrap(), &model.layers[0], "layer 0");
    assert!(spill.get(2).is_err());
    let path = spill.path().to_path_buf();
    assert!(path.exists());
    drop(spill);
    assert!(!path.exists(), "the spill file outlived its spill");
}
