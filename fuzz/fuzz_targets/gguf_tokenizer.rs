//! GGUF tokenizer metadata from a stranger: the tokenizer rebuilt from it, then text through it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = podar::formats::gguf::GgufHeader::read(&mut Cursor::new(data)) else { return };
    let Ok(tok) = podar::Tokenizer::from_gguf(&h) else { return };
    if let Ok(ids) = tok.encode("def f(x):\n    return x * 2  # héllo", false) {
        let _ = tok.decode(&ids);
    }
    let _ = tok.apply_chat_template("hi");
});
