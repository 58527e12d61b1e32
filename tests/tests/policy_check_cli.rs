//! `parapet policy check` as an operator runs it: the real binary, on the
//! policy corpus, from the repository root with relative paths.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is one level below the repository root")
        .to_owned()
}

fn policy_check(files: &[&str]) -> Result<(bool, String)> {
    let output = Command::new(parapet_tests::agent::parapet_bin()?)
        .current_dir(repo_root())
        .args(["policy", "check"])
        .args(files)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    Ok((output.status.success(), text))
}

#[test]
fn check_accepts_the_valid_corpus() -> Result<()> {
    // The examples in deploy/20-policies.yaml are checked by `cargo xtask
    // test`, which takes them out of the ConfigMap.
    let files: Vec<String> = std::fs::read_dir(repo_root().join("tests/policies/good"))?
        .map(|entry| entry.map(|e| format!("tests/policies/good/{}", e.file_name().to_string_lossy())))
        .collect::<Result<_, _>>()?;
    let arguments: Vec<&str> = files.iter().map(String::as_str).collect();
    let (success, output) = policy_check(&arguments)?;
    assert!(success, "{output}");
    for file in &files {
        assert!(output.contains(&format!("{file}: OK")), "{file} missing from:\n{output}");
    }
    Ok(())
}

#[test]
fn check_names_file_line_and_column() -> Result<()> {
    for (file, expected) in [
        ("tests/policies/bad/malformed-yaml.yaml", "tests/policies/bad/malformed-yaml.yaml:10:7: invalid YAML"),
        (
            "tests/policies/bad/misspelled-egress.yaml",
            "tests/policies/bad/misspelled-egress.yaml:12:5: spec.network: unknown field `egres`",
        ),
        (
            "tests/policies/bad/invalid-cidr.yaml",
            "tests/policies/bad/invalid-cidr.yaml:",
        ),
    ] {
        let (success, output) = policy_check(&[file])?;
        assert!(!success, "{file} passed the check:\n{output}");
        assert!(output.contains(expected), "expected {expected:?} in:\n{output}");
        let expected_lines = std::fs::read_to_string(repo_root().join(file.replace(".yaml", ".expected")))?;
        for line in expected_lines.lines() {
            assert!(output.contains(line), "expected {line:?} in:\n{output}");
        }
    }
    Ok(())
}

#[test]
fn check_fails_when_any_file_is_invalid() -> Result<()> {
    let (success, output) = policy_check(&[
        "tests/policies/good/deny-all-egress.yaml",
        "tests/policies/bad/port-zero.yaml",
    ])?;
    assert!(!success, "{output}");
    assert!(output.contains("tests/policies/good/deny-all-egress.yaml: OK"), "{output}");
    assert!(output.contains("tests/policies/bad/port-zero.yaml:"), "{output}");
    Ok(())
}

#[test]
fn check_reports_a_missing_file() -> Result<()> {
    let (success, output) = policy_check(&["tests/policies/no-such-file.yaml"])?;
    assert!(!success);
    assert!(output.contains("tests/policies/no-such-file.yaml:1:1:"), "{output}");
    Ok(())
}

/// Every `NAME.yaml` in `tests/policies/bad/` through the binary: the
/// output must be exactly `NAME.expected`, and the exit status a failure.
#[test]
fn check_output_matches_every_bad_case() -> Result<()> {
    let bad = repo_root().join("tests/policies/bad");
    let mut names: Vec<String> = std::fs::read_dir(&bad)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let cases: Vec<&str> = names.iter().filter_map(|name| name.strip_suffix(".yaml")).collect();
    assert!(cases.len() >= 50, "expected at least 50 bad cases, found {}", cases.len());
    let mut mismatches = Vec::new();
    for case in &cases {
        let file = format!("tests/policies/bad/{case}.yaml");
        let expected = std::fs::read_to_string(bad.join(format!("{case}.expected")))
            .map_err(|error| anyhow::anyhow!("{file} has no .expected file: {error}"))?;
        let (success, output) = policy_check(&[&file])?;
        if success {
            mismatches.push(format!("{file}: the check passed:\n{output}"));
        } else if output != expected {
            mismatches.push(format!("{file}:\n  expected: {expected}  actual:   {output}"));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} cases differ:\n{}", mismatches.len(), cases.len(), mismatches.join("\n"));
    Ok(())
}

/// A file one byte over the 1 MiB limit is rejected before it is parsed.
#[test]
fn check_rejects_file_over_size_limit() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("parapet-policy-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("large.yaml");
    let mut text = std::fs::read_to_string(repo_root().join("tests/policies/good/clinic.yaml"))?;
    text.push_str(&"#".repeat((1 << 20) - text.len()));
    text.push('\n');
    std::fs::write(&file, &text)?;
    let output = Command::new(parapet_tests::agent::parapet_bin()?)
        .args(["policy", "check"])
        .arg(&file)
        .output()?;
    std::fs::remove_dir_all(&dir)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert_eq!(
        stdout,
        format!(
            "{}:1:1: policy file is larger than the limit of 1048576 bytes (1 MiB). Split it into \
             several files\n",
            file.display()
        )
    );
    Ok(())
}
