//! Combination of the `filesystem` and `exec` sections of the policies that
//! select one workload, as pure functions: the read-only plan, the exec
//! sections per policy slot, and the exec decision.

use std::fmt;
use std::path::{Path, PathBuf};

use parapet_common::{Mode, Verdict};

use super::model::{ExecPolicy, Policy};

/// The combined demands of the read-only policies that select one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOnlyPlan {
    /// `Enforce` when at least one read-only policy is in enforce mode, else
    /// `Audit`.
    pub mode: Mode,
    /// Paths writable under every read-only policy, sorted, without
    /// repeats, none inside another. Each path makes everything below it
    /// writable. At least one read-only policy refuses a write anywhere
    /// else.
    pub writable_paths: Vec<PathBuf>,
    /// Paths writable under every read-only policy in enforce mode, in the
    /// same form, or `None` when no read-only policy is in enforce mode.
    /// A write outside these paths is blocked. A write inside them but
    /// outside `writable_paths` is refused only by audit-mode policies, so
    /// it goes through and is reported as an audit.
    pub enforced_writable_paths: Option<Vec<PathBuf>>,
    /// Names of the read-only policies, in the order given.
    pub policies: Vec<String>,
}

/// Combines the `filesystem` sections of the policies that select one
/// workload. Returns `None` when none of them has `readOnly: true`.
///
/// A path stays writable only if every read-only policy lists it or one of
/// its ancestors, so the result never allows more than any one of the
/// policies. Policies with `readOnly: false` or without a `filesystem`
/// section do not take part.
pub fn read_only_plan(policies: &[&Policy]) -> Option<ReadOnlyPlan> {
    let read_only: Vec<&Policy> = policies
        .iter()
        .copied()
        .filter(|policy| policy.filesystem.as_ref().is_some_and(|fs| fs.read_only))
        .collect();
    if read_only.is_empty() {
        return None;
    }
    let enforcing: Vec<&Policy> = read_only
        .iter()
        .copied()
        .filter(|policy| policy.mode == Mode::Enforce)
        .collect();
    let enforced_writable_paths = if enforcing.is_empty() {
        None
    } else {
        Some(writable_under_all(&enforcing))
    };
    let mode = if enforced_writable_paths.is_some() {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    Some(ReadOnlyPlan {
        mode,
        writable_paths: writable_under_all(&read_only),
        enforced_writable_paths,
        policies: read_only.iter().map(|policy| policy.name.clone()).collect(),
    })
}

fn writable_paths(policy: &Policy) -> &[PathBuf] {
    policy
        .filesystem
        .as_ref()
        .map_or(&[], |fs| fs.writable_paths.as_slice())
}

/// Returns the paths writable under every one of `policies`: each listed
/// path that every policy lists or covers with an ancestor, sorted, without
/// repeats and without paths inside another kept path.
///
/// This is the whole intersection. A path writable under every policy lies
/// below one listed path per policy, and these paths are ancestors of one
/// another, so the deepest of them is kept and covers it.
fn writable_under_all(policies: &[&Policy]) -> Vec<PathBuf> {
    let covered_by_all = |path: &Path| {
        policies.iter().all(|policy| {
            writable_paths(policy)
                .iter()
                .any(|writable| path.starts_with(writable))
        })
    };
    let mut common: Vec<PathBuf> = policies
        .iter()
        .flat_map(|policy| writable_paths(policy))
        .filter(|path| covered_by_all(path))
        .cloned()
        .collect();
    common.sort();
    common.dedup();
    // `Path` sorts by components, so the paths below a kept path come right
    // after it, and comparing with the last kept path finds them all.
    let mut outermost: Vec<PathBuf> = Vec::with_capacity(common.len());
    for path in common {
        if outermost.last().is_none_or(|last| !path.starts_with(last)) {
            outermost.push(path);
        }
    }
    outermost
}

/// The `exec` sections of the policies that select one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecPlan {
    /// One entry per policy with an `exec` section, in the order given.
    /// The kernel checks each policy slot on its own, so the lists are kept
    /// per policy and not merged.
    pub policies: Vec<PolicyExec>,
}

