//! Tokenizers: from a `tokenizer.json`, or rebuilt from GGUF metadata (`tokenizer.ggml.*`) as the
//! equivalent `tokenizer.json`, so export can write it back. Chat templates render with minijinja.

use crate::error::{bail, Error, Result};
use crate::formats::gguf::GgufHeader;
use candle_core::quantized::gguf_file::Value as GValue;
use serde_json::{json, Value};

/// A text tokenizer with the files transformers needs to rebuild it.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The `tokenizer.json` bytes this tokenizer came from (or was rebuilt as).
    pub json: Vec<u8>,
    /// `tokenizer_config.json` (given, or synthesized from GGUF metadata).
    pub config: Value,
}

const MAX_VOCAB: usize = 4_000_000;

/// Bytes of text tokenized at a time ([`Tokenizer::encode_prefix`]).
const PIECE: usize = 1 << 16;

/// Where the first piece of `s` (at most `max` bytes) ends, searched in its second half from the
/// end: before a single line break (`\n` or `\r\n`) between two visible characters, else before a
/// single space between two visible characters, else at a character boundary. Byte-level BPE
/// splits text at both places anyway (the break, or the space with the word after it, starts a new
/// pre-token), so the pieces' ids are the whole text's.
fn piece_end(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let visible = |c: Option<char>| c.is_some_and(|c| !c.is_whitespace());
    // A cut before byte i, where the ASCII separator `sep` starts (so i is a character boundary).
    let cut_before = |i: usize, sep: &str| {
        s[i..].starts_with(sep) && visible(s[..i].chars().next_back()) && visible(s[i + sep.len()..].chars().next())
    };
    let b = s.as_bytes();
    let line = (max / 2..end)
        .rev()
        .find(|&i| (b[i] == b'\n' && cut_before(i, "\n")) || (b[i] == b'\r' && cut_before(i, "\r\n")));
    let word = || (max / 2..end).rev().find(|&i| b[i] == b' ' && cut_before(i, " "));
    line.or_else(word).unwrap_or(end)
}

