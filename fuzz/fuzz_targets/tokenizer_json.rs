//! A `tokenizer.json` from a stranger: the tokenizer built from it, then text through it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = podar::Tokenizer::from_hf(data, None) else { return };
    if let Ok(ids) = tok.encode("def f(x):\n    return x * 2  # héllo", false) {
        let _ = tok.decode(&ids);
    }
});
