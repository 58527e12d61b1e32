//! Choosing an enforcement backend per promise at start-up, from what this
//! kernel really allows: the agent loads a tiny program of each kind and
//! looks at the outcome, never at version numbers.

use std::{fmt, fs, path::Path};

use aya::{Btf, Ebpf, programs::Lsm};
use parapet_common::program_names;
use serde::{Deserialize, Serialize};

/// The three promises Parapet keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Promise {
    /// Only allowed peers.
    Network,
    /// Read-only at runtime.
    Filesystem,
    /// Only expected programs.
    Exec,
}

impl Promise {
    pub const ALL: [Promise; 3] = [Promise::Network, Promise::Filesystem, Promise::Exec];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Filesystem => "filesystem",
            Self::Exec => "exec",
        }
    }

    /// Returns every backend that can keep this promise, strongest first.
    pub fn backends(self) -> &'static [Backend] {
        match self {
            Self::Network => &[Backend::Lsm, Backend::CgroupSocket],
            Self::Filesystem => &[Backend::Lsm, Backend::ReadOnlyMounts],
            Self::Exec => &[Backend::Lsm, Backend::ExecTracepoint],
        }
    }
}

/// A way of enforcing a promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// cgroup socket programs on connect and sendmsg, refusing with EPERM.
    CgroupSocket,
    /// BPF LSM hooks, refusing with EPERM before the operation happens.
    Lsm,
    /// The container's mounts made read-only from outside; the kernel
    /// refuses mutations with EROFS and tracepoints report them.
    ReadOnlyMounts,
    /// The exec tracepoint kills a refused program with SIGKILL before its
    /// first instruction.
    ExecTracepoint,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CgroupSocket => "cgroup-socket",
            Self::Lsm => "lsm",
            Self::ReadOnlyMounts => "read-only-mounts",
            Self::ExecTracepoint => "exec-tracepoint",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The backend chosen for one promise, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub promise: Promise,
    pub backend: Backend,
    pub reason: String,
}

/// Result of the start-up probe: what the kernel allowed.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Whether a BPF LSM program loads, with the kernel's error if not.
    pub lsm_loads: Result<(), String>,
    /// The active LSM list from securityfs, when it could be read. Without
    /// `bpf` in it, BPF LSM programs load and attach but enforce nothing.
    pub active_lsms: Option<String>,
    /// Whether the LSM file programs loaded and attached; `None` until
    /// they were tried, which happens only where `lsm_usable` is `Ok`.
    pub lsm_file: Option<Result<(), String>>,
    /// The same for the LSM exec program.
    pub lsm_exec: Option<Result<(), String>>,
    /// The same for the LSM socket programs.
    pub lsm_net: Option<Result<(), String>>,
}

impl Probe {
    /// Loads the probe program from `ebpf` and reads the active LSM list.
    /// The program is never attached.
    pub fn run(ebpf: &mut Ebpf) -> Self {
        Self {
            lsm_loads: probe_lsm(ebpf),
            active_lsms: read_active_lsms(),
            lsm_file: None,
            lsm_exec: None,
            lsm_net: None,
        }
    }

    /// Returns whether BPF LSM programs would enforce here, or why not.
    pub fn lsm_usable(&self) -> Result<(), String> {
        self.lsm_loads.clone()?;
        match &self.active_lsms {
            Some(list) if list.split(',').any(|lsm| lsm.trim() == "bpf") => Ok(()),
            Some(list) => Err(format!("bpf is not in the active LSM list ({})", list.trim())),
            None => Err("the active LSM list could not be read from securityfs".to_owned()),
        }
    }

    /// Returns why the LSM backend does not enforce all three promises
    /// here, or `Ok` when it does.
    pub fn lsm_backend_in_use(&self) -> Result<(), String> {
        self.lsm_usable()?;
        for (promise, attached) in [
            ("network", &self.lsm_net),
            ("filesystem", &self.lsm_file),
            ("exec", &self.lsm_exec),
        ] {
            match attached {
                Some(Ok(())) => {}
                Some(Err(error)) => return Err(format!("the LSM {promise} programs failed: {error}")),
                None => return Err(format!("the LSM {promise} programs were not loaded")),
            }
        }
        Ok(())
    }

    /// Chooses a backend per promise: the LSM backend wherever BPF LSM is
    /// usable and its programs attached, else the fallback, with the reason.
    pub fn choose(&self) -> Vec<Choice> {
        let lsm = self.lsm_usable();
        Promise::ALL
            .iter()
            .map(|&promise| {
                let (backend, reason) = match promise {
                    Promise::Network => match lsm_or(&lsm, &self.lsm_net, Backend::CgroupSocket) {
                        (Backend::CgroupSocket, why) => (
                            Backend::CgroupSocket,
                            format!("cgroup socket programs loaded and attached; {why}"),
                        ),
                        chosen => chosen,
                    },
                    Promise::Filesystem => lsm_or(&lsm, &self.lsm_file, Backend::ReadOnlyMounts),
                    Promise::Exec => lsm_or(&lsm, &self.lsm_exec, Backend::ExecTracepoint),
                };
                Choice {
                    promise,
                    backend,
                    reason,
                }
            })
            .collect()
    }
}

