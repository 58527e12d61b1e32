//! Kernel links and maps pinned under bpffs, so that enforcement goes on
//! while the agent is stopped, upgraded or crashed.
//!
//! The pin directory holds:
//! - `active_generation`: the map that names the generation of programs
//!   that act (see the kernel side's `generation.rs`);
//! - `maps-<layout>/<MAP>`: every other map, in a folder named for a hash
//!   of the maps' definitions, so that a build with other map layouts never
//!   opens maps it cannot read;
//! - `links-<generation>/<program>`: the links that keep one generation's
//!   programs attached.
//!
//! A starting agent takes the next generation number, attaches its programs
//! next to the pinned ones, and then makes its generation the active one
//! (see [`Pins::activate`]). Only then are the older links unpinned, which
//! detaches their programs.
//!
//! A starting agent shares the maps of its layout only when the active
//! generation's programs use them. Otherwise they were left by a start that
//! never became active or by a generation since replaced, and they are
//! replaced with new ones.

use std::{
    collections::HashSet,
    fs::{self, File},
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, MapInfo},
    programs::links::{FdLink, PinnedLink},
};
use parapet_common::map_names;
use sha2::Digest as _;
use tracing::{info, warn};

/// Default of `--pin-dir`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/parapet";

/// Conventional bpffs mount point. The agent mounts bpffs there when the
/// pin directory is below it and nothing is mounted.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// `f_type` of a BPF file system in `statfs(2)`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Bumped by hand when a map's key or value changes meaning without
/// changing size, so that such a build does not adopt the older maps.
const LAYOUT_REVISION: u32 = 1;

