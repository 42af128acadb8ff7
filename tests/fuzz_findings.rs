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

/// gguf: a header whose `general.alignment` is 0 (candle's reader divides the data's offset by it
/// and panicked), as the fuzzer found it and written by hand, in each integer type and both header
/// versions. As in llama.cpp, an alignment is a u32 and a power of two; other ones are refused too.
#[wasm_bindgen_test(unsupported = test)]
fn gguf_with_an_alignment_of_zero() {
    use podar::formats::gguf::GgufFile;
    use std::io::Cursor;
    let found = include_bytes!("fixtures/fuzz/gguf-zero-alignment.gguf");
    let err = GgufFile::open(Cursor::new(&found[..])).err().expect("refused");
    assert!(err.to_string().contains("`general.alignment` is 0"), "{err}");
    // version, the type of the value (u8, i8, u16, i16, u32, i32, u64, i64) and its size
    for (version, ty, size) in
        [(3u32, 0u32, 1), (3, 1, 1), (3, 2, 2), (3, 3, 2), (3, 4, 4), (2, 5, 4), (1, 4, 4), (3, 10, 8), (3, 11, 8)]
    {
        let wide = |n: u64, out: &mut Vec<u8>| {
            if version == 1 {
                out.extend((n as u32).to_le_bytes())
            } else {
                out.extend(n.to_le_bytes())
            }
        };
        let file = |align: u8| {
            let mut f = b"GGUF".to_vec();
            f.extend(version.to_le_bytes());
            wide(0, &mut f); // tensors
            wide(2, &mut f); // metadata entries
            wide(5, &mut f);
            f.extend(b"other");
            f.extend(8u32.to_le_bytes()); // a string
            wide(3, &mut f);
            f.extend(b"abc");
            wide(17, &mut f);
            f.extend(b"general.alignment");
            f.extend(ty.to_le_bytes());
            f.push(align);
            f.extend(std::iter::repeat_n(0, size - 1));
            f
        };
        let err = GgufFile::open(Cursor::new(file(0))).err().expect("refused");
        assert!(err.to_string().contains("`general.alignment` is 0"), "v{version} type {ty}: {err}");
        match GgufFile::open(Cursor::new(file(32))) {
            Ok(_) => assert_eq!(ty, 4, "v{version} type {ty} accepted"),
            Err(e) => {
                assert!(ty != 4 && e.to_string().contains("not a power of two as a u32"), "v{version} type {ty}: {e}")
            }
        }
        if ty == 4 {
            let err = GgufFile::open(Cursor::new(file(48))).err().expect("48 refused");
            assert!(err.to_string().contains("is U32(48), not a power of two"), "{err}");
        }
    }
}
