//! A policy directory laid out like a Kubernetes ConfigMap volume, and
//! updated in the kubelet's order:
//!
//! ```text
//! ..2026_12_05_01_02_03.123456789/NAME.yaml   the real files
//! ..data -> ..2026_12_05_01_02_03.123456789
//! NAME.yaml -> ..data/NAME.yaml
//! ```
//!
//! An update writes a new timestamped directory, points `..data_tmp` at it,
//! renames `..data_tmp` over `..data` (the atomic step), adds the visible
//! links of new keys, removes those of dropped keys, then removes the old
//! directory.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

pub struct ConfigMapDir {
    dir: PathBuf,
    /// Name of the timestamped directory `..data` points at.
    current: Option<String>,
    keys: Vec<String>,
}

impl ConfigMapDir {
    /// Lays out `files` (key, contents) in `dir`, which must exist.
    pub fn create(dir: &Path, files: &[(&str, &str)]) -> Result<Self> {
        let mut volume = Self {
            dir: dir.to_owned(),
            current: None,
            keys: Vec::new(),
        };
        volume.update(files)?;
        Ok(volume)
    }

    /// Replaces the contents with `files` as the kubelet does, and returns
    /// the time of the atomic rename of `..data`.
    pub fn update(&mut self, files: &[(&str, &str)]) -> Result<SystemTime> {
        let name = timestamp_name(&self.current);
        let new_dir = self.dir.join(&name);
        fs::create_dir(&new_dir)
            .with_context(|| format!("failed to create {}", new_dir.display()))?;
        for (key, contents) in files {
            fs::write(new_dir.join(key), contents)?;
        }
        let staging = self.dir.join("..data_tmp");
        symlink(&name, &staging)
            .with_context(|| format!("failed to create {}", staging.display()))?;
        fs::rename(&staging, self.dir.join("..data"))
            .context("failed to rename ..data_tmp over ..data")?;
        let swapped = SystemTime::now();
        let keys: Vec<String> = files.iter().map(|(key, _)| (*key).to_owned()).collect();
        for key in &keys {
            let visible = self.dir.join(key);
            if fs::symlink_metadata(&visible).is_err() {
                symlink(format!("..data/{key}"), &visible)
                    .with_context(|| format!("failed to create {}", visible.display()))?;
            }
        }
        for key in self.keys.iter().filter(|key| !keys.contains(key)) {
            fs::remove_file(self.dir.join(key))?;
        }
        if let Some(old) = self.current.replace(name) {
            fs::remove_dir_all(self.dir.join(old))?;
        }
        self.keys = keys;
        Ok(swapped)
    }
}

/// Returns a name like `..2026_12_05_01_02_03.123456789` for the current
/// UTC time, different from `previous`.
fn timestamp_name(previous: &Option<String>) -> String {
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let seconds = now.as_secs();
        let (year, month, day) = civil_date(seconds / 86_400);
        let time = seconds % 86_400;
        let name = format!(
            "..{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}.{:09}",
            time / 3600,
            time / 60 % 60,
            time % 60,
            now.subsec_nanos()
        );
        if previous.as_deref() != Some(name.as_str()) {
            return name;
        }
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::civil_date;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_792), (2026, 12, 5));
    }
}