impl Tokenizer {
    /// From `tokenizer.json` and optionally `tokenizer_config.json`.
    pub fn from_hf(tokenizer_json: &[u8], tokenizer_config: Option<&[u8]>) -> Result<Self> {
        // The tokenizers crate panics (a lost session in the browser) on some malformed JSON inside
        // a component, e.g. a `decoder` cut short; well-formed JSON is checked for first, without
        // building it.
        let text = std::str::from_utf8(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json is not valid JSON: not UTF-8 ({e})")))?;
        serde_json::from_str::<WellFormed>(text)
            .map_err(|e| Error::Tokenizer(format!("tokenizer.json is not valid JSON: {e}")))?;
        // It also panics on a malformed SentencePiece charsmap (`Precompiled` normalizer), which no
        // architecture podar runs uses: refused.
        if tokenizer_json.windows(13).any(|w| w == b"\"Precompiled\"") {
            let v: Value = serde_json::from_slice(tokenizer_json)?;
            if v.get("normalizer").is_some_and(has_precompiled) {
                bail!(Tokenizer, "tokenizer.json uses a `Precompiled` (SentencePiece charsmap) normalizer, which podar does not read");
            }
        }
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("cannot read tokenizer.json: {e}")))?;
        let config = match tokenizer_config {
            Some(b) => serde_json::from_slice(b)?,
            None => json!({}),
        };
        Ok(Self { inner, json: tokenizer_json.to_vec(), config })
    }

    /// Rebuilds the model's tokenizer from GGUF metadata.
    pub fn from_gguf(h: &GgufHeader) -> Result<Self> {
        let (tj, cfg) = gguf_tokenizer_json(h)?;
        let bytes = serde_json::to_vec(&tj)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer(format!("cannot build the tokenizer from GGUF metadata: {e}")))?;
        Ok(Self { inner, json: bytes, config: cfg })
    }

    /// Token ids of `text`; `special` adds the model's special tokens (e.g. BOS) as transformers would.
    /// Long texts are tokenized in pieces (see [`Tokenizer::encode_prefix`]).
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        if special {
            return self.encode_piece(text, true);
        }
        Ok(self.encode_prefix(text, usize::MAX)?.0)
    }

    /// Token ids of the start of `text`, at least `want` of them unless the text holds fewer, and
    /// whether the whole text was read. Texts longer than 64 KiB are tokenized in pieces of up to
    /// that size, cut before a single line break or space between two visible characters (see
    /// `piece_end`): a whole encoding keeps strings and offsets for every token (≈ 150 bytes each;
    /// 3 GB for a 20 MB text), of which only the ids are needed, and a calibration needs only the
    /// first few thousand. Byte-level BPE tokenizers (Llama 3, Qwen, SmolLM, …) give the whole
    /// text's ids; SentencePiece ones that add a leading space may differ by a token at each cut,
    /// as may any tokenizer where a text has no such place to cut (it is then cut anywhere).
    pub fn encode_prefix(&self, text: &str, want: usize) -> Result<(Vec<u32>, bool)> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() && ids.len() < want {
            let cut = piece_end(rest, PIECE);
            ids.extend(self.encode_piece(&rest[..cut], false)?);
            rest = &rest[cut..];
        }
        Ok((ids, rest.is_empty()))
    }

    fn encode_piece(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, special).map_err(|e| Error::Tokenizer(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(format!("cannot decode: {e}")))
    }

    /// Number of tokens including added ones.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.config.get("chat_template").and_then(Value::as_str)
    }

    /// Renders a single user message with the chat template and the generation prompt
    /// ([`render_chat_template`]).
    pub fn apply_chat_template(&self, user: &str) -> Result<String> {
        let Some(tpl) = self.chat_template() else {
            bail!(Input, "this model has no chat template");
        };
        let tok = |k: &str| -> Value {
            match self.config.get(k) {
                Some(Value::String(s)) => json!(s),
                Some(Value::Object(o)) => o.get("content").cloned().unwrap_or(Value::Null),
                _ => Value::Null,
            }
        };
        render_chat_template(tpl, tok("bos_token"), tok("eos_token"), user)
    }
}

/// Renders one user message with a chat template and the generation prompt.
///
/// The template comes from the model file, so it runs with limits: a budget of VM steps
/// (minijinja's fuel; a real template spends a few thousand), a cap on its source and on what it
/// writes, and minijinja's own caps on recursion and on range lengths. A template that loops or
/// recurses without end stops with an error instead of running for ever.
pub fn render_chat_template(tpl: &str, bos_token: Value, eos_token: Value, user: &str) -> Result<String> {
    if tpl.len() > MAX_TEMPLATE {
        bail!(Tokenizer, "chat template of {} bytes is longer than the {MAX_TEMPLATE}-byte cap", tpl.len());
    }
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(TEMPLATE_RECURSION);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", tpl).map_err(|e| Error::Tokenizer(format!("chat template does not parse: {e}")))?;
    let t = env.get_template("chat").map_err(|e| Error::Tokenizer(e.to_string()))?;
    let ctx = minijinja::context! {
        messages => vec![json!({"role": "user", "content": user})],
        add_generation_prompt => true,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    let mut out = Capped(Vec::new(), MAX_TEMPLATE_OUTPUT + user.len());
    let rendered = t.render_captured_to(ctx, &mut out).map(drop);
    match rendered {
        Ok(()) => String::from_utf8(out.0).map_err(|_| Error::Tokenizer("chat template wrote invalid UTF-8".into())),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
            bail!(Tokenizer, "chat template stopped: it ran more than {TEMPLATE_FUEL} steps (a loop without end?)")
        }
        Err(_) if out.0.len() >= out.1 => {
            bail!(Tokenizer, "chat template stopped: it wrote more than {} bytes", out.1)
        }
        Err(e) => bail!(Tokenizer, "chat template failed: {e}"),
    }
}

