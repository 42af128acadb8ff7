//! Models whose layers are read from their file as they are used (`podar::model::Streamed`): the
//! same prune and the same perplexities as the model held in memory, bit for bit, for every family,
//! with recovery, error correction, heads and layers dropped, and static scores. With the embedding
//! and LM head left in the file too, the same prune bit for bit, the same exported files, and
//! perplexities equal within rounding (the LM head's log-sum-exp is taken by blocks of the
//! vocabulary). (Native: the spill file and the fixtures are on disk.)
#![cfg(not(target_arch = "wasm32"))]

mod common;

use podar::export::gguf::{write_gguf, GgufDtype};
use podar::export::hf::{write_safetensors, write_weights};
use podar::formats::safetensors::SafetensorsSource;
use podar::formats::source::StorageDtype;
use podar::formats::zip::FileSink;
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

/// The model shaped `cfg` with its layers streamed from `st`, and its tables too if `tables`.
fn streamed(
    cfg: &[u8],
    st: &[u8],
    spill: Box<dyn Spill>,
    tables: bool,
) -> (Model, Streamed<SafetensorsSource<Cursor<Vec<u8>>>>) {
    let cfg = ModelConfig::from_hf_json(cfg).unwrap();
    let mut src = SafetensorsSource::new(vec![Cursor::new(st.to_vec())]).unwrap();
    let src_ref = &mut src as &mut dyn TensorSource;
    if tables {
        let shell = Model::load_shell_without_tables(cfg.clone(), src_ref).unwrap();
        (shell, Streamed::new(&cfg, src, spill).tables_from_source())
    } else {
        let shell = Model::load_shell(cfg.clone(), src_ref).unwrap();
        (shell, Streamed::new(&cfg, src, spill))
    }
}

/// The one `model.safetensors` that [`write_weights`] writes of `model` with its layers in `layers`.
fn write_file_of(model: &Model, layers: &mut dyn LayerStore, out: &mut Vec<u8>) {
    struct One<'a>(&'a mut Vec<u8>, usize);
    impl FileSink for One<'_> {
        fn file(
            &mut self,
            name: &str,
            body: &mut dyn FnMut(&mut dyn std::io::Write) -> podar::Result<()>,
        ) -> podar::Result<()> {
            assert_eq!(name, "model.safetensors");
            self.1 += 1;
            body(&mut *self.0)
        }
    }
    let mut one = One(out, 0);
    write_weights(model, layers, StorageDtype::BF16, u64::MAX, &mut one).unwrap();
    assert_eq!(one.1, 1);
}

