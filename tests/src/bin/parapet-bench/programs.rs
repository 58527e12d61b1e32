//! Proof that "no agent" means no kernel program of ours: the ids of the
//! BPF programs a running agent holds, read from its descriptors, and a
//! wait until the kernel has freed every one of them.
//!
//! Other agents on the machine (other test runs) load programs with the
//! same names, so programs are distinguished by id, not by name.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// `BPF_PROG_GET_FD_BY_ID`, from `include/uapi/linux/bpf.h`.
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
/// How long the kernel may take to free a program after its last
/// reference went: links are released from a work queue.
const FREE_LIMIT: Duration = Duration::from_secs(10);

/// Returns the ids of the BPF programs that process `pid` has open through
/// a program or link descriptor (the `prog_id:` line of `/proc/PID/fdinfo`).
pub fn held_by(pid: u32) -> Result<Vec<u32>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("failed to list {dir}"))? {
        let Ok(text) = fs::read_to_string(entry?.path()) else {
            continue;
        };
        let id = text
            .lines()
            .find_map(|line| line.strip_prefix("prog_id:"))
            .and_then(|id| id.trim().parse().ok());
        if let Some(id) = id
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Waits until none of the programs `ids` exists any more.
pub fn wait_gone(ids: &[u32]) -> Result<()> {
    let started = Instant::now();
    loop {
        let remaining: Vec<u32> = ids.iter().copied().filter(|id| exists(*id)).collect();
        if remaining.is_empty() {
            return Ok(());
        }
        if started.elapsed() > FREE_LIMIT {
            bail!("BPF programs {remaining:?} of the stopped agent are still loaded after {FREE_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exists(id: u32) -> bool {
    #[repr(C)]
    struct GetFdByIdAttr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = GetFdByIdAttr { prog_id: id, next_id: 0, open_flags: 0 };
    // SAFETY: `attr` is the bpf_attr prefix BPF_PROG_GET_FD_BY_ID reads;
    // the kernel writes nothing into it.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, &mut attr as *mut GetFdByIdAttr, size_of::<GetFdByIdAttr>())
    };
    if fd >= 0 {
        // SAFETY: the descriptor was just returned to us and is closed once.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}
