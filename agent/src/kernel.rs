//! Loading the kernel programs, attaching them, and the typed maps the agent
//! writes policies into and reads counters and events from.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, Lsm, ProgramError, TracePoint, links::FdLink},
};
use parapet_common::{
    CgroupPolicies, CounterKey, PolicyName,
    exec::{ExeOffsets, ExecPolicy, ExecRuleKey, ExecRuleValue},
    hold::HeldProcess,
    file::FsPolicy,
    lsm::{LsmNetOffsets, LsmOffsets, ReadOnlyMount, ReadOnlySuperblock, ReadOnlySuperblockKey, backend},
    map_names,
    net::NetPolicy,
    program_names,
};

use crate::{pins::Pins, probe::Probe};

/// The kernel programs, built for the BPF target by `build.rs`.
pub static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/parapet-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("failed to load the kernel programs")]
    Load(#[source] EbpfError),
    #[error("kernel program {name} is missing from the object file")]
    MissingProgram { name: &'static str },
    #[error("kernel map {name} is missing from the object file")]
    MissingMap { name: &'static str },
    #[error("kernel map {name} has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("failed to load kernel program {name}")]
    LoadProgram {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("tracefs is not mounted and mounting it on /sys/kernel/tracing failed")]
    MountTracefs(#[source] std::io::Error),
    #[error("--require-lsm is set, but the BPF LSM backend cannot be used: {0}")]
    LsmRequired(String),
    #[error("failed to open cgroup {}", path.display())]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to attach kernel program {name} to {}", path.display())]
    Attach {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("the link of kernel program {name} cannot be pinned: {reason}")]
    Pin { name: String, reason: String },
}

/// The loaded kernel programs and their maps. The programs stay attached
/// through their pinned links after this value and the agent are gone.
pub struct Kernel {
    _ebpf: Ebpf,
    /// The generation whose programs act; see `pins`.
    pub active_generation: Array<MapData, u32>,
    /// Policy names by slot, kept for a restarted agent.
    pub policy_names: HashMap<MapData, u32, PolicyName>,
    pub cgroup_policies: HashMap<MapData, u64, CgroupPolicies>,
    /// Incremented after each change to `cgroup_policies`.
    pub policy_epoch: Array<MapData, u64>,
    pub net_policies: Array<MapData, NetPolicy>,
    pub decision_counters: PerCpuHashMap<MapData, CounterKey, u64>,
    pub losses: PerCpuArray<MapData, u64>,
    pub exec_policies: Array<MapData, ExecPolicy>,
    pub exec_rules: HashMap<MapData, ExecRuleKey, ExecRuleValue>,
    pub fs_policies: Array<MapData, FsPolicy>,
    /// How many slots of `fs_policies` contain a read-only policy in audit
    /// mode, at index 0; see `Enforcer`.
    pub file_audit_slots: Array<MapData, u32>,
    /// Mounts the LSM file programs keep unchanged, by mount id.
    pub read_only_mounts: HashMap<MapData, u32, ReadOnlyMount>,
    /// Superblocks behind those mounts, per container.
    pub read_only_superblocks: HashMap<MapData, ReadOnlySuperblockKey, ReadOnlySuperblock>,
    /// Whether the exec program can read the identity of executables;
    /// without it, exec lists match by path only.
    pub exe_identity: Result<(), String>,
    /// Taken out by the event reader.
    pub events: Option<RingBuf<MapData>>,
    /// Processes the exec tracepoint stopped at their first instruction.
    pub held_processes: HashMap<MapData, u32, HeldProcess>,
    /// Taken out by the held-process reader.
    pub held_events: Option<RingBuf<MapData>>,
    /// Result of the start-up probe.
    pub probe: Probe,
}

/// Syscalls whose mutations of read-only file systems are reported; each
/// has the program `parapet_fx_<name>` on its exit.
const FILE_SYSCALLS: [&str; 40] = [
    "openat", "open", "creat", "truncate", "unlinkat", "unlink", "renameat2", "renameat", "rename",
    "mkdirat", "mkdir", "rmdir", "linkat", "link", "symlinkat", "symlink", "mknodat", "mknod",
    "fchmodat", "chmod", "fchownat", "chown", "lchown", "setxattr", "lsetxattr", "removexattr",
    "lremovexattr", "fchmodat2", "utimensat", "futimesat", "utimes", "utime", "fchmod", "fchown",
    "fsetxattr", "fremovexattr", "openat2", "setxattrat", "removexattrat", "file_setattr",
];

const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    program_names::CONNECT4,
    program_names::CONNECT6,
    program_names::SENDMSG4,
    program_names::SENDMSG6,
];

impl Kernel {
    /// Loads the programs as generation `pins.generation`, with their maps
    /// pinned under `pins` (sharing those an earlier run pinned), and
    /// attaches them, pinning every link. The socket programs attach to the
    /// cgroup v2 directory `cgroup`, so that they see every process below
    /// it. With `require_lsm`, fails before attaching anything unless the
    /// probe finds the LSM backend usable. The new programs act only once
    /// `Pins::activate` makes their generation the active one.
    pub fn load_and_attach(cgroup: &Path, require_lsm: bool, pins: &Pins) -> Result<Self, KernelError> {
        ensure_tracefs()?;
        let (offsets, exe_identity) = exe_offsets();
        let lsm_offsets = lsm_offsets();
        let lsm_net_offsets = lsm_net_offsets();
        let hold_config = crate::hold::config();
        let lsm_globals = lsm_offsets.clone().unwrap_or_default();
        let lsm_net_globals = lsm_net_offsets.clone().unwrap_or_default();
        let mut loader = EbpfLoader::new();
        loader
            .override_global("EXE_OFFSETS", &offsets, true)
            .override_global("HOLD_CONFIG", &hold_config, true)
            .override_global("LSM_OFFSETS", &lsm_globals, true)
            .override_global("LSM_NET_OFFSETS", &lsm_net_globals, true)
            .override_global("GENERATION", &pins.generation, true);
        for (name, path) in pins.map_paths() {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        let mut ebpf = loader.load(PROGRAMS).map_err(KernelError::Load)?;
        let mut probe = Probe::run(&mut ebpf);
        // The LSM programs are loaded only where the probe found BPF LSM
        // usable: elsewhere the kernel refuses them anyway.
        if probe.lsm_usable().is_ok() {
            attach_lsm(&mut ebpf, &mut probe, &lsm_offsets, &lsm_net_offsets, pins)?;
        }
        if require_lsm {
            probe.lsm_backend_in_use().map_err(KernelError::LsmRequired)?;
        }
        let cgroup_file = File::open(cgroup).map_err(|source| KernelError::OpenCgroup {
            path: cgroup.to_owned(),
            source,
        })?;

        // Where the LSM socket programs are attached they keep the network
        // promise alone, and refuse packet sockets without killing anyone.
        if !matches!(probe.lsm_net, Some(Ok(()))) {
            attach_socket_programs(&mut ebpf, &cgroup_file, cgroup, pins)?;
        }

        attach_tracepoint(&mut ebpf, program_names::EXEC, "sched", "sched_process_exec", pins)?;
        for syscall in FILE_SYSCALLS {
            let exists = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
                .iter()
                .any(|events| Path::new(events).join(format!("syscalls/sys_exit_{syscall}")).is_dir());
            if !exists {
                tracing::debug!(syscall, "this kernel has no such syscall to watch");
                continue;
            }
            let program = format!("parapet_fx_{syscall}");
            if let Err(error) = attach_file_tracepoint(&mut ebpf, &program, &format!("sys_exit_{syscall}"), pins) {
                tracing::warn!(
                    program = %program,
                    error = %error,
                    "failed to attach a file tracepoint. Attempts through this syscall are refused but not reported"
                );
            }
        }
        Ok(Self {
            active_generation: take_map(&mut ebpf, map_names::ACTIVE_GENERATION)?,
            policy_names: take_map(&mut ebpf, map_names::POLICY_NAMES)?,
            cgroup_policies: take_map(&mut ebpf, map_names::CGROUP_POLICIES)?,
            policy_epoch: take_map(&mut ebpf, map_names::POLICY_EPOCH)?,
            net_policies: take_map(&mut ebpf, map_names::NET_POLICIES)?,
            decision_counters: take_map(&mut ebpf, map_names::DECISION_COUNTERS)?,
            losses: take_map(&mut ebpf, map_names::LOSSES)?,
            exec_policies: take_map(&mut ebpf, map_names::EXEC_POLICIES)?,
            exec_rules: take_map(&mut ebpf, map_names::EXEC_RULES)?,
            fs_policies: take_map(&mut ebpf, map_names::FS_POLICIES)?,
            file_audit_slots: take_map(&mut ebpf, map_names::FILE_AUDIT_SLOTS)?,
            read_only_mounts: take_map(&mut ebpf, map_names::READ_ONLY_MOUNTS)?,
            read_only_superblocks: take_map(&mut ebpf, map_names::READ_ONLY_SUPERBLOCKS)?,
            exe_identity,
            events: Some(take_map(&mut ebpf, map_names::EVENTS)?),
            held_processes: take_map(&mut ebpf, map_names::HELD_PROCESSES)?,
            held_events: Some(take_map(&mut ebpf, map_names::HELD_EVENTS)?),
            probe,
            _ebpf: ebpf,
        })
    }
}

/// Attaches the cgroup socket programs to the cgroup v2 directory `cgroup`,
/// and the `socket(2)` tracepoint that catches packet sockets.
fn attach_socket_programs(ebpf: &mut Ebpf, cgroup_file: &File, cgroup: &Path, pins: &Pins) -> Result<(), KernelError> {
        // aya attaches through a BPF link on kernels from 5.7 on. The
        // kernel rejects any flag on a cgroup link (EINVAL) and always
        // runs link programs next to the others on the cgroup, as
        // BPF_F_ALLOW_MULTI would.
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_mut(ebpf, name)?;
            program
                .load()
                .map_err(|source| KernelError::LoadProgram { name, source })?;
            let link = program
                .attach(cgroup_file, CgroupAttachMode::Single)
                .and_then(|id| program.take_link(id))
                .map_err(|source| attach_error(name, cgroup, source))?;
            pin(pins, name, FdLink::try_from(link).map_err(|error| error.to_string()))?;
        }
        let name = program_names::SOCK_CREATE;
        let sock_create: &mut CgroupSock = program_mut(ebpf, name)?;
        sock_create
            .load()
            .map_err(|source| KernelError::LoadProgram { name, source })?;
        let link = sock_create
            .attach(cgroup_file, CgroupAttachMode::Single)
            .and_then(|id| sock_create.take_link(id))
            .map_err(|source| attach_error(name, cgroup, source))?;
        pin(pins, name, FdLink::try_from(link).map_err(|error| error.to_string()))?;
        attach_tracepoint(ebpf, program_names::SOCKET_ENTER, "syscalls", "sys_enter_socket", pins)
}

/// Pins the link of `name`, so that the program stays attached when the
/// agent exits.
fn pin(pins: &Pins, name: &str, link: Result<FdLink, String>) -> Result<(), KernelError> {
    let pin_error = |reason: String| KernelError::Pin {
        name: name.to_owned(),
        reason,
    };
    pins.pin_link(name, link.map_err(pin_error)?)
        .map_err(|error| pin_error(error.to_string()))
}

/// Loads and attaches the LSM programs, records the outcome per promise in
/// `probe`, and sets the `LSM_BACKENDS` flags, with which the exec
/// tracepoint stops judging programs once `bprm_check_security` does.
fn attach_lsm(
    ebpf: &mut Ebpf,
    probe: &mut Probe,
    offsets: &Result<LsmOffsets, String>,
    net_offsets: &Result<LsmNetOffsets, String>,
    pins: &Pins,
) -> Result<(), KernelError> {
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(error) => {
            let reason = format!("no kernel BTF: {error}");
            probe.lsm_file = Some(Err(reason.clone()));
            probe.lsm_exec = Some(Err(reason.clone()));
            probe.lsm_net = Some(Err(reason));
            return Ok(());
        }
    };
    let (file, exec) = match offsets {
        Err(error) => {
            let reason = format!("the kernel's BTF lacks a struct member the LSM programs read: {error}");
            (Err(reason.clone()), Err(reason))
        }
        Ok(_) => (
            attach_lsm_file(ebpf, &btf, pins),
            load_and_attach_lsm(ebpf, &btf, program_names::LSM_EXEC, "bprm_check_security", pins),
        ),
    };
    let net = match net_offsets {
        Err(error) => Err(format!(
            "the kernel's BTF lacks a struct member the LSM socket programs read: {error}"
        )),
        Ok(_) => attach_lsm_net(ebpf, &btf, pins),
    };
    let mut bits = 0;
    if file.is_ok() {
        bits |= backend::FILESYSTEM;
    }
    if exec.is_ok() {
        bits |= backend::EXEC;
    }
    if net.is_ok() {
        bits |= backend::NETWORK;
    }
    let name = map_names::LSM_BACKENDS;
    let map = ebpf.map_mut(name).ok_or(KernelError::MissingMap { name })?;
    let mut backends: Array<&mut MapData, u32> =
        Array::try_from(map).map_err(|source| KernelError::MapType { name, source })?;
    backends
        .set(0, bits, 0)
        .map_err(|source| KernelError::MapType { name, source })?;
    probe.lsm_file = Some(file);
    probe.lsm_exec = Some(exec);
    probe.lsm_net = Some(net);
    Ok(())
}

fn attach_lsm_file(ebpf: &mut Ebpf, btf: &Btf, pins: &Pins) -> Result<(), String> {
    for (name, hook) in program_names::LSM_FILE {
        if let Err(error) = load_and_attach_lsm(ebpf, btf, name, hook, pins) {
            if program_names::LSM_FILE_NEWER.contains(&hook) {
                tracing::debug!(hook, error = %error, "hook not attached: this kernel predates it");
                continue;
            }
            return Err(error);
        }
    }
    Ok(())
}

/// Attaches the three LSM socket programs, or none: where one fails, those
/// already attached are detached, so that the cgroup socket programs that
/// then keep the promise do not judge each call twice.
fn attach_lsm_net(ebpf: &mut Ebpf, btf: &Btf, pins: &Pins) -> Result<(), String> {
    for (index, (name, hook)) in program_names::LSM_NET.iter().enumerate() {
        if let Err(error) = load_and_attach_lsm(ebpf, btf, name, hook, pins) {
            for (attached, _) in &program_names::LSM_NET[..index] {
                pins.unpin_link(attached);
            }
            return Err(error);
        }
    }
    Ok(())
}

fn load_and_attach_lsm(ebpf: &mut Ebpf, btf: &Btf, name: &str, hook: &str, pins: &Pins) -> Result<(), String> {
    let program: &mut Lsm = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object file"))?
        .try_into()
        .map_err(|error| format!("{name} is not an LSM program: {error}"))?;
    program
        .load(hook, btf)
        .map_err(|error| format!("failed to load {name} on hook {hook}: {error}"))?;
    let link = program
        .attach()
        .and_then(|id| program.take_link(id))
        .map_err(|error| format!("failed to attach {name} to hook {hook}: {error}"))?;
    pins.pin_link(name, FdLink::from(link)).map_err(|error| error.to_string())
}

/// Reads the struct member offsets the LSM programs need from the kernel's
/// BTF.
fn lsm_offsets() -> Result<LsmOffsets, String> {
    crate::btf::KernelBtf::from_sys_fs()
        .and_then(|btf| btf.lsm_offsets())
        .map_err(|error| error.to_string())
}

/// Reads the struct member offsets the LSM socket programs need from the
/// kernel's BTF.
fn lsm_net_offsets() -> Result<LsmNetOffsets, String> {
    crate::btf::KernelBtf::from_sys_fs()
        .and_then(|btf| btf.lsm_net_offsets())
        .map_err(|error| error.to_string())
}

/// Reads the struct member offsets the exec program needs from the
/// kernel's BTF.
fn exe_offsets() -> (ExeOffsets, Result<(), String>) {
    let offsets = crate::btf::KernelBtf::from_sys_fs().and_then(|btf| btf.exe_identity_offsets());
    match offsets {
        Ok(found) => (
            ExeOffsets {
                valid: 1,
                task_mm: found.task_mm,
                mm_exe_file: found.mm_exe_file,
                file_dentry: found.file_dentry,
                dentry_inode: found.dentry_inode,
                inode_ino: found.inode_ino,
                inode_sb: found.inode_sb,
                sb_dev: found.sb_dev,
            },
            Ok(()),
        ),
        Err(error) => (ExeOffsets::default(), Err(error.to_string())),
    }
}

/// Finds a program by name as its expected type.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::MissingProgram { name })?
        .try_into()
        .map_err(|source| KernelError::LoadProgram { name, source })
}