/// The longest chat template podar runs (real ones are a few kB, the longest tool-use ones ~30 kB).
const MAX_TEMPLATE: usize = 1 << 20;
/// VM steps a chat template may take for one message (minijinja's fuel).
const TEMPLATE_FUEL: u64 = 1_000_000;
/// Nesting a chat template may reach (minijinja counts a loop or `if` as 1, a macro call as 10 or
/// more); below minijinja's 500, for the browser's 1 MiB wasm stack.
const TEMPLATE_RECURSION: usize = 200;
/// What a chat template may write beside the message itself.
const MAX_TEMPLATE_OUTPUT: usize = 1 << 20;

/// A writer that refuses to grow past its cap.
struct Capped(Vec<u8>, usize);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > self.1 {
            self.0.extend_from_slice(&buf[..self.1 - self.0.len()]);
            return Err(std::io::Error::other("chat template output over the cap"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Any JSON value, read to its end (every number parsed, every string checked) and kept nowhere:
/// what `serde::de::IgnoredAny` skips without looking (a number out of range, say) is an error.
struct WellFormed;

impl<'de> serde::Deserialize<'de> for WellFormed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(WellFormedVisitor)
    }
}

struct WellFormedVisitor;

impl<'de> serde::de::Visitor<'de> for WellFormedVisitor {
    type Value = WellFormed;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_unit<E>(self) -> std::result::Result<WellFormed, E> {
        Ok(WellFormed)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> std::result::Result<WellFormed, A::Error> {
        while a.next_element::<WellFormed>()?.is_some() {}
        Ok(WellFormed)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> std::result::Result<WellFormed, A::Error> {
        while a.next_entry::<WellFormed, WellFormed>()?.is_some() {}
        Ok(WellFormed)
    }
}

/// Whether a normalizer (or a sequence of them, at any depth) is a `Precompiled` one.
fn has_precompiled(n: &Value) -> bool {
    n.get("type").and_then(Value::as_str) == Some("Precompiled")
        || n.get("normalizers").and_then(Value::as_array).is_some_and(|a| a.iter().any(has_precompiled))
}

fn string_array<'a>(h: &'a GgufHeader, key: &str) -> Result<Option<Vec<&'a str>>> {
    match h.get(key) {
        None => Ok(None),
        Some(GValue::Array(a)) => {
            if a.len() > MAX_VOCAB {
                bail!(Gguf, "`{key}` has {} entries, more than the {MAX_VOCAB} cap", a.len());
            }
            a.iter()
                .map(|v| match v {
                    GValue::String(s) => Ok(s.as_str()),
                    _ => Err(Error::Gguf(format!("`{key}` holds a non-string"))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some)
        }
        Some(_) => bail!(Gguf, "`{key}` is not an array"),
    }
}

/// Pre-tokenizer regexes of llama.cpp's `tokenizer.ggml.pre` values, as transformers' tokenizer.json has them.
fn pre_tokenizer(pre: &str) -> Value {
    let byte_level =
        |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    match pre {
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "qwen2" | "deepseek-r1-qwen" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        _ => byte_level(true),
    }
}

/// Builds `tokenizer.json` and `tokenizer_config.json` equivalent to the GGUF's tokenizer metadata.
pub fn gguf_tokenizer_json(h: &GgufHeader) -> Result<(Value, Value)> {
    let model = h.get_str("tokenizer.ggml.model").unwrap_or("");
    let Some(tokens) = string_array(h, "tokenizer.ggml.tokens")? else {
        bail!(Gguf, "no tokenizer in this file (`tokenizer.ggml.tokens` missing)");
    };
    let types: Vec<u64> = match h.get("tokenizer.ggml.token_type") {
        Some(GValue::Array(a)) if a.len() == tokens.len() => a
            .iter()
            .map(|v| match v {
                GValue::I32(x) => *x as u64,
                GValue::U32(x) => *x as u64,
                _ => 1,
            })
            .collect(),
        _ => vec![1; tokens.len()],
    };
    let id = |k: &str| h.get_u64(k).filter(|&i| (i as usize) < tokens.len()).map(|i| i as usize);
    let bos = id("tokenizer.ggml.bos_token_id");
    let eos = id("tokenizer.ggml.eos_token_id");
    let unk = id("tokenizer.ggml.unknown_token_id");
    let pad = id("tokenizer.ggml.padding_token_id");
    let add_bos = h.get_bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
    let add_eos = h.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);

    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        // 3 = control, 4 = user-defined (llama.cpp's token types).
        if *ty == 3 || *ty == 4 {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": *ty == 4, "special": *ty == 3}));
        }
    }
    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    let tok_name = |i: Option<usize>| i.map(|i| tokens[i].to_string());