/// The `exec` section of one policy, with what its kernel slot needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyExec {
    pub policy: String,
    pub mode: Mode,
    pub exec: ExecPolicy,
}

impl ExecPlan {
    /// Returns every path that an allow or deny list names, sorted and
    /// without repeats: the files whose identity (device and inode) the
    /// agent looks up to fill the kernel entries.
    pub fn paths(&self) -> Vec<&Path> {
        let mut paths: Vec<&Path> = self
            .policies
            .iter()
            .flat_map(|entry| {
                let allow = entry.exec.allow.iter().flatten();
                allow.chain(&entry.exec.deny).map(PathBuf::as_path)
            })
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

/// Collects the `exec` sections of the policies that select one workload.
/// Returns `None` when none of them has one.
pub fn exec_plan(policies: &[&Policy]) -> Option<ExecPlan> {
    let entries: Vec<PolicyExec> = policies
        .iter()
        .filter_map(|policy| {
            policy.exec.as_ref().map(|exec| PolicyExec {
                policy: policy.name.clone(),
                mode: policy.mode,
                exec: exec.clone(),
            })
        })
        .collect();
    if entries.is_empty() {
        None
    } else {
        Some(ExecPlan { policies: entries })
    }
}

/// The list entry of a policy that decided an exec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecEntry {
    /// Index into `spec.exec.allow`.
    Allow(usize),
    /// Index into `spec.exec.deny`.
    Deny(usize),
}

/// Writes the field path, such as `spec.exec.deny[1]`.
impl fmt::Display for ExecEntry {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ExecEntry::Allow(index) => write!(formatter, "spec.exec.allow[{index}]"),
            ExecEntry::Deny(index) => write!(formatter, "spec.exec.deny[{index}]"),
        }
    }
}

/// The outcome of [`evaluate_exec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecDecision<'a> {
    pub verdict: Verdict,
    /// For `Deny` and `Audit`: the first policy, in the order given, that
    /// refused, preferring enforce-mode policies. For `Allow`: the first
    /// policy with an `exec` section, or `None` when none has one.
    pub policy: Option<&'a str>,
    /// The entry of `policy` that decided: `Deny(i)` when its deny list
    /// names the program, `Allow(i)` when its allow list does. `None` when
    /// `policy` refused a program missing from its allow list, when it has
    /// only a deny list that does not name the program, or when `policy` is
    /// `None`.
    pub entry: Option<ExecEntry>,
}

/// Decides whether a workload that `policies` select may run the program
/// at `path`, the absolute path of the program file.
///
/// `identity_matches(program, listed)` returns whether the program being
/// run is the same file as the one that the list entry `listed` names: the
/// same device and inode, after following symbolic links. A hard link under
/// another name is the same file. A copy is a different file.
///
/// Each policy with an `exec` section decides on its own:
///
/// 1. It refuses the program when its deny list names it, by identity or
///    by path (`Path` equality, component by component). The path match
///    still refuses a program that was replaced at a denied path.
/// 2. Otherwise, when it has an allow list, it allows the program only when
///    the program is the same file as one of the entries, by identity
///    alone: another file put at an allowed path is refused. An empty allow
///    list refuses every program.
/// 3. Otherwise it allows the program.
///
/// The verdicts combine by the stricter-wins rule of the module
/// documentation: a refusal by an enforce-mode policy is `Deny`, refusals
/// by audit-mode policies alone are `Audit`, and a program that no policy
/// refuses is `Allow`.
pub fn evaluate_exec<'a>(
    policies: &[&'a Policy],
    path: &Path,
    identity_matches: impl Fn(&Path, &Path) -> bool,
) -> ExecDecision<'a> {
    let mut first_restricting = None;
    let mut first_audit = None;
    for policy in policies {
        let Some(exec) = &policy.exec else {
            continue;
        };
        let (allowed, entry) = judge_exec(exec, path, &identity_matches);
        let decision = ExecDecision {
            verdict: Verdict::Allow,
            policy: Some(policy.name.as_str()),
            entry,
        };
        match (allowed, policy.mode) {
            (true, _) => {
                first_restricting.get_or_insert(decision);
            }
            (false, Mode::Enforce) => {
                return ExecDecision {
                    verdict: Verdict::Deny,
                    ..decision
                };
            }
            (false, Mode::Audit) => {
                first_audit.get_or_insert(ExecDecision {
                    verdict: Verdict::Audit,
                    ..decision
                });
            }
        }
    }
    first_audit.or(first_restricting).unwrap_or(ExecDecision {
        verdict: Verdict::Allow,
        policy: None,
        entry: None,
    })
}

