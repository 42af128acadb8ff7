//! A chat template from a stranger's model file, rendered for one message: it must end, with an
//! error or a text, and never run away with time or memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tpl) = std::str::from_utf8(data) else { return };
    let _ = podar::model::tokenizer::render_chat_template(tpl, "<s>".into(), "</s>".into(), "hello");
});
