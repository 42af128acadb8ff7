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
    /// A user's request does not fit (context out of range, bad option…).
    #[error("{0}")]
    Input(String),
    /// A text too short for what was asked of it (the calibration windows).
    #[error("{0}")]
    TextTooShort(String),
    /// A model too large for where it is to be pruned (the page's memory).
    #[error("{0}")]
    TooLarge(String),
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

impl Error {
    /// A stable name for the kind of error, for programs (the JavaScript API's `PodarError.code`);
    /// the message is for people.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Io(_) => "io",
            Error::Gguf(_) | Error::Safetensors(_) | Error::MissingTensor(_) | Error::Shape { .. } | Error::Json(_) => {
                "corrupt-file"
            }
            Error::Config(_) => "bad-config",
            Error::UnsupportedArchitecture(_) => "unsupported-arch",
            Error::Tokenizer(_) => "tokenizer",
            Error::Input(_) => "bad-input",
            Error::TextTooShort(_) => "text-too-short",
            Error::TooLarge(_) => "model-too-large",
            Error::Cancelled => "aborted",
            Error::Candle(_) => "internal",
            Error::Gpu(_) => "gpu",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes the JavaScript API documents (`js/index.d.ts`) are the ones the core gives, and
    /// the two kinds a page must tell apart come from where they happen.
    #[test]
    fn codes_are_the_ones_the_javascript_api_declares() {
        let declared = include_str!("../js/index.d.ts");
        let all = [
            Error::Io(std::io::Error::other("x")),
            Error::Gguf(String::new()),
            Error::Config(String::new()),
            Error::UnsupportedArchitecture(String::new()),
            Error::Tokenizer(String::new()),
            Error::Input(String::new()),
            Error::TextTooShort(String::new()),
            Error::TooLarge(String::new()),
            Error::Cancelled,
            Error::Gpu(String::new()),
        ];
        for e in all {
            assert!(declared.contains(&format!("| '{}'", e.code())), "{} is not in index.d.ts", e.code());
        }
        assert_eq!(crate::model::load::fits_in_page(2_000_000_000).unwrap_err().code(), "model-too-large");
        assert_eq!(crate::prune::calib::windows(&[1, 2, 3], 2, 4).unwrap_err().code(), "text-too-short");
    }
}