    let mut tj = match model {
        "gpt2" => {
            let merges = string_array(h, "tokenizer.ggml.merges")?.unwrap_or_default();
            let merges: Vec<Value> = merges
                .iter()
                .map(|m| match m.split_once(' ') {
                    Some((a, b)) => Ok(json!([a, b])),
                    None => Err(Error::Gguf(format!("malformed merge `{m}`"))),
                })
                .collect::<Result<_>>()?;
            let pre = h.get_str("tokenizer.ggml.pre").unwrap_or("default");
            json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer(pre),
                "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": tok_name(unk), "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}
            })
        }
        "llama" => {
            // SentencePiece BPE: scores order the merges; byte fallback for unknown bytes.
            let scores: Vec<f64> = match h.get("tokenizer.ggml.scores") {
                Some(GValue::Array(a)) if a.len() == tokens.len() => {
                    a.iter().map(|v| if let GValue::F32(x) = v { *x as f64 } else { 0.0 }).collect()
                }
                _ => bail!(Gguf, "SentencePiece tokenizer without `tokenizer.ggml.scores`"),
            };
            let merges = spm_merges(&tokens, &types, &scores);
            json!({
                "version": "1.0", "truncation": null, "padding": null,
                "added_tokens": added,
                "normalizer": {"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
                "pre_tokenizer": null,
                "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
                "model": {"type": "BPE", "dropout": null, "unk_token": tok_name(unk), "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges}
            })
        }
        other => bail!(Tokenizer, "GGUF tokenizer model `{other}` is not supported (podar reads gpt2 and llama)"),
    };
    if add_bos || add_eos {
        let mut single = vec![];
        let mut special = serde_json::Map::new();
        if let (true, Some(b)) = (add_bos, bos) {
            single.push(json!({"SpecialToken": {"id": tokens[b], "type_id": 0}}));
            special.insert(tokens[b].to_string(), json!({"id": tokens[b], "ids": [b], "tokens": [tokens[b]]}));
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if let (true, Some(e)) = (add_eos, eos) {
            single.push(json!({"SpecialToken": {"id": tokens[e], "type_id": 0}}));
            special.insert(tokens[e].to_string(), json!({"id": tokens[e], "ids": [e], "tokens": [tokens[e]]}));
        }
        let template = json!({"type": "TemplateProcessing", "single": single.clone(),
            "pair": single.iter().cloned().chain([json!({"Sequence": {"id": "B", "type_id": 1}})]).collect::<Vec<_>>(),
            "special_tokens": special});
        tj["post_processor"] = if model == "gpt2" {
            json!({"type": "Sequence", "processors": [tj["post_processor"].clone(), template]})
        } else {
            template
        };
    }
    let mut cfg = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": false,
        "model_max_length": h.get_u64(&format!("{}.context_length", h.get_str("general.architecture").unwrap_or(""))).unwrap_or(8192),
        // The generic fast class: GPT2Tokenizer would replace tokenizer.json's pre-tokenizer in transformers 5.
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    for (k, i) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)] {
        if let Some(i) = i {
            cfg[k] = json!(tokens[i]);
        }
    }
    if let Some(t) = h.get_str("tokenizer.chat_template") {
        cfg["chat_template"] = json!(t);
    }
    Ok((tj, cfg))
}

