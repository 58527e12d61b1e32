//! Returning freed heap memory to the kernel.
//!
//! glibc's malloc keeps freed memory in its arenas for reuse and on its
//! own returns only the free space at the top of an arena. Start-up parses
//! the kernel's BTF (several MiB) and the kernel object file, so right
//! after it most of the heap is free yet still resident.

/// Returns the free pages of every malloc arena to the kernel. Does
/// nothing with C libraries other than glibc.
pub fn release_free() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes the arena locks itself and changes only
    // the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}
