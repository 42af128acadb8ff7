//! The real default model (SmolLM2-135M-Instruct, Q4_1 GGUF, fetched by `make test`) against
//! transformers: tokenizer ids, greedy continuations, chat template, logits and perplexity.
//! Golden values come from tests/fixtures/make_smollm2_golden.py.

use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> &'static Value {
    static G: OnceLock<Value> = OnceLock::new();
    G.get_or_init(|| {
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/smollm2/golden.json")).unwrap()).unwrap()
    })
}

fn bundle() -> &'static podar::Bundle {
    static B: OnceLock<podar::Bundle> = OnceLock::new();
    B.get_or_init(|| {
        let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let bytes = std::fs::read(&p)
            .unwrap_or_else(|e| panic!("{}: {e} — `make test` (or `make models`) fetches it", p.display()));
        podar::load_gguf(std::io::Cursor::new(bytes), &mut |_, _| true).unwrap()
    })
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// transformers' GGUF conversion falls back to plain ByteLevel for `tokenizer.ggml.pre = "smollm"`;
/// SmolLM2's own tokenizer.json and llama.cpp split digits first. podar follows the model's own
/// tokenizer (`ids_smollm_pretok`); the two differ only where whitespace runs precede a digit.
#[test]
fn tokenizer_matches_smollm2() {
    let tok = bundle().tokenizer().unwrap();
    for case in golden()["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), ids(&case["ids_smollm_pretok"]), "text {text:?}");
    }
}

/// A long text is tokenized in pieces cut at single line breaks: the ids are the whole text's, and
/// a prefix stops once it has what was asked for.
#[test]
fn long_texts_tokenize_in_pieces_as_a_whole() {
    let tok = bundle().tokenizer().unwrap();
    let presets = root().join("www/presets");
    let mut text = String::new();
    while text.len() < 300_000 {
        for f in ["code-python.txt", "english-vimtutor.txt", "german-vimtutor.txt"] {
            text += &std::fs::read_to_string(presets.join(f)).unwrap();
        }
    }
    let whole = tokenizers::Tokenizer::from_bytes(&tok.json).unwrap();
    let want = whole.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    assert_eq!(tok.encode(&text, false).unwrap(), want);
    // Windows line ends, and one long line (cut before a word), are cut where the ids stay the same.
    for other in [text.replace('\n', "\r\n"), text.replace('\n', " ")] {
        let want = whole.encode(other.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(tok.encode(&other, false).unwrap(), want);
    }
    let (head, complete) = tok.encode_prefix(&text, 8192).unwrap();
    assert!(!complete && head.len() >= 8192 && head.len() < want.len() / 2, "{} of {}", head.len(), want.len());
    assert_eq!(head[..], want[..head.len()]);
}

#[test]
fn tokenizer_matches_on_corpora() {
    let dir = root().join("../shared/corpora");
    if !dir.exists() {
        eprintln!("../shared/corpora absent: corpus tokenization check skipped");
        return;
    }
    let tok = bundle().tokenizer().unwrap();
    for (key, want) in golden()["corpora_ids_sha256"].as_object().unwrap() {
        let (d, f) = key.split_once('/').unwrap();
        let text = std::fs::read_to_string(dir.join(format!("{d}_{f}"))).unwrap();
        let got = tok.encode(&text, false).unwrap();
        let sha = podar::prune::ids_sha256(&got);
        let want = &want["smollm_pretok"];
        assert_eq!(got.len() as u64, want["n"].as_u64().unwrap(), "{key}: token count");
        assert_eq!(sha, want["sha256"].as_str().unwrap(), "{key}: ids differ");
    }
}

fn until_eos(case: &Value) -> Vec<u32> {
    let all = ids(&case["new_ids"]);
    match case["first_eos_index"].as_u64() {
        Some(i) => all[..=i as usize].to_vec(),
        None => all,
    }
}

#[test]
fn greedy_matches_transformers() {
    let b = bundle();
    for case in golden()["greedy"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let p = b.tokenizer().unwrap().encode(prompt, false).unwrap();
        assert_eq!(p, ids(&case["prompt_ids"]));
        let got = podar::greedy(&b.model, &p, 30, &b.stop_ids(), &mut |_| true).unwrap();
        assert_eq!(got, until_eos(case), "prompt {prompt:?}");
    }
}

#[test]
fn chat_template_and_reply_match() {
    let b = bundle();
    let chat = &golden()["chat"];
    let user = chat["messages"][0]["content"].as_str().unwrap();
    let rendered = b.tokenizer().unwrap().apply_chat_template(user).unwrap();
    assert_eq!(rendered, chat["rendered"].as_str().unwrap());
    let p = b.tokenizer().unwrap().encode(&rendered, false).unwrap();
    assert_eq!(p, ids(&chat["prompt_ids"]));
    let got = podar::greedy(&b.model, &p, 30, &b.stop_ids(), &mut |_| true).unwrap();
    assert_eq!(got, until_eos(chat));
}

#[test]
fn last_logits_match() {
    let b = bundle();
    let probe = &golden()["logits_probe"];
    let p = ids(&probe["input_ids"]);
    let logits: Vec<f32> =
        b.model.forward_last(&p, 1, p.len(), None).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for (i, want) in probe["first16"].as_array().unwrap().iter().enumerate() {
        let want = want.as_f64().unwrap() as f32;
        assert!((logits[i] - want).abs() < 1e-3, "logit {i}: {} vs {want}", logits[i]);
    }
    for (id, want) in ids(&probe["top5_ids"]).iter().zip(probe["top5_values"].as_array().unwrap()) {
        let want = want.as_f64().unwrap() as f32;
        assert!((logits[*id as usize] - want).abs() < 1e-3);
    }
}

#[test]
fn perplexity_matches_transformers() {
    let dir = root().join("../shared/corpora");
    if !dir.exists() {
        eprintln!("../shared/corpora absent: perplexity check skipped");
        return;
    }
    let b = bundle();
    for (domain, want) in golden()["perplexity"].as_object().unwrap() {
        let bytes = std::fs::read(dir.join(format!("{domain}_eval.ids.json"))).unwrap();
        let ids: Vec<u32> = serde_json::from_slice(&bytes).unwrap();
        let r = podar::perplexity(&b.model, &ids, 512, &mut |_, _| true).unwrap();
        let want = want["ppl"].as_f64().unwrap();
        let rel = (r.perplexity / want - 1.0).abs();
        eprintln!("{domain}: podar {:.4}, transformers {want:.4} ({:.3}%)", r.perplexity, rel * 100.0);
        assert_eq!(r.predictions, 8176);
        assert!(rel < 0.005, "{domain}: {} vs {want}", r.perplexity);
    }
}