/// SentencePiece vocabularies carry scores, not merges: derive merges the way transformers does
/// (every split of a piece into two pieces in the vocabulary, ordered by the merged piece's score).
fn spm_merges(tokens: &[&str], types: &[u64], scores: &[f64]) -> Vec<Value> {
    let index: std::collections::HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types[i] != 1 {
            continue;
        }
        for (pos, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(pos);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((scores[i], li, ri, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    merges.into_iter().map(|(_, _, _, l, r)| json!([l, r])).collect()
}

impl Tokenizer {
    /// The token id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// llama.cpp tokenizer metadata (`tokenizer.ggml.*`) equivalent to this byte-level BPE tokenizer.
    pub fn gguf_metadata(&self) -> Result<Vec<(String, GValue)>> {
        let tj: Value = serde_json::from_slice(&self.json)?;
        let model = &tj["model"];
        if model["type"].as_str() != Some("BPE") || model["byte_fallback"].as_bool() == Some(true) {
            bail!(Tokenizer, "GGUF export supports byte-level BPE tokenizers; export --format hf instead");
        }
        let Some(vocab) = model["vocab"].as_object() else {
            bail!(Tokenizer, "tokenizer.json has no vocabulary");
        };
        let added = tj["added_tokens"].as_array().cloned().unwrap_or_default();
        let ids = vocab
            .values()
            .chain(added.iter().map(|a| &a["id"]))
            .filter_map(Value::as_u64)
            .max()
            .map_or(0, |m| m as usize + 1);
        if ids > MAX_VOCAB {
            bail!(Tokenizer, "vocabulary of {ids} tokens exceeds the {MAX_VOCAB} cap");
        }
        let mut tokens = vec![String::new(); ids];
        let mut types = vec![1i32; ids];
        for (t, id) in vocab {
            if let Some(i) = id.as_u64() {
                tokens[i as usize] = t.clone();
            }
        }
        for a in &added {
            if let (Some(i), Some(c)) = (a["id"].as_u64(), a["content"].as_str()) {
                tokens[i as usize] = c.to_string();
                types[i as usize] = if a["special"].as_bool() == Some(true) { 3 } else { 4 };
            }
        }
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[PAD{i}]");
                types[i] = 5;
            }
        }
        let merges: Vec<GValue> = model["merges"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|x| match x {
                        Value::String(s) => Some(s.clone()),
                        Value::Array(p) => Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?)),
                        _ => None,
                    })
                    .map(GValue::String)
                    .collect()
            })
            .unwrap_or_default();
        let pre = tj["pre_tokenizer"].to_string();
        let pre = if pre.contains("\"Digits\"") && pre.contains("\"ByteLevel\"") {
            "smollm"
        } else if pre.contains(r"\\p{N}{1,3}") {
            "llama-bpe"
        } else if pre.contains("\"Split\"") {
            "qwen2"
        } else {
            "default"
        };
        let mut v = vec![
            ("tokenizer.ggml.model".to_string(), GValue::String("gpt2".into())),
            ("tokenizer.ggml.pre".to_string(), GValue::String(pre.into())),
            ("tokenizer.ggml.tokens".to_string(), GValue::Array(tokens.into_iter().map(GValue::String).collect())),
            ("tokenizer.ggml.token_type".to_string(), GValue::Array(types.into_iter().map(GValue::I32).collect())),
            ("tokenizer.ggml.merges".to_string(), GValue::Array(merges)),
        ];
        let special = |k: &str| -> Option<u32> {
            let s = match self.config.get(k)? {
                Value::String(s) => s.clone(),
                Value::Object(o) => o.get("content")?.as_str()?.to_string(),
                _ => return None,
            };
            self.token_to_id(&s)
        };
        for (k, g) in [
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ] {
            if let Some(id) = special(k) {
                v.push((format!("tokenizer.ggml.{g}"), GValue::U32(id)));
            }
        }
        let add_bos = self.config.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        v.push(("tokenizer.ggml.add_bos_token".into(), GValue::Bool(add_bos)));
        if let Some(t) = self.chat_template() {
            v.push(("tokenizer.chat_template".into(), GValue::String(t.to_string())));
        }
        Ok(v)
    }
}