const ACTIVE_GENERATION_PIN: &str = "active_generation";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "--pin-dir {}: {} is not on a BPF file system (bpffs); mount one there (mount -t bpf bpf DIR) or pass another --pin-dir",
        dir.display(),
        parent.display()
    )]
    NotBpffs { dir: PathBuf, parent: PathBuf },
    #[error("--pin-dir {}: mounting bpffs on {BPFFS_MOUNT} failed", dir.display())]
    MountBpffs {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--pin-dir {}: another agent uses this pin directory; stop it first", dir.display())]
    Locked { dir: PathBuf },
    #[error("--pin-dir {}: {action} {}", dir.display(), path.display())]
    Io {
        dir: PathBuf,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel programs' object file cannot be parsed to hash its map layout")]
    Object(#[source] aya_obj::ParseError),
    #[error("--pin-dir {}: reading the active generation from {} failed: {reason}", dir.display(), path.display())]
    ActiveGeneration {
        dir: PathBuf,
        path: PathBuf,
        reason: String,
    },
    #[error("--pin-dir {}: pinning the link of {program} at {} failed: {reason}", dir.display(), path.display())]
    PinLink {
        dir: PathBuf,
        program: String,
        path: PathBuf,
        reason: String,
    },
}

/// Mounts bpffs on `/sys/fs/bpf` when `pin_dir` is below it and no bpffs is
/// mounted there, and checks that `pin_dir`'s parent is on bpffs. Runs
/// before the agent moves into its own mount namespace, so that the mount
/// and the pins outlive the agent.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), PinError> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/")).to_owned();
    if is_bpffs(&parent) {
        return Ok(());
    }
    if parent == Path::new(BPFFS_MOUNT) && !is_bpffs(Path::new(BPFFS_MOUNT)) {
        // SAFETY: every argument is a NUL-terminated string literal.
        let result = unsafe {
            libc::mount(c"bpf".as_ptr(), c"/sys/fs/bpf".as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null())
        };
        if result != 0 {
            return Err(PinError::MountBpffs {
                dir: pin_dir.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        info!("mounted bpffs on {BPFFS_MOUNT}");
        return Ok(());
    }
    Err(PinError::NotBpffs {
        dir: pin_dir.to_owned(),
        parent,
    })
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `stat` is a valid out pointer.
    let result = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    result == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// The pin directory of one agent run, locked against other agents.
pub struct Pins {
    dir: PathBuf,
    /// Holds an exclusive `flock` on the directory for the agent's life.
    _lock: File,
    maps_dir: PathBuf,
    links_dir: PathBuf,
    /// Map names and their pin paths, for the loader.
    map_paths: Vec<(String, PathBuf)>,
    /// This run's generation.
    pub generation: u32,
    /// The generation that was active when the agent started, if any.
    pub previous: Option<u32>,
    /// Whether the maps of an earlier run with the same layout were found,
    /// and used by the active generation if there is one, so that the new
    /// programs share them.
    pub maps_adopted: bool,
}

impl Pins {
    /// Opens `dir` (creating it) and locks it. Removes the links of
    /// generations that never became active (a start that failed midway),
    /// and the maps of this layout if an active generation does not use
    /// them.
    pub fn open(dir: &Path, object: &[u8]) -> Result<Self, PinError> {
        let io_error = |action, path: &Path| {
            let dir = dir.to_owned();
            let path = path.to_owned();
            move |source| PinError::Io {
                dir,
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
        let lock = lock(dir)?;
        let (map_names, layout) = pinned_maps(object)?;
        let maps_dir = dir.join(format!("maps-{layout}"));
        let gate_path = dir.join(ACTIVE_GENERATION_PIN);
        let previous = read_active_generation(dir, &gate_path)?;
        let mut maps_adopted = maps_dir.is_dir();
        if maps_adopted && let Some(active) = previous {
            // Maps that the active programs do not use may lack cgroup
            // entries (an upgrade that crashed before its first pass left
            // them), so adopting them would make this start act at once with
            // gaps. New maps make it wait for its first pass instead.
            let stale = match maps_used_by(&dir.join(format!("links-{active}")), &maps_dir) {
                Ok(true) => false,
                Ok(false) => {
                    warn!(path = %maps_dir.display(), generation = active, "the active generation's programs do not use the maps pinned for this layout; removing them and starting with new maps");
                    true
                }
                Err(reason) => {
                    warn!(path = %maps_dir.display(), generation = active, reason = %reason, "failed to check whether the active generation uses the maps pinned for this layout; removing them and starting with new maps");
                    true
                }
            };
            if stale {
                fs::remove_dir_all(&maps_dir).map_err(io_error("removing", &maps_dir))?;
                maps_adopted = false;
            }
        }
        fs::create_dir_all(&maps_dir).map_err(io_error("creating", &maps_dir))?;
        let generation = previous.unwrap_or(0).wrapping_add(1).max(1);
        for (path, link_generation) in link_dirs(dir) {
            if Some(link_generation) != previous {
                warn!(path = %path.display(), "removing the links of a start that never became active");
                fs::remove_dir_all(&path).map_err(io_error("removing", &path))?;
            }
        }
        let links_dir = dir.join(format!("links-{generation}"));
        fs::create_dir_all(&links_dir).map_err(io_error("creating", &links_dir))?;
        let mut map_paths: Vec<(String, PathBuf)> = map_names
            .into_iter()
            .map(|name| {
                let path = maps_dir.join(&name);
                (name, path)
            })
            .collect();
        for (name, path) in &mut map_paths {
            if name == map_names::ACTIVE_GENERATION {
                *path = gate_path.clone();
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
            maps_dir,
            links_dir,
            map_paths,
            generation,
            previous,
            maps_adopted,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns each map name with the path it is pinned at.
    pub fn map_paths(&self) -> &[(String, PathBuf)] {
        &self.map_paths
    }

    /// Pins the link of `program` in this generation's link folder.
    pub fn pin_link(&self, program: &str, link: FdLink) -> Result<(), PinError> {
        let path = self.links_dir.join(program);
        link.pin(&path).map_err(|error| PinError::PinLink {
            dir: self.dir.clone(),
            program: program.to_owned(),
            path: path.clone(),
            reason: error.to_string(),
        })?;
        Ok(())
    }

    /// Unpins the link of `program`, which detaches it: for a program
    /// attached and then given up, as when its siblings failed to attach.
    pub fn unpin_link(&self, program: &str) {
        let path = self.links_dir.join(program);
        if let Err(error) = fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %error, "failed to unpin a link");
        }
    }

    /// Makes this run's programs the ones that act, then unpins the links
    /// of every other generation and the maps of every other layout. The
    /// switch is one map write, so each operation is judged by exactly one
    /// generation.
    pub fn activate(&self, gate: &mut Array<MapData, u32>) -> Result<(), PinError> {
        gate.set(0, self.generation, 0)
            .map_err(|error| PinError::ActiveGeneration {
                dir: self.dir.clone(),
                path: self.dir.join(ACTIVE_GENERATION_PIN),
                reason: error.to_string(),
            })?;
        info!(generation = self.generation, previous = ?self.previous, "this agent's kernel programs are now the active generation");
        for (path, link_generation) in link_dirs(&self.dir) {
            if link_generation != self.generation {
                remove_logged(&path, "links of an earlier generation");
            }
        }
        for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let is_maps = entry.file_name().to_string_lossy().starts_with("maps-");
            if is_maps && path != self.maps_dir {
                // NOTE: the events still in an older layout's ring buffer
                // and its counters are dropped with it.
                remove_logged(&path, "maps of another layout");
            }
        }
        Ok(())
    }
}

/// Removes every pinned object under `dir`, which detaches every program of
/// every generation. Fails while an agent has the directory locked.
/// Returns the number of pins removed.
pub fn uninstall(dir: &Path) -> Result<usize, PinError> {
    if !dir.exists() {
        return Ok(0);
    }
    let _lock = lock(dir)?;
    let mut removed = 0;
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            removed += fs::read_dir(&path).into_iter().flatten().count();
            fs::remove_dir_all(&path).map_err(|source| PinError::Io {
                dir: dir.to_owned(),
                action: "removing",
                path: path.clone(),
                source,
            })?;
        } else {
            removed += 1;
            fs::remove_file(&path).map_err(|source| PinError::Io {
                dir: dir.to_owned(),
                action: "removing",
                path: path.clone(),
                source,
            })?;
        }
    }
    fs::remove_dir(dir).map_err(|source| PinError::Io {
        dir: dir.to_owned(),
        action: "removing",
        path: dir.to_owned(),
        source,
    })?;
    Ok(removed)
}

fn lock(dir: &Path) -> Result<File, PinError> {
    let file = File::open(dir).map_err(|source| PinError::Io {
        dir: dir.to_owned(),
        action: "opening",
        path: dir.to_owned(),
        source,
    })?;
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = io::Error::last_os_error();
        if source.kind() == io::ErrorKind::WouldBlock {
            return Err(PinError::Locked { dir: dir.to_owned() });
        }
        return Err(PinError::Io {
            dir: dir.to_owned(),
            action: "locking",
            path: dir.to_owned(),
            source,
        });
    }
    Ok(file)
}

fn read_active_generation(dir: &Path, path: &Path) -> Result<Option<u32>, PinError> {
    if !path.exists() {
        return Ok(None);
    }
    let error = |reason: String| PinError::ActiveGeneration {
        dir: dir.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let data = MapData::from_pin(path).map_err(|e| error(e.to_string()))?;
    let gate: Array<MapData, u32> = Array::try_from(Map::Array(data)).map_err(|e| error(e.to_string()))?;
    let active = gate.get(&0, 0).map_err(|e| error(e.to_string()))?;
    Ok((active != 0).then_some(active))
}

/// Returns whether a program behind a link pinned in `links_dir` uses a map
/// pinned in `maps_dir`. Fails when a pin in either folder, or one of those
/// programs, cannot be read.
fn maps_used_by(links_dir: &Path, maps_dir: &Path) -> Result<bool, String> {
    let entries = |folder: &Path| -> Result<Vec<PathBuf>, String> {
        let listing = fs::read_dir(folder).map_err(|e| format!("reading {}: {e}", folder.display()))?;
        listing
            .map(|entry| entry.map(|entry| entry.path()).map_err(|e| format!("reading {}: {e}", folder.display())))
            .collect()
    };
    let mut map_ids = HashSet::new();
    for path in entries(maps_dir)? {
        let info = MapInfo::from_pin(&path).map_err(|e| format!("reading the map {}: {e}", path.display()))?;
        map_ids.insert(info.id());
    }
    let mut program_ids = HashSet::new();
    for path in entries(links_dir)? {
        let link = PinnedLink::from_pin(&path).map_err(|e| format!("opening the link {}: {e}", path.display()))?;
        let info = FdLink::from(link)
            .info()
            .map_err(|e| format!("reading the link {}: {e}", path.display()))?;
        program_ids.insert(info.program_id());
    }
    // Reading a program that unloaded meanwhile fails. Programs behind
    // pinned links cannot unload, so such a failure counts only when no
    // program was found using the maps.
    let mut failure = None;
    for program in aya::programs::loaded_programs() {
        let program = match program {
            Ok(program) => program,
            Err(error) => {
                failure.get_or_insert_with(|| format!("listing the loaded programs: {error}"));
                continue;
            }
        };
        if !program_ids.contains(&program.id()) {
            continue;
        }
        let ids = program
            .map_ids()
            .map_err(|e| format!("reading the maps of program {}: {e}", program.id()))?
            .ok_or_else(|| "the kernel does not list the maps of a program".to_owned())?;
        if ids.iter().any(|id| map_ids.contains(id)) {
            return Ok(true);
        }
    }
    failure.map_or(Ok(false), Err)
}

/// Returns the `links-<generation>` folders under `dir`.
fn link_dirs(dir: &Path) -> Vec<(PathBuf, u32)> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let generation = name.to_str()?.strip_prefix("links-")?.parse().ok()?;
            Some((entry.path(), generation))
        })
        .collect()
}

fn remove_logged(path: &Path, what: &str) {
    match fs::remove_dir_all(path) {
        Ok(()) => info!(path = %path.display(), "unpinned the {what}"),
        Err(error) => warn!(path = %path.display(), error = %error, "failed to unpin the {what}"),
    }
}

/// Returns the names of the object's maps that are pinned, sorted, and a
/// short hex hash of their definitions. The loader's own data sections
/// (`.rodata`, `.bss`, `.data`) are left out, because they contain the
/// per-load globals such as the generation.
fn pinned_maps(object: &[u8]) -> Result<(Vec<String>, String), PinError> {
    let parsed = aya_obj::Object::parse(object).map_err(PinError::Object)?;
    let mut maps: Vec<_> = parsed.maps.iter().filter(|(name, _)| !name.starts_with('.')).collect();
    maps.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = sha2::Sha256::new();
    hasher.update(LAYOUT_REVISION.to_le_bytes());
    for (name, map) in &maps {
        hasher.update(name.as_bytes());
        for value in [map.map_type(), map.key_size(), map.value_size(), map.max_entries(), map.map_flags()] {
            hasher.update(value.to_le_bytes());
        }
    }
    let digest = hasher.finalize();
    let layout = digest[..8].iter().map(|byte| format!("{byte:02x}")).collect();
    let names = maps.into_iter().map(|(name, _)| name.clone()).collect();
    Ok((names, layout))
}