fn lsm_or(
    usable: &Result<(), String>,
    attached: &Option<Result<(), String>>,
    fallback: Backend,
) -> (Backend, String) {
    match (usable, attached) {
        (Err(error), _) => (fallback, format!("BPF LSM is not usable: {error}")),
        (Ok(()), Some(Ok(()))) => (Backend::Lsm, "BPF LSM programs loaded and attached".to_owned()),
        (Ok(()), Some(Err(error))) => (
            fallback,
            format!("BPF LSM is usable, but loading or attaching its programs failed: {error}"),
        ),
        (Ok(()), None) => (fallback, "BPF LSM is usable, but its programs were not loaded".to_owned()),
    }
}

fn probe_lsm(ebpf: &mut Ebpf) -> Result<(), String> {
    let name = program_names::PROBE_LSM;
    let btf = Btf::from_sys_fs().map_err(|error| format!("no kernel BTF: {error}"))?;
    let program: &mut Lsm = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is missing from the object file"))?
        .try_into()
        .map_err(|error| format!("program {name} is not an LSM program: {error}"))?;
    program
        .load("file_open", &btf)
        .map_err(|error| {
            let message = error.to_string();
            // aya appends the verifier log, which is empty when the kernel
            // refuses the program type outright.
            let message = message.trim_end_matches(". Verifier output: ").to_owned();
            format!("loading a BPF LSM program failed: {message}")
        })?;
    program
        .unload()
        .map_err(|error| format!("unloading the probe failed: {error}"))
}

/// Reads the active LSM list, mounting securityfs on /sys/kernel/security
/// first when it is not mounted.
fn read_active_lsms() -> Option<String> {
    let path = Path::new("/sys/kernel/security/lsm");
    if !path.exists() {
        // SAFETY: every argument is a NUL-terminated string literal.
        let mounted = unsafe {
            libc::mount(
                c"securityfs".as_ptr(),
                c"/sys/kernel/security".as_ptr(),
                c"securityfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            return None;
        }
        tracing::info!("mounted securityfs on /sys/kernel/security");
    }
    fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(lsm_loads: Result<(), String>, active: Option<&str>) -> Probe {
        Probe {
            lsm_loads,
            active_lsms: active.map(str::to_owned),
            lsm_file: None,
            lsm_exec: None,
            lsm_net: None,
        }
    }

    #[test]
    fn lsm_needs_bpf_in_the_active_list() {
        assert!(probe(Ok(()), Some("lockdown,capability,bpf")).lsm_usable().is_ok());
        let error = probe(Ok(()), Some("lockdown,capability,apparmor\n"))
            .lsm_usable()
            .unwrap_err();
        assert!(error.contains("bpf is not in the active LSM list"), "{error}");
        assert!(probe(Ok(()), None).lsm_usable().is_err());
        assert!(probe(Err("EPERM".into()), Some("bpf")).lsm_usable().is_err());
    }

    #[test]
    fn lsm_backend_in_use_needs_attached_programs() {
        let mut usable = probe(Ok(()), Some("bpf"));
        let error = usable.lsm_backend_in_use().unwrap_err();
        assert_eq!(error, "the LSM network programs were not loaded");
        usable.lsm_net = Some(Ok(()));
        let error = usable.lsm_backend_in_use().unwrap_err();
        assert_eq!(error, "the LSM filesystem programs were not loaded");
        usable.lsm_file = Some(Ok(()));
        usable.lsm_exec = Some(Err("verifier: invalid access".into()));
        let error = usable.lsm_backend_in_use().unwrap_err();
        assert_eq!(error, "the LSM exec programs failed: verifier: invalid access");
        usable.lsm_exec = Some(Ok(()));
        assert_eq!(usable.lsm_backend_in_use(), Ok(()));
        let refused = probe(Err("EPERM".into()), Some("bpf")).lsm_backend_in_use().unwrap_err();
        assert_eq!(refused, "EPERM");
    }

    #[test]
    fn fallbacks_chosen_with_the_reason() {
        let choices = probe(Err("loading failed: EPERM".into()), Some("bpf")).choose();
        assert_eq!(choices.len(), 3);
        let filesystem = &choices[1];
        assert_eq!(filesystem.promise, Promise::Filesystem);
        assert_eq!(filesystem.backend, Backend::ReadOnlyMounts);
        assert!(filesystem.reason.contains("EPERM"), "{}", filesystem.reason);
        assert_eq!(choices[2].backend, Backend::ExecTracepoint);
        assert_eq!(choices[0].backend, Backend::CgroupSocket);
        assert!(choices[0].reason.contains("BPF LSM is not usable"), "{}", choices[0].reason);
    }

    #[test]
    fn lsm_chosen_where_programs_attached() {
        let mut usable = probe(Ok(()), Some("capability,bpf"));
        usable.lsm_file = Some(Ok(()));
        usable.lsm_exec = Some(Err("no such hook".into()));
        usable.lsm_net = Some(Ok(()));
        let choices = usable.choose();
        assert_eq!(choices[0].backend, Backend::Lsm);
        assert_eq!(choices[1].backend, Backend::Lsm);
        assert_eq!(choices[2].backend, Backend::ExecTracepoint);
        assert!(choices[2].reason.contains("no such hook"), "{}", choices[2].reason);
    }
}
