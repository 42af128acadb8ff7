//! A GGUF file from a stranger: header, metadata, tensor table and layout checks, then the model
//! config from its metadata and every tensor under transformers' names (dequantized).
#![no_main]
use libfuzzer_sys::fuzz_target;
use podar::TensorSource;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = podar::formats::gguf::GgufFile::open(Cursor::new(data)) else { return };
    let _ = podar::model::gguf::config_of(file.header());
    let Ok((mut src, _cfg)) = podar::model::gguf::GgufSource::new(Cursor::new(data)) else { return };
    for name in src.names() {
        let _ = src.shape(&name);
        let _ = src.load(&name);
    }
});
