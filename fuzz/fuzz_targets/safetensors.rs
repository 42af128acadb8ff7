//! A safetensors file from a stranger: header and offsets, then every tensor read as f32.
#![no_main]
use libfuzzer_sys::fuzz_target;
use podar::TensorSource;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(mut src) = podar::SafetensorsSource::new(vec![Cursor::new(data)]) else { return };
    for name in src.names() {
        let _ = src.shape(&name);
        let _ = src.load(&name);
    }
});
