//! Bytes ⇄ tensors: the file formats podar reads and writes, with no idea what a model is.
//!
//! - [`gguf`]: a GGUF file's header (metadata, tensor directory) and its tensors by llama.cpp name,
//!   dequantized to f32;
//! - [`safetensors`]: headers with caps and checked offsets, tensors from one or many shards;
//! - [`source`]: the [`source::TensorSource`] trait every weight source implements, and storage dtypes;
//! - [`zip`]: the streaming zip writer and reader behind the page's download.
//!
//! May import: `error`, `kernels`. Nothing above (no model, no pruning).

pub mod gguf;
pub mod safetensors;
pub mod source;
pub mod zip;
