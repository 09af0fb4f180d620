//! The C allocator's settings for a server whose memory is megabyte buffers that come and
//! go.
//!
//! A request body arrives in the HTTP/2 or HTTP/3 read buffers, blocks of up to a few MiB
//! that live until their chunk is stored and are then freed. glibc's defaults hand such
//! blocks back to the kernel: blocks above its mmap threshold are unmapped when freed, and
//! free memory at the top of a heap is trimmed away. So the next body is decrypted onto
//! fresh pages, each one a page fault and a zeroed page. Measured over HTTP/2 with a
//! 256 MiB upload after a warm-up one (`perf stat -e page-faults`): 23,000 faults and
//! 735 ms of server CPU with the defaults, 3,000 and 589 ms with the settings below.
//!
//! The cost is that freed memory stays with the process, up to the peak the server's
//! buffer limits allow (`--max-buffered-bytes`), which it would reach again under load.

/// Blocks up to this size come from the heap (glibc's ceiling for this setting): every
/// body buffer and the largest chunk.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;
/// Free memory at a heap's top beyond this is given back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 256 << 20;

/// Keeps freed buffers for reuse (see the module's docs). Call first thing in `main`,
/// before any thread starts. Elsewhere than glibc the allocator's own policy stands.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value, name) in [
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD, "M_MMAP_THRESHOLD"),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD, "M_TRIM_THRESHOLD"),
    ] {
        // SAFETY: mallopt only changes glibc's allocator parameters (it takes the arena
        // lock itself); no pointer is passed and nothing is allocated or freed.
        if unsafe { libc::mallopt(param, value) } != 1 {
            tracing::warn!(setting = name, value, "the C allocator refused a setting");
        }
    }
}
