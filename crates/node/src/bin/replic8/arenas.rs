//! glibc's malloc settings, made before anything else runs: the cap on its arenas and a
//! fixed mmap threshold.
//!
//! glibc gives a thread that finds the arenas in use one of its own, up to 8 per core,
//! and an arena keeps the memory freed into it: a node's runtime workers, blocking-pool
//! threads and store writers each end up with one, and the process keeps the peak of
//! each. `docs/decisions/177-malloc-arenas.md` has the measurements behind [`ARENA_MAX`].
//!
//! glibc also raises its mmap threshold, from 128 KiB up to 32 MiB, to the size of each
//! mapped block freed: after one large transient buffer (a JSON line of 100,000 feeds, a
//! listing) every table below it is carved from an arena, where it stays resident once
//! freed and its holes fragment the arena. The binary fixes the threshold instead. `docs/decisions/230-fixed-mmap-threshold.md`
//! has the measurements behind [`MMAP_THRESHOLD`].

/// Most malloc arenas: the main one and one more. Measured in `bench swarm` (per-node
/// peak RSS) and `bench bulk`/`append` (throughput unchanged within run-to-run noise).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Allocations of at least this many bytes get a mapping of their own, unmapped when
/// freed; fixed (setting it turns glibc's raising of it off). Twice the largest wire
/// frame (`replic8::frame::MAX_FRAME_LEN`, 1 MiB, plus its header), so a bulk
/// transfer's frame buffers are reused from the arena: glibc's 128 KiB start, kept
/// fixed, mapped and unmapped each and cost the bulk reader ~0.15 CPU-s per 256 MiB.
/// The tables of many feeds are mapped: at 100,000 feeds both sides' peak RSS in
/// `bench many-feeds` was 25–45 MB lower than with glibc's raised threshold.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 2 << 20;

/// Caps the arenas at [`ARENA_MAX`] and fixes the mmap threshold at [`MMAP_THRESHOLD`],
/// each unless the user chose it with glibc's own variable (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`) or `GLIBC_TUNABLES` (which then stands). Call it first in
/// `main`, while the process has one thread. Does nothing but on glibc.
pub(crate) fn cap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = |variable: &str, tunable: &str| {
            std::env::var_os(variable).is_some()
                || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(tunable))
        };
        if !tuned("MALLOC_ARENA_MAX", "arena_max") {
            set(libc::M_ARENA_MAX, ARENA_MAX);
        }
        if !tuned("MALLOC_MMAP_THRESHOLD_", "mmap_threshold") {
            set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // The one call into libc; nothing else in the workspace is unsafe.
fn set(parameter: libc::c_int, value: libc::c_int) {
    // SAFETY: `mallopt` only sets a parameter of the allocator, takes no pointer and is
    // called before any other thread exists; a value it rejects leaves glibc's default.
    let _ = unsafe { libc::mallopt(parameter, value) };
}
