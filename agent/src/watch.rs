//! Noticing policy changes in the policy directory.
//!
//! The directory is polled: the contents of every visible policy file are
//! hashed, so both an edit in place and a Kubernetes ConfigMap update (an
//! atomic swap of the `..data` symlink that the visible files point
//! through) change the fingerprint.

use std::{
    fs,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::PathBuf,
};

use crate::policy::{self, Policy, PolicyError};

pub struct PolicyWatcher {
    dir: PathBuf,
    /// Fingerprint of the directory as last loaded or rejected.
    fingerprint: Option<u64>,
}

impl PolicyWatcher {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            fingerprint: None,
        }
    }

    /// Loads the directory for the first time.
    pub fn load_initial(&mut self) -> Result<Vec<Policy>, Vec<PolicyError>> {
        self.fingerprint = Some(self.fingerprint_now());
        policy::load_dir(&self.dir)
    }

    /// Loads the directory again when its contents changed since the last
    /// load, or when `forced`. Returns `None` when nothing changed. A
    /// rejected set is not reported again until the files change.
    pub fn poll(&mut self, forced: bool) -> Option<Result<Vec<Policy>, Vec<PolicyError>>> {
        let now = self.fingerprint_now();
        if !forced && self.fingerprint == Some(now) {
            return None;
        }
        self.fingerprint = Some(now);
        Some(policy::load_dir(&self.dir))
    }

    fn fingerprint_now(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        let Ok(entries) = fs::read_dir(&self.dir) else {
            0u8.hash(&mut hasher);
            return hasher.finish();
        };
        let mut files: Vec<(String, Vec<u8>)> = entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    return None;
                }
                // A read error is part of the fingerprint too: it changes
                // when the file becomes readable again.
                let contents = fs::read(entry.path()).unwrap_or_else(|e| e.to_string().into_bytes());
                Some((name, contents))
            })
            .collect();
        files.sort();
        files.hash(&mut hasher);
        hasher.finish()
    }
}
