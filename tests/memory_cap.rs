//! The heap's cap (podar::memory), alone in its test binary: a cap applies to every thread, and
//! other tests' allocations would fail under it.

#[test]
fn an_allocation_past_the_cap_is_refused_and_noted() {
    let live = podar::memory::live();
    podar::memory::set_cap(Some(live + (1 << 20)));
    let mut v: Vec<u8> = Vec::new();
    let refused = v.try_reserve_exact(2 << 20).is_err();
    let noted = podar::memory::failed_allocation();
    let mut w: Vec<u8> = Vec::new();
    let small = w.try_reserve_exact(512 << 10).is_ok();
    drop(w);
    podar::memory::set_cap(None);
    assert!(refused, "2 MiB past a cap 1 MiB above the heap was allocated");
    assert_eq!(noted, 2 << 20);
    assert!(small, "512 KiB under the cap was refused");
    assert!(v.try_reserve_exact(2 << 20).is_ok(), "the cap stayed after it was lifted");
}
