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

// The layers, bottom up: a module imports only from the ones listed before it.
pub mod clock;
pub mod error;
pub mod export;
pub mod formats;
#[cfg(all(target_arch = "wasm32", feature = "gpu"))]
pub mod gpu;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod prune;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
pub use export::job::{OutputFormat, Plan};
pub use formats::safetensors::SafetensorsSource;
pub use formats::source::{StorageDtype, TensorSource};
pub use model::config::{Activation, Arch, LayerType, ModelConfig, RopeScaling};
pub use model::eval::{perplexity, Perplexity};
pub use model::generate::{greedy, greedy_layered};
pub use model::load::{
    inspect_gguf, inspect_hf, inspect_named, load_gguf, load_hf, load_hf_weights, load_named, pick_files, Bundle,
    HfFiles, Picked, Summary,
};
pub use model::tokenizer::Tokenizer;
pub use model::{KvCache, Model};
