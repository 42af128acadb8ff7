//! A `config.json` from a stranger, for every supported family: parsed, checked, and written back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cfg) = podar::ModelConfig::from_hf_json(data) {
        let _ = cfg.parameter_count();
        let back = cfg.to_hf_json().to_string();
        assert!(podar::ModelConfig::from_hf_json(back.as_bytes()).is_ok(), "a config podar wrote does not read back");
    }
});
