//! Handing memory that the agent no longer uses back to the kernel.
//!
//! Start-up parses the kernel's BTF (several MiB) and the kernel object
//! file embedded in the binary (about 6 MiB with its debug sections). Once
//! the programs are loaded, most of the heap is free yet still resident:
//! glibc's malloc keeps freed memory for reuse and on its own returns only
//! the free space at the top of an arena. The pages of the embedded object
//! also stay mapped, although nothing reads them again.

use std::fs;

/// Returns the free pages of every malloc arena to the kernel. Does
/// nothing with C libraries other than glibc.
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes the arena locks itself and changes only
    // the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Unmaps the resident pages that lie wholly inside `data`, which the
/// agent must not need again soon. A later read maps them again from the
/// executable, so no content is lost. Returns the bytes released.
///
/// Fails, changing nothing, unless `/proc/self/maps` shows `data` inside a
/// single read-only mapping of a file, because `MADV_DONTNEED` would zero
/// anonymous or written pages.
pub fn release_read_only(data: &'static [u8]) -> Result<usize, String> {
    let start = data.as_ptr() as usize;
    let end = start + data.len();
    let maps = fs::read_to_string("/proc/self/maps").map_err(|error| format!("failed to read /proc/self/maps: {error}"))?;
    if !maps.lines().any(|line| is_read_only_file_mapping(line, start, end)) {
        return Err(format!("{start:#x}-{end:#x} is not inside one read-only file mapping"));
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let first = start.next_multiple_of(page);
    let last = end / page * page;
    if last <= first {
        return Ok(0);
    }
    // SAFETY: the range lies in a private, read-only mapping of a file
    // (checked above), whose pages MADV_DONTNEED drops and the next read
    // fetches from the file again, so every reference into `data` stays
    // valid and reads the same bytes.
    let result = unsafe { libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_DONTNEED) };
    if result != 0 {
        return Err(format!("madvise(MADV_DONTNEED) failed: {}", std::io::Error::last_os_error()));
    }
    Ok(last - first)
}

/// Returns whether a line of `/proc/self/maps` is a read-only, private mapping of
/// a file that contains the addresses `start..end`.
fn is_read_only_file_mapping(line: &str, start: usize, end: usize) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [range, permissions, _offset, _device, inode, path, ..] = fields.as_slice() else {
        return false;
    };
    let Some((low, high)) = range.split_once('-') else {
        return false;
    };
    let (Ok(low), Ok(high)) = (usize::from_str_radix(low, 16), usize::from_str_radix(high, 16)) else {
        return false;
    };
    low <= start
        && end <= high
        && permissions.starts_with('r')
        && !permissions.contains('w')
        && permissions.ends_with('p')
        && *inode != "0"
        && path.starts_with('/')
}

#[cfg(test)]
mod tests {
    use super::is_read_only_file_mapping;

    #[test]
    fn read_only_file_mapping_is_recognised() {
        let line = "5600a5825000-5600a5900000 r--p 00000000 fd:01 1234 /usr/bin/parapet";
        assert!(is_read_only_file_mapping(line, 0x5600a5826000, 0x5600a5827000));
    }

    #[test]
    fn other_mappings_are_rejected() {
        let inside = (0x5600a5826000, 0x5600a5827000);
        for line in [
            "5600a5825000-5600a5900000 rw-p 00000000 fd:01 1234 /usr/bin/parapet",
            "5600a5825000-5600a5900000 r--s 00000000 fd:01 1234 /usr/bin/parapet",
            "5600a5825000-5600a5900000 r--p 00000000 00:00 0 [heap]",
            "5600a5825000-5600a5900000 r--p 00000000 00:00 0",
            "5600a5825000-5600a5826800 r--p 00000000 fd:01 1234 /usr/bin/parapet",
        ] {
            assert!(!is_read_only_file_mapping(line, inside.0, inside.1), "{line}");
        }
    }

    #[test]
    fn release_of_static_data_keeps_its_bytes() {
        static DATA: [u8; 3 * 4096] = [7; 3 * 4096];
        let sum = || -> u64 { std::hint::black_box(&DATA).iter().map(|&byte| u64::from(byte)).sum() };
        assert_eq!(sum(), 7 * 3 * 4096);
        let released = super::release_read_only(&DATA).unwrap();
        assert!(released >= 2 * 4096, "released {released} bytes");
        assert_eq!(sum(), 7 * 3 * 4096);
    }
}