/// Applies one policy's `exec` section to a program: whether it allows the
/// program, and the entry that decided, if one did.
fn judge_exec(
    exec: &ExecPolicy,
    path: &Path,
    identity_matches: &impl Fn(&Path, &Path) -> bool,
) -> (bool, Option<ExecEntry>) {
    let denied = exec
        .deny
        .iter()
        .position(|listed| listed.as_path() == path || identity_matches(path, listed));
    if let Some(index) = denied {
        return (false, Some(ExecEntry::Deny(index)));
    }
    let Some(allow) = &exec.allow else {
        return (true, None);
    };
    match allow
        .iter()
        .position(|listed| identity_matches(path, listed))
    {
        Some(index) => (true, Some(ExecEntry::Allow(index))),
        None => (false, None),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::policy::{FilesystemPolicy, parse_str};

    fn policy(name: &str, mode: &str, sections: &str) -> Policy {
        let text = format!(
            "apiVersion: parapet.dev/v1alpha1\nkind: RuntimePolicy\nmetadata:\n  name: {name}\n\
             spec:\n  selector: {{namespace: clinic}}\n  mode: {mode}\n{sections}"
        );
        let mut policies = parse_str(&text, Path::new("test.yaml"))
            .unwrap_or_else(|errors| panic!("{text}\n{errors:?}"));
        policies.remove(0)
    }

    fn read_only(name: &str, mode: &str, writable: &str) -> Policy {
        policy(
            name,
            mode,
            &format!("  filesystem: {{readOnly: true, writablePaths: [{writable}]}}\n"),
        )
    }

    fn paths(values: &[&str]) -> Vec<PathBuf> {
        values.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn plan_none_without_read_only_policy() {
        let open = policy("open", "enforce", "");
        let writable = policy("writable", "enforce", "  filesystem: {readOnly: false}\n");
        assert_eq!(read_only_plan(&[]), None);
        assert_eq!(read_only_plan(&[&open, &writable]), None);
    }

    #[test]
    fn plan_of_one_policy_is_sorted() {
        let db = read_only("db", "enforce", "/var/run/postgresql, /tmp");
        assert_eq!(
            read_only_plan(&[&db]),
            Some(ReadOnlyPlan {
                mode: Mode::Enforce,
                writable_paths: paths(&["/tmp", "/var/run/postgresql"]),
                enforced_writable_paths: Some(paths(&["/tmp", "/var/run/postgresql"])),
                policies: vec!["db".to_owned()],
            })
        );
    }

    #[test]
    fn plan_without_writable_paths() {
        let sealed = policy("sealed", "enforce", "  filesystem: {readOnly: true}\n");
        let plan = read_only_plan(&[&sealed]).unwrap();
        assert_eq!(plan.writable_paths, Vec::<PathBuf>::new());
        assert_eq!(plan.enforced_writable_paths, Some(Vec::new()));
    }

    #[test]
    fn plan_keeps_paths_writable_under_all() {
        let first = read_only("first", "enforce", "/tmp, /var/run/postgresql, /data");
        let second = read_only("second", "enforce", "/var/run, /tmp/cache, /srv");
        for order in [[&first, &second], [&second, &first]] {
            let plan = read_only_plan(&order).unwrap();
            // /tmp/cache is inside first's /tmp, /var/run/postgresql inside
            // second's /var/run. /tmp, /var/run, /data and /srv are each
            // writable under one policy only.
            assert_eq!(
                plan.writable_paths,
                paths(&["/tmp/cache", "/var/run/postgresql"])
            );
        }
    }

    #[test]
    fn plan_deduplicates_shared_paths() {
        let first = read_only("first", "enforce", "/tmp, /data");
        let second = read_only("second", "audit", "/data, /tmp");
        let plan = read_only_plan(&[&first, &second]).unwrap();
        assert_eq!(plan.writable_paths, paths(&["/data", "/tmp"]));
        assert_eq!(plan.policies, ["first", "second"]);
    }

    #[test]
    fn plan_sibling_names_are_not_ancestors() {
        let first = read_only("first", "enforce", "/var/run");
        let second = read_only("second", "enforce", "/var/run2");
        let plan = read_only_plan(&[&first, &second]).unwrap();
        assert_eq!(plan.writable_paths, Vec::<PathBuf>::new());
    }

    #[test]
    fn plan_drops_nested_entries() {
        // Policies read from files never list nested paths. A hand-built one
        // can, and the plan still lists only the outer path.
        let mut nested = read_only("nested", "enforce", "/tmp");
        nested.filesystem = Some(FilesystemPolicy {
            read_only: true,
            writable_paths: paths(&["/var/lib/db", "/var", "/var/lib"]),
        });
        let other = read_only("other", "enforce", "/var, /srv");
        let plan = read_only_plan(&[&nested, &other]).unwrap();
        assert_eq!(plan.writable_paths, paths(&["/var"]));
    }

    #[test]
    fn plan_ignores_policies_that_are_not_read_only() {
        let open = policy("open", "enforce", "  filesystem: {readOnly: false}\n");
        let none = policy("none", "enforce", "");
        let audit = read_only("watch", "audit", "/tmp");
        let plan = read_only_plan(&[&open, &none, &audit]).unwrap();
        assert_eq!(plan.mode, Mode::Audit);
        assert_eq!(plan.writable_paths, paths(&["/tmp"]));
        assert_eq!(plan.enforced_writable_paths, None);
        assert_eq!(plan.policies, ["watch"]);
    }

    #[test]
    fn plan_audit_policy_does_not_block() {
        let guard = read_only("guard", "enforce", "/tmp, /cache");
        let watch = read_only("watch", "audit", "/tmp");
        let plan = read_only_plan(&[&watch, &guard]).unwrap();
        assert_eq!(plan.mode, Mode::Enforce);
        // Writes to /cache are refused by the audit policy only: reported,
        // not blocked.
        assert_eq!(plan.writable_paths, paths(&["/tmp"]));
        assert_eq!(
            plan.enforced_writable_paths,
            Some(paths(&["/cache", "/tmp"]))
        );
        assert_eq!(plan.policies, ["watch", "guard"]);
    }

    #[test]
    fn exec_plan_keeps_each_policy() {
        let network_only = policy("net", "enforce", "  network: {egress: []}\n");
        let allow = policy(
            "allow",
            "enforce",
            "  exec: {allow: [/bin/sh, /usr/bin/postgres]}\n",
        );
        let deny = policy("deny", "audit", "  exec: {deny: [/usr/bin/apt, /bin/sh]}\n");
        assert_eq!(exec_plan(&[&network_only]), None);
        let plan = exec_plan(&[&allow, &network_only, &deny]).unwrap();
        let names: Vec<&str> = plan
            .policies
            .iter()
            .map(|entry| entry.policy.as_str())
            .collect();
        assert_eq!(names, ["allow", "deny"]);
        assert_eq!(plan.policies[1].mode, Mode::Audit);
        assert_eq!(plan.policies[1].exec, deny.exec.clone().unwrap());
        assert_eq!(
            plan.paths(),
            [
                Path::new("/bin/sh"),
                Path::new("/usr/bin/apt"),
                Path::new("/usr/bin/postgres")
            ]
        );
    }

    const POSTGRES: &str = "/usr/lib/postgresql/15/bin/postgres";

    /// Inode numbers of the files in the tests: `/usr/local/bin/pg` is a
    /// hard link to the postgres binary, `/tmp/postgres` a copy of it, and
    /// `/tmp/sh` a hard link to busybox.
    fn inodes() -> HashMap<&'static Path, u64> {
        HashMap::from([
            (Path::new(POSTGRES), 10),
            (Path::new("/usr/local/bin/pg"), 10),
            (Path::new("/tmp/postgres"), 11),
            (Path::new("/bin/sh"), 20),
            (Path::new("/bin/busybox"), 30),
            (Path::new("/tmp/sh"), 30),
            (Path::new("/usr/bin/apt"), 40),
        ])
    }

    fn decide<'a>(policies: &[&'a Policy], path: &str) -> ExecDecision<'a> {
        let inodes = inodes();
        let same_file = |program: &Path, listed: &Path| {
            let program = inodes.get(program);
            program.is_some() && program == inodes.get(listed)
        };
        evaluate_exec(policies, Path::new(path), same_file)
    }

    fn verdict(policies: &[&Policy], path: &str) -> Verdict {
        decide(policies, path).verdict
    }

    fn allow_postgres(name: &str, mode: &str) -> Policy {
        policy(
            name,
            mode,
            &format!("  exec:\n    allow: [/bin/sh, {POSTGRES}]\n"),
        )
    }

    #[test]
    fn exec_unrestricted_without_exec_section() {
        let open = policy("open", "enforce", "");
        let expected = ExecDecision {
            verdict: Verdict::Allow,
            policy: None,
            entry: None,
        };
        assert_eq!(decide(&[&open], "/bin/sh"), expected);
        assert_eq!(decide(&[], "/bin/sh"), expected);
    }

    #[test]
    fn exec_allow_list() {
        let db = allow_postgres("db", "enforce");
        assert_eq!(
            decide(&[&db], POSTGRES),
            ExecDecision {
                verdict: Verdict::Allow,
                policy: Some("db"),
                entry: Some(ExecEntry::Allow(1)),
            }
        );
        assert_eq!(
            decide(&[&db], "/usr/bin/apt"),
            ExecDecision {
                verdict: Verdict::Deny,
                policy: Some("db"),
                entry: None,
            }
        );
    }

    #[test]
    fn exec_allow_matches_hard_link_not_copy() {
        let db = allow_postgres("db", "enforce");
        assert_eq!(
            decide(&[&db], "/usr/local/bin/pg").entry,
            Some(ExecEntry::Allow(1))
        );
        assert_eq!(verdict(&[&db], "/usr/local/bin/pg"), Verdict::Allow);
        assert_eq!(verdict(&[&db], "/tmp/postgres"), Verdict::Deny);
    }

    #[test]
    fn exec_allow_ignores_path_of_other_file() {
        // The file at an allowed path was replaced: same path, new identity.
        let db = allow_postgres("db", "enforce");
        let never_same = |_: &Path, _: &Path| false;
        let decision = evaluate_exec(&[&db], Path::new(POSTGRES), never_same);
        assert_eq!(decision.verdict, Verdict::Deny);
    }

    #[test]
    fn exec_empty_allow_refuses_everything() {
        let sealed = policy("sealed", "enforce", "  exec: {allow: []}\n");
        for program in [POSTGRES, "/bin/sh", "/nonexistent"] {
            assert_eq!(verdict(&[&sealed], program), Verdict::Deny, "{program}");
        }
    }

    #[test]
    fn exec_deny_list() {
        let no_tools = policy(
            "no-tools",
            "enforce",
            "  exec: {deny: [/bin/busybox, /usr/bin/apt]}\n",
        );
        assert_eq!(
            decide(&[&no_tools], "/usr/bin/apt"),
            ExecDecision {
                verdict: Verdict::Deny,
                policy: Some("no-tools"),
                entry: Some(ExecEntry::Deny(1)),
            }
        );
        assert_eq!(
            decide(&[&no_tools], POSTGRES),
            ExecDecision {
                verdict: Verdict::Allow,
                policy: Some("no-tools"),
                entry: None,
            }
        );
    }

    #[test]
    fn exec_deny_matches_hard_link_and_path() {
        let no_tools = policy("no-tools", "enforce", "  exec: {deny: [/bin/busybox]}\n");
        // A hard link under another name is the same file.
        assert_eq!(
            decide(&[&no_tools], "/tmp/sh").entry,
            Some(ExecEntry::Deny(0))
        );
        // A file replaced at the denied path has a new identity, and the
        // path still matches.
        let never_same = |_: &Path, _: &Path| false;
        let decision = evaluate_exec(&[&no_tools], Path::new("/bin/busybox"), never_same);
        assert_eq!(decision.verdict, Verdict::Deny);
        assert_eq!(decision.entry, Some(ExecEntry::Deny(0)));
        // A copy is a different file at a different path.
        let copy = evaluate_exec(&[&no_tools], Path::new("/tmp/busybox"), never_same);
        assert_eq!(copy.verdict, Verdict::Allow);
    }

    #[test]
    fn exec_deny_wins_within_policy() {
        // /tmp/sh is a hard link to busybox: allowed by identity in allow,
        // denied in deny through another link. Deny is checked first.
        let mixed = policy(
            "mixed",
            "enforce",
            "  exec: {allow: [/tmp/sh], deny: [/bin/busybox]}\n",
        );
        assert_eq!(decide(&[&mixed], "/tmp/sh").entry, Some(ExecEntry::Deny(0)));
        assert_eq!(verdict(&[&mixed], "/tmp/sh"), Verdict::Deny);
    }

    #[test]
    fn exec_every_allow_list_must_allow() {
        let db = allow_postgres("db", "enforce");
        let shell_only = policy("shell-only", "enforce", "  exec: {allow: [/bin/sh]}\n");
        for order in [[&db, &shell_only], [&shell_only, &db]] {
            assert_eq!(verdict(&order, "/bin/sh"), Verdict::Allow);
            assert_eq!(
                decide(&order, POSTGRES),
                ExecDecision {
                    verdict: Verdict::Deny,
                    policy: Some("shell-only"),
                    entry: None,
                }
            );
        }
    }

    #[test]
    fn exec_deny_overrides_other_allow() {
        let db = allow_postgres("db", "enforce");
        let no_shell = policy("no-shell", "enforce", "  exec: {deny: [/bin/sh]}\n");
        assert_eq!(
            decide(&[&db, &no_shell], "/bin/sh"),
            ExecDecision {
                verdict: Verdict::Deny,
                policy: Some("no-shell"),
                entry: Some(ExecEntry::Deny(0)),
            }
        );
        assert_eq!(
            decide(&[&db, &no_shell], POSTGRES),
            ExecDecision {
                verdict: Verdict::Allow,
                policy: Some("db"),
                entry: Some(ExecEntry::Allow(1)),
            }
        );
    }

    #[test]
    fn exec_audit_refusal_goes_through() {
        let watch = policy("watch", "audit", "  exec: {deny: [/bin/sh]}\n");
        let guard = allow_postgres("guard", "enforce");
        assert_eq!(
            decide(&[&guard, &watch], "/bin/sh"),
            ExecDecision {
                verdict: Verdict::Audit,
                policy: Some("watch"),
                entry: Some(ExecEntry::Deny(0)),
            }
        );
    }

    #[test]
    fn exec_enforce_refusal_beats_audit() {
        let watch = policy("watch", "audit", "  exec: {allow: [/bin/sh]}\n");
        let guard = policy("guard", "enforce", "  exec: {deny: [/usr/bin/apt]}\n");
        assert_eq!(
            decide(&[&watch, &guard], "/usr/bin/apt"),
            ExecDecision {
                verdict: Verdict::Deny,
                policy: Some("guard"),
                entry: Some(ExecEntry::Deny(0)),
            }
        );
        assert_eq!(
            decide(&[&watch, &guard], POSTGRES),
            ExecDecision {
                verdict: Verdict::Audit,
                policy: Some("watch"),
                entry: None,
            }
        );
    }

    #[test]
    fn exec_entry_field_paths() {
        assert_eq!(ExecEntry::Allow(3).to_string(), "spec.exec.allow[3]");
        assert_eq!(ExecEntry::Deny(0).to_string(), "spec.exec.deny[0]");
    }
}
