//! Inputs the fuzz targets (`fuzz/`, `make fuzz`) found to crash podar, each kept here with the
//! fix's expectation: a clear error, never a panic (in the browser a panic is a lost session).
//! Written once, run natively and in Chromium.

use wasm_bindgen_test::wasm_bindgen_test;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_dedicated_worker);

const TOKENIZER: &[u8] = include_bytes!("fixtures/tiny/llama/tokenizer.json");

/// tokenizer_json: a `tokenizer.json` whose `decoder` is cut short inside (the tokenizers crate
/// unwraps its decoder's parse and panicked).
#[wasm_bindgen_test(unsupported = test)]
fn tokenizer_json_with_a_decoder_cut_short() {
    let input = include_bytes!("fixtures/fuzz/tokenizer-json-decoder-cut-short.json");
    let err = podar::Tokenizer::from_hf(input, None).err().expect("refused");
    assert!(err.to_string().contains("not valid JSON"), "{err}");
}

/// tokenizer_json: invalid UTF-8 inside a string of the `decoder` (the same unwrap; checking the
/// JSON by skipping its values does not look at their UTF-8).
#[wasm_bindgen_test(unsupported = test)]
fn tokenizer_json_with_invalid_utf8() {
    let input = include_bytes!("fixtures/fuzz/tokenizer-json-invalid-utf8.json");
    let err = podar::Tokenizer::from_hf(input, None).err().expect("refused");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

/// tokenizer_json: a number out of f64's range in the vocabulary (the same unwrap; skipping values
/// does not parse their numbers).
#[wasm_bindgen_test(unsupported = test)]
fn tokenizer_json_with_a_number_out_of_range() {
    let input = include_bytes!("fixtures/fuzz/tokenizer-json-number-out-of-range.json");
    let err = podar::Tokenizer::from_hf(input, None).err().expect("refused");
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// Found by reading the tokenizers crate after the above: a `Precompiled` normalizer whose charsmap
/// is missing or malformed also panicked inside it, alone or inside a sequence.
#[wasm_bindgen_test(unsupported = test)]
fn tokenizer_json_with_a_precompiled_normalizer() {
    let mut v: serde_json::Value = serde_json::from_slice(TOKENIZER).unwrap();
    for n in [
        serde_json::json!({"type": "Precompiled"}),
        serde_json::json!({"type": "Precompiled", "precompiled_charsmap": "not base64!"}),
        serde_json::json!({"type": "Sequence", "normalizers": [{"type": "Precompiled", "precompiled_charsmap": "AAAA"}]}),
    ] {
        v["normalizer"] = n;
        let err = podar::Tokenizer::from_hf(v.to_string().as_bytes(), None).err().expect("refused");
        assert!(err.to_string().contains("Precompiled"), "{err}");
    }
    // A token spelled "Precompiled" is no normalizer.
    v["normalizer"] = serde_json::Value::Null;
    v["added_tokens"] = serde_json::json!([{"id": 300, "content": "\"Precompiled\"", "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": true}]);
    assert!(podar::Tokenizer::from_hf(v.to_string().as_bytes(), None).is_ok());
}
