//! The operator's resident memory after a burst. glibc's allocator keeps the memory a burst of
//! reconciles freed (a batch of new requests, a relist) in its arenas, one per thread that met
//! contention, and gives it back to the kernel only from the top of each heap: the resident size
//! stayed at about three times the live heap (docs/performance.md). Two arenas and a periodic
//! `malloc_trim` bring it close to what is live. Other C libraries (musl) return freed memory
//! themselves: there these are no-ops.

use std::time::Duration;

/// How often freed memory is handed back to the kernel: often enough that the resident size
/// follows a burst down within seconds, rarely enough to cost nothing (one pass over the free
/// lists).
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Limits glibc to two arenas. Call it first thing, before any thread is started.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the free pages of every arena back to the kernel.
pub fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim walks the allocator's own free lists under its locks; 0 keeps no pad.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Calls [`release_free_pages`] every [`TRIM_EVERY`], for as long as the runtime runs.
pub fn keep_releasing_free_pages() {
    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            release_free_pages();
        }
    });
}
