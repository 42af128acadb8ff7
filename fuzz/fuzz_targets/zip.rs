//! A zip from a stranger, read back as podar reads its own downloads.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = podar::formats::zip::read_stored(data);
});
