//! The cap on glibc's malloc arenas, set before anything else runs.
//!
//! glibc gives a thread that finds the arenas in use one of its own, up to 8 per core,
//! and an arena keeps the memory freed into it: a node's runtime workers, blocking-pool
//! threads and store writers each end up with one, and the process keeps the peak of
//! each. `docs/decisions/177-malloc-arenas.md` has the measurements behind [`ARENA_MAX`].

/// Most malloc arenas: the main one and one more. Measured in `bench swarm` (per-node
/// peak RSS) and `bench bulk`/`append` (throughput unchanged within run-to-run noise).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Caps the arenas at [`ARENA_MAX`], unless the user chose a cap with glibc's own
/// `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` (which then stands). Call it first in
/// `main`, while the process has one thread. Does nothing but on glibc.
pub(crate) fn cap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if !tuned {
            set_arena_max(ARENA_MAX);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // The one call into libc; nothing else in the workspace is unsafe.
fn set_arena_max(max: libc::c_int) {
    // SAFETY: `mallopt` only sets a parameter of the allocator, takes no pointer and is
    // called before any other thread exists; a value it rejects leaves glibc's default.
    let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, max) };
}