/// Equal bit for bit where the tables are in memory, within rounding where they are read by blocks.
fn same_nll(a: f64, b: f64, tables: bool, what: &str) {
    if tables {
        assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{what}: {a} against {b}");
    } else {
        assert_eq!(a.to_bits(), b.to_bits(), "{what}");
    }
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

/// Greedy generation from a store gives the tokens of the model held whole (prompts of one token
/// and of several; as many new tokens as asked, none of them a stop).
fn same_generation(model: &Model, held: &mut dyn LayerStore, shell: &Model, layers: &mut dyn LayerStore, what: &str) {
    for prompt in [&ids(1)[..], &ids(9)[..]] {
        let want = podar::greedy(model, prompt, 6, &[], &mut |_| true).unwrap();
        assert_eq!(want.len(), 6, "{what}");
        assert_eq!(podar::greedy_layered(model, held, prompt, 6, &[], &mut |_| true).unwrap(), want, "{what}: held");
        let got = podar::greedy_layered(shell, layers, prompt, 6, &[], &mut |_| true).unwrap();
        assert_eq!(got, want, "{what}: streamed generation, prompt of {}", prompt.len());
    }
    // The shell alone refuses to generate.
    assert!(podar::greedy(shell, &ids(3), 2, &[], &mut |_| true)
        .unwrap_err()
        .to_string()
        .contains("read from its file"));
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
        let before = perplexity(&model, &eval, 24, &mut |_, _| true).unwrap();
        for tables in [false, true] {
            let (shell, mut layers) = streamed(&cfg, &st, Box::new(FileSpill::new().unwrap()), tables);
            let got = perplexity_layered(&shell, &mut layers, &eval, 24, &mut |_, _| true).unwrap();
            same_nll(before.nll, got.nll, tables, &format!("{name}, tables {tables}: perplexity before pruning"));
            same_generation(
                &model,
                &mut model.layers.clone(),
                &shell,
                &mut layers,
                &format!("{name}, tables {tables}"),
            );
            // The shell alone refuses to run.
            assert!(shell.forward(&eval[..8], 1, 8, None).unwrap_err().to_string().contains("read from its file"));
        }
        for (k, o) in options.iter().enumerate() {
            let data = o.score.needs_data().then_some(&calib[..]);
            let want = prune_mlp(&model, data, o, &mut |_, _, _| true).unwrap();
            let spills = || [Box::new(MemorySpill::default()) as Box<dyn Spill>, Box::new(FileSpill::new().unwrap())];
            for (spill, tables) in
                spills().into_iter().zip([false, true]).chain(spills().into_iter().zip([true, false]))
            {
                let (shell, mut layers) = streamed(&cfg, &st, spill, tables);
                let got = prune_in(shell, &mut layers, data, o, &mut |_, _, _| true).unwrap();
                let what = format!("{name}, options {k}, tables {tables}");
                assert_eq!(got.kept, want.kept, "{what}");
                assert_eq!(got.kept_layers, want.kept_layers, "{what}");
                assert_eq!(got.kept_heads, want.kept_heads, "{what}");
                assert_eq!(got.model.cfg.to_hf_json(), want.model.cfg.to_hf_json(), "{what}");
                assert_eq!(layers.count(), want.model.layers.len(), "{what}");
                for (l, w) in want.model.layers.iter().enumerate() {
                    same_layers(&layers.layer(l).unwrap(), w, &format!("{what}, layer {l}"));
                }
                let after = perplexity(&want.model, &eval, 24, &mut |_, _| true).unwrap();
                let ppl = perplexity_layered(&got.model, &mut layers, &eval, 24, &mut |_, _| true).unwrap();
                same_nll(after.nll, ppl.nll, tables, &format!("{what}: perplexity after pruning"));
                same_generation(&want.model, &mut want.model.layers.clone(), &got.model, &mut layers, &what);
                // The files written from the store are those written from the model in memory.
                let (mut a, mut b) = (Vec::new(), Vec::new());
                write_gguf(&want.model, &mut want.model.layers.clone(), &[], GgufDtype::Q8_0, &mut a).unwrap();
                write_gguf(&got.model, &mut layers, &[], GgufDtype::Q8_0, &mut b).unwrap();
                assert!(a == b, "{what}: the GGUF differs");
                let (mut a, mut b) = (Vec::new(), Vec::new());
                write_safetensors(&want.model, StorageDtype::BF16, &mut a).unwrap();
                write_file_of(&got.model, &mut layers, &mut b);
                assert!(a == b, "{what}: the safetensors differ");
            }
        }
    }
}

#[test]
fn a_spill_file_leaves_nothing_behind() {
    let (cfg, st) = files("llama");
    let model = podar::load_hf_weights(&cfg, vec![Cursor::new(st)]).unwrap();
    let mut spill = FileSpill::new().unwrap();
    spill.put(1, &model.layers[1]).unwrap();
    spill.put(0, &model.layers[0]).unwrap();
    same_layers(&spill.get(1).unwrap(), &model.layers[1], "layer 1");
    same_layers(&spill.get(0).unwrap(), &model.layers[0], "layer 0");
    assert!(spill.get(2).is_err());
    let path = spill.path().to_path_buf();
    // On Unix the file has no name from the start: a killed job leaves nothing behind.
    assert_eq!(path.exists(), cfg!(not(unix)));
    drop(spill);
    assert!(!path.exists(), "the spill file outlived its spill");
}
