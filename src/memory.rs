//! The heap, counted: podar's global allocator is the system's, with the bytes in use, their peak,
//! and an optional cap on them (a test knob: it makes the engine run out of memory far below the
//! machine's or the browser's limit, so that what happens then can be tested on a small model).
//!
//! An allocation that fails, from the cap or because the system has no more memory, is noted
//! ([`failed_allocation`]) before Rust aborts: in the page the abort is a bare WebAssembly trap,
//! and the note is what tells out-of-memory apart from a bug.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static CAP: AtomicUsize = AtomicUsize::new(usize::MAX);
static FAILED: AtomicUsize = AtomicUsize::new(0);
/// A `fn(usize)` told of each failed allocation, or 0.
static HOOK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counted and capped.
pub struct Counted;

impl Counted {
    /// Counts `size` more bytes in use, or refuses them where they would pass the cap.
    fn take(size: usize) -> bool {
        // One atomic add on the way that succeeds (atomics wrap, they do not panic); a sum past
        // usize::MAX, possible on wasm32, is refused like one past the cap.
        let before = LIVE.fetch_add(size, Relaxed);
        match before.checked_add(size).filter(|&n| n <= CAP.load(Relaxed)) {
            Some(after) => {
                PEAK.fetch_max(after, Relaxed);
                true
            }
            None => {
                LIVE.fetch_sub(size, Relaxed);
                false
            }
        }
    }

    fn failed(size: usize) -> *mut u8 {
        FAILED.store(size.max(1), Relaxed);
        let hook = HOOK.load(Relaxed);
        if hook != 0 {
            // SAFETY: HOOK holds only values stored by `on_failed_allocation`, each a `fn(usize)`.
            let hook: fn(usize) = unsafe { std::mem::transmute::<usize, fn(usize)>(hook) };
            hook(size);
        }
        std::ptr::null_mut()
    }

    fn give(size: usize) {
        LIVE.fetch_sub(size, Relaxed);
    }

    /// `alloc()` for `size` bytes, counted, refused past the cap, and noted when it fails.
    fn counted(size: usize, alloc: impl FnOnce() -> *mut u8) -> *mut u8 {
        if !Self::take(size) {
            return Self::failed(size);
        }
        let p = alloc();
        if p.is_null() {
            Self::give(size);
            return Self::failed(size);
        }
        p
    }
}

// SAFETY: every call goes to the system allocator with the caller's layout; only the counts are added.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::counted(layout.size(), || System.alloc(layout))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::counted(layout.size(), || System.alloc_zeroed(layout))
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        Self::give(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Self::take(new_size - old) {
            return Self::failed(new_size);
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > old {
                Self::give(new_size - old);
            }
            return Self::failed(new_size);
        }
        if new_size < old {
            Self::give(old - new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counted = Counted;

/// Bytes allocated and not yet freed.
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// The most bytes in use at once since the start, or since [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}

/// Starts the peak again from the bytes in use now.
pub fn reset_peak() {
    PEAK.store(live(), Relaxed);
}

/// Refuses allocations that would take the bytes in use past `bytes` (`None`: no cap).
pub fn set_cap(bytes: Option<usize>) {
    CAP.store(bytes.unwrap_or(usize::MAX), Relaxed);
}

/// The size of the last allocation that failed (0 if none has), for telling out-of-memory apart.
pub fn failed_allocation() -> usize {
    FAILED.load(Relaxed)
}

/// Forgets the failed allocation noted (before a call whose failures are to be told apart).
pub fn clear_failed_allocation() {
    FAILED.store(0, Relaxed);
}

/// Calls `hook` with the size of every allocation that fails, on the thread it fails on, before
/// Rust aborts there. In the page a worker thread that aborts stops its engine without a word; the
/// hook is how it says why. `hook` must not allocate.
pub fn on_failed_allocation(hook: fn(usize)) {
    HOOK.store(hook as usize, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocations_and_their_peak() {
        // Other tests allocate on other threads meanwhile: only lower bounds hold.
        reset_peak();
        let v = vec![0u8; 64 << 20];
        assert!(live() >= 64 << 20);
        assert!(peak() >= 64 << 20);
        drop(v);
        assert!(peak() >= 64 << 20);
    }
}
