//! The model: its config, tokenizer and weights loaded from any supported format, the forward pass
//! (one decoder for Llama, Mistral, Qwen2/3 and Gemma 2/3), perplexity and greedy generation.
//!
//! - [`config`]: one config struct for every family, from `config.json` and back;
//! - [`gguf`]: what a GGUF file means as a model (config from llama.cpp's keys, transformers' names);
//! - [`tokenizer`]: the model's own tokenizer and chat template;
//! - [`load`]: whole models from readers (a GGUF file, a Hugging Face folder's files);
//! - [`layer`]: one block's weights, their names and shapes;
//! - [`transformer`]: the forward pass, layer by layer;
//! - [`store`]: where the layers live while a job runs: in memory, or read from the source when used;
//! - [`eval`], [`generate`]: perplexity and greedy generation.
//!
//! To add an architecture: its keys in `config`, its tensor names in `gguf`, its layer in
//! `transformer`. May import: `error`, `kernels`, `formats`.

pub mod config;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod layer;
pub mod load;
pub mod store;
pub mod tables;
pub mod tokenizer;
pub mod transformer;

pub use store::{LayerStore, Streamed};
pub use transformer::{KvCache, Layer, LayerTrace, Linear, Model};
