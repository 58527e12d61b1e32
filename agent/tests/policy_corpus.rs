//! The policy corpus in `tests/policies/` at the repository root.
//!
//! Every file in `good/` must load. Every `NAME.yaml` in `bad/` must fail
//! with exactly the error lines in `NAME.expected`, as
//! `parapet policy check` prints them. The test reads each file by its
//! absolute path and removes the repository root from the output, so the
//! expected lines name files relative to the repository root (for example
//! `tests/policies/bad/port-zero.yaml:16:19: ...`) wherever the checkout is.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use parapet::policy::{
    FilesystemPolicy, Mode, Workload, check_files, evaluate_exec, exec_plan, load_dir, load_file,
    read_only_plan, select,
};
use parapet_common::Verdict;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the agent crate is one level below the repository root")
        .to_owned()
}

fn corpus_files(dir: &str, extension: &str) -> Vec<PathBuf> {
    let dir = repo_root().join("tests/policies").join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("failed to list {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|found| found == extension))
        .collect();
    files.sort();
    files
}

/// Returns the lines `parapet policy check FILE` prints for `file`, with
/// the repository root removed from every path.
fn check_output(file: &Path) -> String {
    let root = format!("{}/", repo_root().display());
    check_files(&[file.to_owned()])
        .to_string()
        .replace(&root, "")
}

#[test]
fn good_policies_load() {
    let files = corpus_files("good", "yaml");
    assert!(
        files.len() >= 5,
        "expected at least 5 good files, found {}",
        files.len()
    );
    for file in &files {
        let policies = load_file(file).unwrap_or_else(|error| panic!("{error}"));
        assert!(!policies.is_empty(), "{} has no policy", file.display());
    }
}

#[test]
fn good_policies_load_as_one_set() {
    let dir = repo_root().join("tests/policies/good");
    let policies = load_dir(&dir).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("{}", lines.join("\n"))
    });
    assert!(policies.iter().any(|policy| policy.name == "records-db"));
}

#[test]
fn good_policy_check_output() {
    let file = repo_root().join("tests/policies/good/multi-document.yaml");
    assert_eq!(
        check_output(&file),
        "tests/policies/good/multi-document.yaml: OK (records-api, billing-worker)\n"
    );
}

#[test]
fn good_filesystem_and_exec_sections() {
    let good = repo_root().join("tests/policies/good");
    let read_only = load_file(good.join("read-only-clinic-db.yaml")).unwrap();
    assert_eq!(
        read_only[0].filesystem,
        Some(FilesystemPolicy {
            read_only: true,
            writable_paths: vec![
                PathBuf::from("/tmp"),
                PathBuf::from("/var/run/postgresql"),
                PathBuf::from("/var/lib/postgresql/data"),
            ],
        })
    );
    let allow = load_file(good.join("exec-allow.yaml")).unwrap();
    let exec = allow[0].exec.as_ref().unwrap();
    assert_eq!(exec.allow.as_ref().map(Vec::len), Some(2));
    assert_eq!(exec.deny, Vec::<PathBuf>::new());
    let deny = load_file(good.join("exec-deny-tools.yaml")).unwrap();
    let exec = deny[0].exec.as_ref().unwrap();
    assert_eq!(exec.allow, None);
    assert!(exec.deny.contains(&PathBuf::from("/usr/bin/apt")));
    assert_eq!(deny[0].mode, Mode::Audit);
}

/// The records database is selected by three good policies, one for each
/// section, and combining them gives the rules of each.
#[test]
fn good_records_db_policies_combine() {
    let policies = load_dir(repo_root().join("tests/policies/good")).unwrap();
    let labels = BTreeMap::from([("app".to_owned(), "records-db".to_owned())]);
    let postgres = Workload {
        namespace: "clinic",
        pod_labels: &labels,
        container_name: Some("postgres"),
    };
    let selected = select(&policies, &postgres);
    let names: Vec<&str> = selected.iter().map(|policy| policy.name.as_str()).collect();
    assert_eq!(
        names,
        ["records-db", "records-db-programs", "records-db-read-only"]
    );

    let plan = read_only_plan(&selected).unwrap();
    assert_eq!(plan.mode, Mode::Enforce);
    assert_eq!(plan.policies, ["records-db-read-only"]);
    assert_eq!(
        plan.writable_paths,
        [
            Path::new("/tmp"),
            Path::new("/var/lib/postgresql/data"),
            Path::new("/var/run/postgresql"),
        ]
    );

    let exec = exec_plan(&selected).unwrap();
    assert_eq!(exec.policies.len(), 1);
    assert_eq!(exec.policies[0].policy, "records-db-programs");
    assert_eq!(exec.policies[0].mode, Mode::Enforce);
    // Identity by path alone: no file in the test has a second name.
    let same_path = |program: &Path, listed: &Path| program == listed;
    let server = Path::new("/usr/lib/postgresql/15/bin/postgres");
    let shell = Path::new("/bin/sh");
    assert_eq!(
        evaluate_exec(&selected, server, same_path).verdict,
        Verdict::Allow
    );
    assert_eq!(
        evaluate_exec(&selected, shell, same_path).verdict,
        Verdict::Deny
    );
}

#[test]
fn bad_policies_fail_as_expected() {
    let files = corpus_files("bad", "yaml");
    assert!(
        files.len() >= 50,
        "expected at least 50 bad files, found {}",
        files.len()
    );
    let mut mismatches = Vec::new();
    for file in &files {
        let expected_file = file.with_extension("expected");
        let Ok(expected) = fs::read_to_string(&expected_file) else {
            mismatches.push(format!("{} has no readable .expected file", file.display()));
            continue;
        };
        let actual = check_output(file);
        if actual.trim_end() != expected.trim_end() {
            mismatches.push(format!(
                "{}\n  expected: {}\n  actual:   {}",
                file.display(),
                expected.trim_end(),
                actual.trim_end()
            ));
        }
    }
    assert!(mismatches.is_empty(), "\n{}", mismatches.join("\n"));
}

#[test]
fn bad_error_lines_have_positions() {
    for file in corpus_files("bad", "yaml") {
        let output = check_output(&file);
        let relative = file
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        for line in output.lines() {
            let rest = line
                .strip_prefix(&format!("{relative}:"))
                .unwrap_or_else(|| panic!("line does not start with the file name: {line}"));
            let mut parts = rest.splitn(3, ':');
            let line_number: usize = parts.next().unwrap().parse().expect(line);
            let column: usize = parts.next().unwrap().parse().expect(line);
            assert!(line_number >= 1, "{line}");
            assert!(column >= 1, "{line}");
            assert!(parts.next().unwrap().starts_with(' '), "{line}");
        }
    }
}

#[test]
fn every_expected_file_has_a_policy_file() {
    for expected in corpus_files("bad", "expected") {
        assert!(
            expected.with_extension("yaml").exists(),
            "{} has no matching .yaml file",
            expected.display()
        );
    }
}
