//! A bpffs instance of a test's own, so that the kernel objects an agent
//! pins there go away with it: unmounting the last mount of a bpffs drops
//! every pin in it, which detaches the pinned programs.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// A bpffs mounted on a folder of the test; unmounted when dropped.
pub struct PrivateBpffs {
    mount_point: PathBuf,
    mounted: bool,
}

impl PrivateBpffs {
    /// Mounts a new bpffs on `mount_point`, creating the folder.
    pub fn mount(mount_point: &Path) -> Result<Self> {
        fs::create_dir_all(mount_point)?;
        let target = CString::new(mount_point.as_os_str().as_encoded_bytes())?;
        // SAFETY: every argument is a NUL-terminated string.
        let result = unsafe {
            libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null())
        };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            bail!("mounting a bpffs on {} failed: {error}", mount_point.display());
        }
        Ok(Self {
            mount_point: mount_point.to_owned(),
            mounted: true,
        })
    }

    /// Returns the pin directory an agent is given: a folder inside this
    /// bpffs.
    pub fn pin_dir(&self) -> PathBuf {
        self.mount_point.join("parapet")
    }

    /// Unmounts the bpffs, which removes every pin in it. The agents that
    /// pinned there must have exited, or their private mount namespaces
    /// keep it alive.
    pub fn unmount(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        let target = CString::new(self.mount_point.as_os_str().as_encoded_bytes())?;
        // SAFETY: a NUL-terminated path.
        let result = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            return Err(error).with_context(|| format!("unmounting the bpffs on {} failed", self.mount_point.display()));
        }
        let _ = fs::remove_dir(&self.mount_point);
        Ok(())
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if let Err(error) = self.unmount() {
            eprintln!("parapet-tests: {error:#}");
        }
    }
}
