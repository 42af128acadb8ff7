//! # podar — prune small language models for your own domain
//!
//! A pure Rust core (bytes and readers in, bytes out) that loads GGUF files and Hugging Face
//! folders, tokenizes exactly like the model's own tokenizer, and computes the logits transformers
//! computes. The same core runs natively (the `podar` CLI) and in the browser (wasm32).
//!
//! ```no_run
//! use std::io::Cursor;
//! let bytes = std::fs::read("models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
//! let bundle = podar::load_gguf(Cursor::new(bytes), &mut |_, _| true).unwrap();
//! let ids = bundle.tokenizer().unwrap().encode("def fibonacci(n):", false).unwrap();
//! let out = podar::greedy(&bundle.model, &ids, 10, &bundle.stop_ids(), &mut |_| true).unwrap();
//! println!("{}", bundle.tokenizer().unwrap().decode(&out).unwrap());
//! ```

pub mod calib;
pub mod config;
pub mod error;
pub mod eval;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod gguf_write;
#[cfg(all(target_arch = "wasm32", feature = "gpu"))]
pub mod gpu;
pub mod job;
pub mod kernels;
pub mod load;
pub mod model;
pub mod prune;
pub mod safetensors;
pub mod source;
pub mod tokenizer;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod zip;

pub use config::{Activation, Arch, LayerType, ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use eval::{perplexity, Perplexity};
pub use generate::greedy;
pub use job::{OutputFormat, Plan};
pub use load::{
    inspect_gguf, inspect_hf, inspect_named, load_gguf, load_hf, load_hf_weights, load_named, pick_files, Bundle,
    HfFiles, Picked, Summary,
};
pub use model::{KvCache, Model};
pub use safetensors::SafetensorsSource;
pub use source::{StorageDtype, TensorSource};
pub use tokenizer::Tokenizer;
