//! The one error type of podar. Every message is written for the person who handed us the file or text.

/// Everything that can go wrong in podar's core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing bytes failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A GGUF file is malformed, truncated or holds something podar cannot read.
    #[error("GGUF: {0}")]
    Gguf(String),
    /// A safetensors file is malformed or truncated.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// `config.json` (or the GGUF metadata standing in for it) is missing a key or disagrees with itself.
    #[error("config: {0}")]
    Config(String),
    /// An architecture podar does not run.
    #[error("unsupported architecture `{0}` (supported: llama, mistral, qwen2, qwen3, gemma2, gemma3)")]
    UnsupportedArchitecture(String),
    /// A tensor the architecture needs is absent.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the config.
    #[error("tensor `{name}` has shape {got:?}, the config implies {expected:?}")]
    Shape { name: String, expected: Vec<usize>, got: Vec<usize> },
    /// The tokenizer could not be built or could not encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A user's request does not fit (text too short, context out of range, bad option…).
    #[error("{0}")]
    Input(String),
    /// The computation was cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// An error from the tensor library.
    #[error("tensor error: {}", first_line(.0))]
    Candle(#[from] candle_core::Error),
    /// The WebGPU device failed (the page falls back to the CPU).
    #[error("WebGPU: {0}")]
    Gpu(String),
    /// Malformed JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The message of a candle error without the backtrace candle appends when RUST_BACKTRACE is set.
pub fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Turns a progress callback's answer (`true`: go on) into `Err(Cancelled)` when it asks to stop.
pub fn go_on(keep_going: bool) -> Result<()> {
    if keep_going {
        Ok(())
    } else {
        Err(Error::Cancelled)
    }
}

/// podar's result type.
pub type Result<T> = std::result::Result<T, Error>;

macro_rules! bail {
    ($variant:ident, $($arg:tt)*) => {
        return Err($crate::error::Error::$variant(format!($($arg)*)))
    };
}
pub(crate) use bail;