fn attach_error(name: &'static str, cgroup: &Path, source: ProgramError) -> KernelError {
    KernelError::Attach {
        name,
        path: cgroup.to_owned(),
        source,
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    event: &str,
    pins: &Pins,
) -> Result<(), KernelError> {
    let program: &mut TracePoint = program_mut(ebpf, name)?;
    program
        .load()
        .map_err(|source| KernelError::LoadProgram { name, source })?;
    let link = program
        .attach(category, event)
        .and_then(|id| program.take_link(id))
        .map_err(|source| KernelError::Attach {
            name,
            path: PathBuf::from(format!("tracepoint {category}/{event}")),
            source,
        })?;
    pin(pins, name, FdLink::try_from(link).map_err(|error| error.to_string()))
}

/// Loads and attaches one file tracepoint program. Program names are
/// built at run time, so errors carry them as text.
fn attach_file_tracepoint(ebpf: &mut Ebpf, name: &str, event: &str, pins: &Pins) -> Result<(), String> {
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object file"))?
        .try_into()
        .map_err(|error| format!("{name} is not a tracepoint program: {error}"))?;
    program.load().map_err(|error| format!("failed to load {name}: {error}"))?;
    let link = program
        .attach("syscalls", event)
        .and_then(|id| program.take_link(id))
        .map_err(|error| format!("failed to attach {name} to syscalls/{event}: {error}"))?;
    let link = FdLink::try_from(link).map_err(|error| format!("the link of {name} cannot be pinned: {error}"))?;
    pins.pin_link(name, link).map_err(|error| error.to_string())
}

/// Mounts tracefs on /sys/kernel/tracing unless it is mounted there or
/// below debugfs already: attaching a tracepoint program looks up the
/// event's id in it.
fn ensure_tracefs() -> Result<(), KernelError> {
    let mounted = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
        .iter()
        .any(|path| Path::new(path).is_dir());
    if mounted {
        return Ok(());
    }
    let result = unsafe {
        // SAFETY: every argument is a NUL-terminated string literal.
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        return Err(KernelError::MountTracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs on /sys/kernel/tracing");
    Ok(())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(KernelError::MissingMap { name })?;
    T::try_from(map).map_err(|source| KernelError::MapType { name, source })
}
