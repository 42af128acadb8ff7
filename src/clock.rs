//! Seconds on a clock that runs natively and in the browser (where `std::time::Instant` panics),
//! for the time a job's stages take.

/// Seconds since some fixed moment: only differences mean anything.
#[cfg(not(target_arch = "wasm32"))]
pub fn seconds() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
}

/// Seconds since some fixed moment: only differences mean anything.
#[cfg(target_arch = "wasm32")]
pub fn seconds() -> f64 {
    js_sys::Date::now() / 1e3
}
