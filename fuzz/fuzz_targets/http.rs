//! An HTTP request from a stranger, as `podar serve` reads it: the request head, its Range and its
//! Host. The server's module is plain std, so it is compiled in here as it is.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/cli/serve.rs"]
mod serve;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serve::parse_request(&mut std::io::Cursor::new(data)) else { return };
    for len in [0, 1, 1000, u64::MAX] {
        if let Ok(Some((a, b))) = serve::byte_range(req.range.as_deref(), len) {
            assert!(a <= b && b < len, "range {a}-{b} of {len}");
        }
    }
    if let Some(h) = &req.host {
        let opts = serve::ServeOptions {
            root: ".".into(),
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            port: 8080,
            allow_origins: vec![],
            allow_hosts: vec![],
        };
        let _ = serve::host_allowed(h, &opts, 8080);
    }
    let _ = serve::resolve(std::path::Path::new("/nonexistent-podar-root"), &req.target);
});
