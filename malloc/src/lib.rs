//! The control plane's allocator settings (mimalloc is its global allocator, `engine/src/main.rs`).
//!
//! mimalloc 3 keeps the memory a thread frees for a second (`purge_delay`, 1,000 ms) before it
//! gives it back to the system. Under a steady load of reports that kept 20 to 30 MiB more
//! resident at 1,000 machines than the control plane was using; 10 ms (mimalloc 2's default)
//! cost nothing measurable per report (docs/benchmarks.md, "A lean control plane").
//!
//! This is the workspace's one crate with `unsafe` code: the two calls into mimalloc's C API
//! below. Every other crate has `unsafe_code = "forbid"`.

/// `mi_option_purge_delay`'s place in mimalloc 3's `mi_option_t` (libmimalloc-sys names only the
/// older options); the test below checks that it is the option whose default is 1,000 ms.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds mimalloc waits before it gives freed memory back to the system.
pub const PURGE_DELAY_MS: i64 = 10;

/// Sets mimalloc's purge delay to [`PURGE_DELAY_MS`], unless `MIMALLOC_PURGE_DELAY` is set (an
/// operator's choice wins). Call it first thing in `main`, before any thread starts.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores one integer in mimalloc's option table; PURGE_DELAY is
        // below `_mi_option_last`, and no other thread reads the table yet.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
}

/// The purge delay in effect, in milliseconds.
pub fn purge_delay_ms() -> i64 {
    // SAFETY: `mi_option_get` reads one integer from mimalloc's option table; PURGE_DELAY is a
    // valid option.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tune_sets_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert_eq!(
            super::purge_delay_ms(),
            1000,
            "mimalloc 3's default purge delay: is option 15 still purge_delay?"
        );
        super::tune();
        assert_eq!(super::purge_delay_ms(), super::PURGE_DELAY_MS);
    }
}
