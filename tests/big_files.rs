//! Files past 4 GiB: a GGUF of Llama-3.2-1B's shapes in f32 (4.9 GB) written from a streamed model
//! and read back. The weights are zeros (norms ones), and the file is written sparse (runs of zeros
//! are skipped over), so the test needs neither 5 GB of disk nor of memory. (Native: files.)
#![cfg(not(target_arch = "wasm32"))]

use podar::export::gguf::{write_gguf, GgufDtype};
use podar::formats::gguf::GgufFile;
use podar::formats::source::StorageDtype;
use podar::model::store::MemorySpill;
use podar::model::transformer::expected_tensors;
use podar::model::Streamed;
use podar::{Model, ModelConfig, TensorSource};
use std::io::{Seek, SeekFrom, Write};

/// Zeros of every tensor of `cfg`, ones for the norms.
struct Zeros(Vec<(String, Vec<usize>)>);

impl TensorSource for Zeros {
    fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone())
    }
    fn storage_dtype(&self, _: &str) -> Option<StorageDtype> {
        Some(StorageDtype::F32)
    }
    fn load(&mut self, name: &str) -> podar::Result<candle_core::Tensor> {
        let shape = self.shape(name).ok_or_else(|| podar::Error::MissingTensor(name.into()))?;
        let value: f32 = if name.ends_with("norm.weight") { 1.0 } else { 0.0 };
        Ok(candle_core::Tensor::full(value, shape, &candle_core::Device::Cpu)?)
    }
    fn load_rows(&mut self, name: &str, rows: std::ops::Range<usize>) -> podar::Result<candle_core::Tensor> {
        let mut shape = self.shape(name).ok_or_else(|| podar::Error::MissingTensor(name.into()))?;
        shape[0] = rows.len();
        Ok(candle_core::Tensor::zeros(shape, candle_core::DType::F32, &candle_core::Device::Cpu)?)
    }
    fn load_raw(&mut self, name: &str) -> podar::Result<Vec<u8>> {
        let t = self.load(name)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(t.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
}

/// A file written with holes where the data is zeros.
struct Sparse(std::fs::File, u64);

impl Write for Sparse {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.iter().any(|&b| b != 0) {
            self.0.seek(SeekFrom::Start(self.1))?;
            self.0.write_all(buf)?;
        }
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.set_len(self.1)
    }
}

#[test]
fn a_gguf_past_4_gib_is_written_and_read_back() {
    let cfg = ModelConfig::from_hf_json(
        br#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
        "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": true, "vocab_size": 128256}"#,
    )
    .unwrap();
    let mut src = Zeros(expected_tensors(&cfg));
    let shell = Model::load_shell_without_tables(cfg.clone(), &mut src).unwrap();
    let mut layers = Streamed::new(&cfg, src, Box::<MemorySpill>::default()).tables_from_source();
    let path = std::env::temp_dir().join(format!("podar-big-{}.gguf", std::process::id()));
    let mut w = Sparse(std::fs::File::create(&path).unwrap(), 0);
    write_gguf(&shell, &mut layers, &[], GgufDtype::F32, &mut w).unwrap();
    w.flush().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    let mut back = GgufFile::open(std::fs::File::open(&path).unwrap()).unwrap();
    let c = &back.header().content;
    let last = c.tensor_infos.values().map(|t| t.offset).max().unwrap();
    let (data, count) = (c.tensor_data_offset, c.tensor_infos.len());
    // The last layer's norms lie past 4 GiB; they read back as written.
    let norm = back.tensor("blk.15.ffn_norm.weight").unwrap().to_vec1::<f32>().unwrap();
    let out = back.tensor("output_norm.weight").unwrap().to_vec1::<f32>().unwrap();
    let at = back.header().content.tensor_infos["blk.15.ffn_norm.weight"].offset + data;
    std::fs::remove_file(&path).unwrap();
    assert!(len > 1 << 32 && data + last > 1 << 32 && at > 1 << 32, "{len} bytes, last tensor at {last}");
    assert_eq!(count, 16 * 9 + 2, "tensors: 9 a layer, the embedding, the final norm");
    assert!(norm.len() == 2048 && norm.iter().all(|&x| x == 1.0));
    assert!(out.len() == 2048 && out.iter().all(|&x| x == 1.0));
}
