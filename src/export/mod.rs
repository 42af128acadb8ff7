//! Writing a (pruned) model back: a Hugging Face folder, a GGUF file, and the job around them (the
//! plan shown before any work, the report and the model card), into any `FileSink` — a folder on
//! disk, or a zip streamed to the browser.
//!
//! - [`hf`]: config.json, model.safetensors (shards and their index past 2 GB) and tokenizer files
//!   from the model itself;
//! - [`gguf`]: llama.cpp's keys, names and layouts, streamed one tensor at a time;
//! - [`job`]: output formats, the plan, the report and model card.
//!
//! May import: `error`, `kernels`, `formats`, `model`, `prune` (the job's options).

pub mod gguf;
pub mod hf;
pub mod job;
