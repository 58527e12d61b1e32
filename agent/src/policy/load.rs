//! Reading policy files and directories, errors with positions, and the
//! checks that span a whole set of policies.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::model::{NetworkPolicy, Policy};
use super::schema::PolicyDocument;
use super::yaml::{self, NodeBudget, Scan};
use super::{MAX_FILE_BYTES, MAX_POLICIES};
use parapet_common::net::MAX_NET_RULES;

/// A position in a policy file. Both numbers start at 1, and columns count
/// characters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    /// The start of a file: the position of errors about the file as a whole
    /// (it cannot be read, it is too large).
    pub const FILE_START: Position = Position { line: 1, column: 1 };
}

/// An error in a policy file. `Display` writes `FILE:LINE:COLUMN: MESSAGE`,
/// and the message starts with the field path (such as
/// `spec.network.egress[0].to[1].cidr: `) when the error is about a field.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{}:{}:{}: {message}", file.display(), position.line, position.column)]
pub struct PolicyError {
    pub file: PathBuf,
    pub position: Position,
    pub message: String,
}

impl PolicyError {
    fn new(file: &Path, position: Position, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            position,
            message: message.into(),
        }
    }
}

/// Reads one policy file and checks it as a complete set: every document,
/// and names unique within the file.
///
/// Returns the first error; [`check_files`] reports all of them.
pub fn load_file(path: impl AsRef<Path>) -> Result<Vec<Policy>, PolicyError> {
    let path = path.as_ref();
    let policies = read_file(path).map_err(first_error)?;
    match check_set(&policies).into_iter().next() {
        Some(error) => Err(error),
        None => Ok(policies),
    }
}

/// Reads every policy file of a directory: the `*.yaml` and `*.yml`
/// entries, following symbolic links, in the order of their names.
///
/// Entries whose name starts with `.` are skipped. A Kubernetes ConfigMap
/// volume keeps its real files in such entries (`..data` and
/// `..2024_01_01_00_00_00.000000000`), and its visible files are symbolic
/// links into them. Subdirectories are not read.
///
/// Either every file is valid and the policies form a valid set (unique
/// names, at most [`MAX_POLICIES`]), or the result is every error found, so
/// that a caller can keep the policies it had before.
pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<Policy>, Vec<PolicyError>> {
    let files = read_dir_files(dir.as_ref()).map_err(|error| vec![error])?;
    load_files(&files)
}

/// A policy file of a directory, read at one moment: its bytes, or the
/// error that reading it gave.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileContents {
    /// The path in the directory, as errors name it.
    pub path: PathBuf,
    /// The path with every symbolic link resolved, or `None` when it cannot
    /// be resolved. It changes when a ConfigMap's `..data` link is swapped.
    pub resolved: Option<PathBuf>,
    pub bytes: Result<Vec<u8>, PolicyError>,
}

/// Reads the policy files of a directory that [`load_dir`] reads, so that
/// the caller can compare two readings before it loads one with
/// [`load_files`]. Fails only when the directory cannot be listed.
pub fn read_dir_files(dir: &Path) -> Result<Vec<FileContents>, PolicyError> {
    let files = policy_files(dir)?;
    Ok(files
        .into_iter()
        .map(|path| FileContents {
            resolved: fs::canonicalize(&path).ok(),
            bytes: read_bytes(&path),
            path,
        })
        .collect())
}

/// Parses and checks files read by [`read_dir_files`] as one set, with the
/// same result as [`load_dir`] would give for those contents.
pub fn load_files(files: &[FileContents]) -> Result<Vec<Policy>, Vec<PolicyError>> {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        let parsed = match &file.bytes {
            Ok(bytes) => parse_bytes(bytes, &file.path),
            Err(error) => Err(vec![error.clone()]),
        };
        match parsed {
            Ok(file_policies) => policies.extend(file_policies),
            Err(file_errors) => errors.extend(file_errors),
        }
    }
    errors.extend(check_set(&policies));
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// Lists the policy files of `dir`, sorted by name.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let list_error = |error: std::io::Error| {
        PolicyError::new(
            dir,
            Position::FILE_START,
            format!("failed to list policy directory: {error}"),
        )
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
            tracing::debug!(path = %path.display(), "skipping entry whose name is not UTF-8");
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            tracing::debug!(path = %path.display(), "skipping entry that is not a YAML file");
            continue;
        }
        // A broken link, and an entry that is not a regular file, are
        // reported when the file is read.
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Result of `parapet policy check` for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    pub path: PathBuf,
    /// Names of the policies found, in file order.
    pub policies: Vec<String>,
    /// Every error found. The file is valid when this is empty.
    pub errors: Vec<PolicyError>,
}

/// Result of `parapet policy check FILE...`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// One report per file, in the order the files were given.
    pub files: Vec<FileReport>,
}

impl CheckReport {
    /// Returns whether every file is valid and the files together form a
    /// valid set.
    pub fn all_valid(&self) -> bool {
        self.files.iter().all(|file| file.errors.is_empty())
    }

    /// Returns every error, file by file.
    pub fn errors(&self) -> impl Iterator<Item = &PolicyError> {
        self.files.iter().flat_map(|file| &file.errors)
    }
}

/// One line per valid file (`FILE: OK (NAME, ...)`) and one line per error
/// (`FILE:LINE:COLUMN: MESSAGE`).
impl fmt::Display for CheckReport {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        for file in &self.files {
            if !file.errors.is_empty() {
                for error in &file.errors {
                    writeln!(formatter, "{error}")?;
                }
            } else if file.policies.is_empty() {
                writeln!(formatter, "{}: OK (no policies)", file.path.display())?;
            } else {
                let names = file.policies.join(", ");
                writeln!(formatter, "{}: OK ({names})", file.path.display())?;
            }
        }
        Ok(())
    }
}

/// Checks policy files offline, as `parapet policy check FILE...` does:
/// each file on its own, then all of them together as one set (unique
/// names, at most [`MAX_POLICIES`]).
pub fn check_files(paths: &[PathBuf]) -> CheckReport {
    check_results(paths.iter().map(|path| (path.clone(), read_file(path))))
}

/// Checks policy files given as their contents, as [`check_files`] checks
/// the same bytes read from `sources[i].0`. For tests and fuzzing.
pub fn check_sources(sources: &[(PathBuf, &[u8])]) -> CheckReport {
    check_results(
        sources
            .iter()
            .map(|(path, bytes)| (path.clone(), parse_bytes(bytes, path))),
    )
}

fn check_results(
    results: impl Iterator<Item = (PathBuf, Result<Vec<Policy>, Vec<PolicyError>>)>,
) -> CheckReport {
    let mut files = Vec::new();
    let mut policies = Vec::new();
    for (path, result) in results {
        let mut report = FileReport {
            path,
            policies: Vec::new(),
            errors: Vec::new(),
        };
        match result {
            Ok(file_policies) => {
                report.policies = file_policies
                    .iter()
                    .map(|policy| policy.name.clone())
                    .collect();
                policies.extend(file_policies);
            }
            Err(errors) => report.errors = errors,
        }
        files.push(report);
    }
    for error in check_set(&policies) {
        if let Some(report) = files.iter_mut().find(|report| report.path == error.file) {
            report.errors.push(error);
        }
    }
    CheckReport { files }
}

/// Checks what only the whole set can show: every name is unique, and the
/// set has at most [`MAX_POLICIES`] policies.
fn check_set(policies: &[Policy]) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    let mut first_by_name: HashMap<&str, &Policy> = HashMap::new();
    for policy in policies {
        if let Some(first) = first_by_name.get(policy.name.as_str()) {
            errors.push(PolicyError::new(
                &policy.source,
                policy.position,
                format!(
                    "metadata.name: duplicate policy name {:?}, also defined at {}:{}:{}",
                    policy.name,
                    first.source.display(),
                    first.position.line,
                    first.position.column
                ),
            ));
        } else {
            first_by_name.insert(&policy.name, policy);
        }
    }
    if let Some(extra) = policies.get(MAX_POLICIES) {
        errors.push(PolicyError::new(
            &extra.source,
            extra.position,
            format!(
                "too many policies: the set has {}, the maximum is {MAX_POLICIES}",
                policies.len()
            ),
        ));
    }
    errors
}

fn first_error(errors: Vec<PolicyError>) -> PolicyError {
    errors
        .into_iter()
        .next()
        .expect("read_file never returns an empty error list")
}

/// Reads one file: its size, its encoding, then its documents.
fn read_file(path: &Path) -> Result<Vec<Policy>, Vec<PolicyError>> {
    let bytes = read_bytes(path).map_err(|error| vec![error])?;
    parse_bytes(&bytes, path)
}

/// Reads the bytes of one file, up to one byte past the size limit, which
/// [`parse_bytes`] then rejects.
fn read_bytes(path: &Path) -> Result<Vec<u8>, PolicyError> {
    let file_error = |message: String| PolicyError::new(path, Position::FILE_START, message);
    // `fs::metadata` follows symbolic links. Opening a FIFO would block, so
    // anything but a regular file is rejected before it is opened.
    if let Ok(metadata) = fs::metadata(path)
        && !metadata.is_file()
    {
        return Err(file_error(
            "not a regular file (a directory, FIFO, socket or device); a policy file must be a regular file"
                .to_owned(),
        ));
    }
    let file = fs::File::open(path)
        .map_err(|error| file_error(format!("failed to read policy file: {error}")))?;
    // Read one byte past the limit, so that a file that grows while it is
    // read is still caught.
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| file_error(format!("failed to read policy file: {error}")))?;
    Ok(bytes)
}

/// Parses and validates the contents of one policy file, as the agent does
/// after reading `source`: its size, its encoding, then its documents.
pub fn parse_bytes(bytes: &[u8], source: &Path) -> Result<Vec<Policy>, Vec<PolicyError>> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(vec![PolicyError::new(
            source,
            Position::FILE_START,
            format!(
                "policy file is larger than the limit of {MAX_FILE_BYTES} bytes (1 MiB). Split \
                 it into several files"
            ),
        )]);
    }
    let text = std::str::from_utf8(bytes).map_err(|error| {
        let valid = &bytes[..error.valid_up_to()];
        let valid = std::str::from_utf8(valid).expect("prefix is valid UTF-8");
        let message = if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
            "invalid UTF-8: the file starts with a UTF-16 byte order mark, but a policy file \
             must be UTF-8 text"
        } else {
            "invalid UTF-8: a policy file must be UTF-8 text"
        };
        vec![PolicyError::new(source, end_position(valid), message)]
    })?;
    // YAML allows a byte order mark at the start, and editors on some
    // systems write one; the parser would take it for content.
    parse_str(text.strip_prefix('\u{feff}').unwrap_or(text), source)
}

/// Finds the first character that YAML 1.2 does not allow in a file: a
/// control character other than tab, line feed, carriage return and next
/// line (U+0085), or U+FFFE or U+FFFF. libyaml rejects these too, but
/// reports a byte offset instead of a line and column.
fn first_invalid_character(text: &str) -> Option<(Position, char)> {
    let (index, character) = text.char_indices().find(|&(_, character)| {
        let allowed_control = matches!(character, '\t' | '\n' | '\r' | '\u{85}');
        (character.is_control() && !allowed_control) || matches!(character, '\u{fffe}' | '\u{ffff}')
    })?;
    Some((end_position(&text[..index]), character))
}

/// Returns the position just after `text`.
fn end_position(text: &str) -> Position {
    let line_start = text.rfind('\n').map_or(0, |index| index + 1);
    Position {
        line: text.matches('\n').count() + 1,
        column: text[line_start..].chars().count() + 1,
    }
}

/// Parses and validates the policy documents of `text`, naming `source` in
/// policies and errors. Empty documents are skipped.
///
/// On failure, returns one error for each invalid document. After a YAML
/// syntax error the rest of the text is not read, because the parser cannot
/// find where the next document starts. Names are not checked for
/// uniqueness here: that is a check of the whole set.
pub fn parse_str(text: &str, source: &Path) -> Result<Vec<Policy>, Vec<PolicyError>> {
    if let Some((position, character)) = first_invalid_character(text) {
        return Err(vec![PolicyError::new(
            source,
            position,
            format!(
                "invalid YAML: character U+{:04X} is not allowed. YAML text may contain tab, \
                 line feed and carriage return but no other control character",
                u32::from(character)
            ),
        )]);
    }
    if let Some(position) = super::nesting::too_deep(text) {
        return Err(vec![PolicyError::new(
            source,
            position,
            format!(
                "invalid YAML: lists and mappings nest more than 128 levels deep (brackets here \
                 open level {})",
                super::nesting::MAX_FLOW_DEPTH + 1
            ),
        )]);
    }
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    // serde_yaml consumes a document when it deserializes it, so each pass
    // over a document has its own stream.
    let syntax_pass = serde_yaml::Deserializer::from_str(text);
    let scan_pass = serde_yaml::Deserializer::from_str(text);
    let model_pass = serde_yaml::Deserializer::from_str(text);
    let name_pass = serde_yaml::Deserializer::from_str(text);
    let passes = syntax_pass.zip(scan_pass).zip(model_pass).zip(name_pass);
    let budget = NodeBudget::new();
    for (index, documents) in passes.enumerate() {
        let (((syntax_document, scan_document), model_document), name_document) = documents;
        let error_at = |error: &serde_yaml::Error, prefix: &str| {
            let (position, message) = yaml::split_error(error);
            let position = position.unwrap_or_else(|| document_start(text, index));
            PolicyError::new(source, position, format!("{prefix}{message}"))
        };
        // serde_yaml (0.9.34) stops loading a document at its first YAML
        // error, such as an unknown anchor, but still hands the nodes
        // before it to a visitor, so a check could fail first and hide the
        // YAML error. Reading the next document then panics, because the
        // parser stopped inside this one. So each document is first read
        // without any check, and its YAML error ends the file.
        if let Err(error) = IgnoredAny::deserialize(syntax_document) {
            errors.push(error_at(&error, "invalid YAML: "));
            break;
        }
        match yaml::scan_document(scan_document, &budget) {
            Ok(Scan::Empty) => continue,
            Ok(Scan::Content) => {}
            Err(failure) if failure.content_error => {
                errors.push(error_at(&failure.error, ""));
                continue;
            }
            Err(failure) => {
                errors.push(error_at(&failure.error, "invalid YAML: "));
                break;
            }
        }
        let document = match PolicyDocument::deserialize(model_document) {
            Ok(document) => document,
            Err(error) => {
                errors.push(error_at(&error, ""));
                continue;
            }
        };
        let position = yaml::locate(name_document, &["metadata", "name"])
            .unwrap_or_else(|| document_start(text, index));
        match build_policy(document, source, position) {
            Ok(policy) => policies.push(policy),
            Err(message) => {
                let position = nth_document(text, index)
                    .and_then(|document| yaml::locate(document, &["spec", "network", "egress"]))
                    .unwrap_or(position);
                errors.push(PolicyError::new(source, position, message));
            }
        }
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// Turns a parsed document into a policy. The error is the message for the
/// kernel rule limit, the one check that needs the policy's name.
fn build_policy(
    document: PolicyDocument,
    source: &Path,
    position: Position,
) -> Result<Policy, String> {
    let network = match document.network {
        None => None,
        Some(egress) => Some(NetworkPolicy::new(egress).map_err(|count| {
            format!(
                "spec.network.egress: policy {:?} needs {count} kernel rules (peers × port \
                 entries, summed over the egress rules), more than the maximum of \
                 {MAX_NET_RULES}. Use wider CIDRs, port ranges or several policies",
                document.name
            )
        })?),
    };
    Ok(Policy {
        name: document.name,
        source: source.to_owned(),
        position,
        selector: document.selector,
        mode: document.mode,
        filesystem: document.filesystem,
        exec: document.exec,
        network,
    })
}

fn nth_document(text: &str, index: usize) -> Option<serde_yaml::Deserializer<'_>> {
    serde_yaml::Deserializer::from_str(text).nth(index)
}

/// Returns the position of the root node of document `index`: where errors
/// go that serde_yaml reports without a position (such as "repetition limit
/// exceeded" for an alias bomb).
fn document_start(text: &str, index: usize) -> Position {
    nth_document(text, index)
        .and_then(|document| yaml::locate(document, &[]))
        .unwrap_or(Position::FILE_START)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use ipnet::IpNet;

    use super::*;
    use crate::policy::{EgressRule, Mode, Peer, PortRange, Protocol, Selector};

    /// The clinic example; tests replace single lines of it.
    const CLINIC: &str = "\
apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: records-db
spec:
  selector:
    namespace: clinic
    matchLabels: {app: records-db}
    containers: [postgres]
  mode: enforce
  network:
    egress:
      - to:
          - cidr: 10.96.0.0/12
          - address: 10.1.2.3
        ports:
          - port: 5432
            endPort: 5440
            protocol: TCP
";

    fn parse(text: &str) -> Result<Vec<Policy>, Vec<PolicyError>> {
        parse_str(text, Path::new("policies/db.yaml"))
    }

    /// Returns `CLINIC` with line `line` (1-based) replaced by `new_line`.
    fn clinic_with(line: usize, new_line: &str) -> String {
        let mut lines: Vec<&str> = CLINIC.lines().collect();
        lines[line - 1] = new_line;
        lines.join("\n") + "\n"
    }

    /// Returns the errors of `text` as `Display` strings.
    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(policies) => panic!("expected errors, parsed {policies:?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn clinic_example_parses() {
        let policies = parse(CLINIC).unwrap();
        assert_eq!(policies.len(), 1);
        let policy = &policies[0];
        assert_eq!(policy.name, "records-db");
        assert_eq!(policy.source, Path::new("policies/db.yaml"));
        assert_eq!(policy.position, Position { line: 4, column: 9 });
        assert_eq!(policy.mode, Mode::Enforce);
        let expected_selector = Selector {
            namespace: Some("clinic".to_owned()),
            match_labels: BTreeMap::from([("app".to_owned(), "records-db".to_owned())]),
            containers: Some(vec!["postgres".to_owned()]),
        };
        assert_eq!(policy.selector, expected_selector);
        let network = policy.network.as_ref().unwrap();
        let expected_rule = EgressRule {
            to: vec![
                Peer::Cidr(net("10.96.0.0/12")),
                Peer::Address("10.1.2.3".parse::<IpAddr>().unwrap()),
            ],
            ports: Some(vec![PortRange {
                start: 5432,
                end: 5440,
                protocol: Some(Protocol::Tcp),
            }]),
        };
        assert_eq!(network.egress(), Some(&[expected_rule][..]));
        assert_eq!(network.kernel_rule_count(), 2);
    }

    #[test]
    fn minimal_policy_parses() {
        let text = "apiVersion: parapet.dev/v1alpha1\nkind: RuntimePolicy\n\
                    metadata: {name: watch}\nspec: {selector: {matchLabels: {app: x}}, mode: audit}\n";
        let policy = &parse(text).unwrap()[0];
        assert_eq!(policy.mode, Mode::Audit);
        assert_eq!(policy.selector.namespace, None);
        assert_eq!(policy.selector.containers, None);
        assert_eq!(policy.network, None);
        assert_eq!(
            policy.position,
            Position {
                line: 3,
                column: 18
            }
        );
    }

    #[test]
    fn mapped_ipv6_address_is_ipv4() {
        let text = clinic_with(15, "          - address: '::ffff:10.1.2.3'");
        let policy = &parse(&text).unwrap()[0];
        let rule = &policy.network.as_ref().unwrap().egress().unwrap()[0];
        assert_eq!(rule.to[1], Peer::Address("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn multi_document_file_parses_every_policy() {
        let second = CLINIC.replace("records-db", "records-api");
        let text = format!("# leading comment\n---\n{CLINIC}---\n---\n# empty\n---\n{second}---\n");
        let policies = parse(&text).unwrap();
        let names: Vec<&str> = policies.iter().map(|policy| policy.name.as_str()).collect();
        assert_eq!(names, ["records-db", "records-api"]);
        assert_eq!(policies[0].position, Position { line: 6, column: 9 });
        assert_eq!(
            policies[1].position,
            Position {
                line: 29,
                column: 9
            }
        );
    }

    #[test]
    fn empty_text_has_no_policies() {
        assert_eq!(parse("").unwrap(), []);
        assert_eq!(parse("# nothing yet\n").unwrap(), []);
    }

    #[test]
    fn error_in_second_document_has_file_position() {
        let second = CLINIC
            .replace("records-db", "records-api")
            .replace("mode: enforce", "mode: block");
        let text = format!("{CLINIC}---\n{second}");
        assert_eq!(
            errors(&text),
            ["policies/db.yaml:30:9: spec.mode: unknown mode \"block\", expected enforce or audit"]
        );
    }

    #[test]
    fn each_invalid_document_is_reported() {
        let first = clinic_with(10, "  mode: block");
        let second = clinic_with(4, "  name: other").replace("TCP", "SCTP");
        let text = format!("{first}---\n{second}");
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:10:9: spec.mode: unknown mode \"block\", expected enforce or audit",
                "policies/db.yaml:39:23: spec.network.egress[0].ports[0].protocol: unknown protocol \
                 \"SCTP\", expected TCP or UDP (omit protocol to allow both)",
            ]
        );
    }

    #[test]
    fn syntax_error_stops_reading() {
        let text = format!(
            "{}---\n{CLINIC}",
            clinic_with(8, "    matchLabels: {app: records-db")
        );
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:9:15: invalid YAML: did not find expected ',' or '}', while parsing \
              a flow mapping at line 8 column 18"
            ]
        );
    }

    #[test]
    fn misspelled_field_is_unknown() {
        assert_eq!(
            errors(&clinic_with(12, "    egres:")),
            ["policies/db.yaml:12:5: spec.network: unknown field `egres`, expected `egress`"]
        );
    }

    #[test]
    fn unsupported_sections_are_unknown_fields() {
        assert_eq!(
            errors(&clinic_with(12, "    ingress:")),
            ["policies/db.yaml:12:5: spec.network: unknown field `ingress`, expected `egress`"]
        );
        assert_eq!(
            errors(&clinic_with(11, "  processes:")),
            [
                "policies/db.yaml:11:3: spec: unknown field `processes`, expected one of \
                 `selector`, `mode`, `filesystem`, `exec`, `network`"
            ]
        );
    }

    #[test]
    fn invalid_cidr() {
        assert_eq!(
            errors(&clinic_with(14, "          - cidr: 10.0.0.300/8")),
            [
                "policies/db.yaml:14:19: spec.network.egress[0].to[0].cidr: invalid CIDR \
              \"10.0.0.300/8\", expected ADDRESS/PREFIX-LENGTH such as 10.0.0.0/8"
            ]
        );
    }

    #[test]
    fn cidr_host_bits() {
        assert_eq!(
            errors(&clinic_with(14, "          - cidr: 10.1.2.3/8")),
            [
                "policies/db.yaml:14:19: spec.network.egress[0].to[0].cidr: invalid CIDR \
              \"10.1.2.3/8\": host bits set, did you mean 10.0.0.0/8?"
            ]
        );
    }

    #[test]
    fn invalid_address() {
        assert_eq!(
            errors(&clinic_with(15, "          - address: 10.1.2.0/24")),
            [
                "policies/db.yaml:15:22: spec.network.egress[0].to[1].address: invalid IP address \
              \"10.1.2.0/24\", expected one IPv4 or IPv6 address (use cidr for a range)"
            ]
        );
    }

    #[test]
    fn peer_needs_exactly_one_field() {
        assert_eq!(
            errors(&clinic_with(
                15,
                "          - {address: 10.1.2.3, cidr: 10.0.0.0/8}"
            )),
            [
                "policies/db.yaml:15:13: spec.network.egress[0].to[1]: a peer needs exactly one of \
              cidr or address"
            ]
        );
        assert_eq!(
            errors(&clinic_with(15, "          - {}")),
            [
                "policies/db.yaml:15:13: spec.network.egress[0].to[1]: a peer needs exactly one of \
              cidr or address"
            ]
        );
    }

    #[test]
    fn empty_peer_list() {
        assert_eq!(
            errors(&clinic_with(13, "      - to: []").replace(
                "          - cidr: 10.96.0.0/12\n          - address: 10.1.2.3\n",
                ""
            )),
            [
                "policies/db.yaml:13:13: spec.network.egress[0].to: an egress rule must list at \
                 least one peer in `to`"
            ]
        );
    }

    #[test]
    fn port_out_of_range() {
        assert_eq!(
            errors(&clinic_with(17, "          - port: 0")),
            [
                "policies/db.yaml:17:19: spec.network.egress[0].ports[0].port: invalid port 0, \
              expected a number from 1 to 65535"
            ]
        );
        assert_eq!(
            errors(&clinic_with(17, "          - port: 70000")),
            [
                "policies/db.yaml:17:19: spec.network.egress[0].ports[0].port: invalid port 70000, \
              expected a number from 1 to 65535"
            ]
        );
        assert_eq!(
            errors(&clinic_with(17, "          - port: -1")),
            [
                "policies/db.yaml:17:19: spec.network.egress[0].ports[0].port: invalid type: \
              integer `-1`, expected a port number from 1 to 65535"
            ]
        );
    }

    #[test]
    fn port_of_wrong_type() {
        assert_eq!(
            errors(&clinic_with(17, "          - port: postgres")),
            [
                "policies/db.yaml:17:19: spec.network.egress[0].ports[0].port: invalid type: string \
              \"postgres\", expected a port number from 1 to 65535"
            ]
        );
    }

    #[test]
    fn end_port_below_port() {
        assert_eq!(
            errors(&clinic_with(18, "            endPort: 5400")),
            [
                "policies/db.yaml:17:13: spec.network.egress[0].ports[0]: endPort 5400 is less than \
              port 5432"
            ]
        );
    }

    #[test]
    fn empty_port_list() {
        let text = clinic_with(16, "        ports: []").replace(
            "          - port: 5432\n            endPort: 5440\n            protocol: TCP\n",
            "",
        );
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:16:16: spec.network.egress[0].ports: `ports` must list at least one \
                 port, or be omitted to allow every port"
            ]
        );
    }

    #[test]
    fn unknown_protocol() {
        assert_eq!(
            errors(&clinic_with(19, "            protocol: tcp")),
            [
                "policies/db.yaml:19:23: spec.network.egress[0].ports[0].protocol: unknown protocol \
              \"tcp\", expected TCP or UDP (omit protocol to allow both)"
            ]
        );
    }

    #[test]
    fn wrong_api_version_and_kind() {
        assert_eq!(
            errors(&clinic_with(1, "apiVersion: parapet.dev/v1")),
            [
                "policies/db.yaml:1:13: apiVersion: unsupported apiVersion \"parapet.dev/v1\", \
              expected \"parapet.dev/v1alpha1\""
            ]
        );
        assert_eq!(
            errors(&clinic_with(2, "kind: NetworkPolicy")),
            [
                "policies/db.yaml:2:7: kind: unsupported kind \"NetworkPolicy\", expected \
              \"RuntimePolicy\""
            ]
        );
    }

    #[test]
    fn missing_fields_point_at_their_mapping() {
        assert_eq!(
            errors(&clinic_with(10, "")),
            ["policies/db.yaml:6:3: spec: missing field `mode`"]
        );
        assert_eq!(
            errors(&clinic_with(2, "")),
            ["policies/db.yaml:1:1: missing field `kind`"]
        );
    }

    #[test]
    fn missing_field_in_later_document() {
        let text = format!(
            "{CLINIC}---\n{}",
            clinic_with(4, "  name: other").replace("kind: RuntimePolicy\n", "")
        );
        assert_eq!(
            errors(&text),
            ["policies/db.yaml:21:1: missing field `kind`"]
        );
    }

    /// Found by the `policy_file` fuzz target: the duplicate key was
    /// reported, and reading on after the unknown anchor panicked.
    #[test]
    fn unknown_anchor_after_duplicate_key() {
        assert_eq!(
            errors("k:\nk: *n"),
            ["policies/db.yaml:2:4: invalid YAML: unknown anchor"]
        );
        assert_eq!(
            errors("a: 1\n---\nk:\nk: *n\n---\nb: 2\n"),
            [
                "policies/db.yaml:1:1: unknown field `a`, expected one of `apiVersion`, `kind`, \
                 `metadata`, `spec`",
                "policies/db.yaml:4:4: invalid YAML: unknown anchor"
            ]
        );
    }

    #[test]
    fn check_sources_matches_check_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.yaml");
        let second = dir.path().join("b.yaml");
        fs::write(&first, CLINIC).unwrap();
        fs::write(&second, CLINIC).unwrap();
        let from_files = check_files(&[first.clone(), second.clone()]);
        let from_sources =
            check_sources(&[(first, CLINIC.as_bytes()), (second, CLINIC.as_bytes())]);
        assert_eq!(from_files, from_sources);
        assert_eq!(from_sources.errors().count(), 1);
    }

    #[test]
    fn control_character_has_line_and_column() {
        let text = CLINIC.replace("name: records-db", "name: records\u{1b}db");
        let found = parse_bytes(text.as_bytes(), Path::new("policies/db.yaml")).unwrap_err();
        assert_eq!(
            found[0].to_string(),
            "policies/db.yaml:4:16: invalid YAML: character U+001B is not allowed. YAML text \
             may contain tab, line feed and carriage return but no other control character"
        );
    }

    #[test]
    fn policy_name_rules() {
        assert_eq!(
            errors(&clinic_with(4, "  name: ''")),
            ["policies/db.yaml:4:9: metadata.name: policy name must not be empty"]
        );
        assert_eq!(
            errors(&clinic_with(4, "  name:")),
            ["policies/db.yaml:4:8: metadata.name: policy name must not be empty"]
        );
        assert_eq!(
            errors(&clinic_with(4, "  name: Records_DB")),
            [
                "policies/db.yaml:4:9: metadata.name: invalid policy name \"Records_DB\": expected at \
              most 63 lowercase letters, digits or '-', starting and ending with a letter or digit"
            ]
        );
    }

    #[test]
    fn empty_selector() {
        let text = CLINIC.replace(
            "    namespace: clinic\n    matchLabels: {app: records-db}\n",
            "",
        );
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:7:5: spec.selector: a selector needs namespace or matchLabels, \
                 because without them it would select every pod on the node"
            ]
        );
        let text = CLINIC
            .replace("    namespace: clinic\n", "")
            .replace("{app: records-db}", "{}");
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:7:5: spec.selector: a selector needs namespace or matchLabels, \
                 because without them it would select every pod on the node"
            ]
        );
    }

    #[test]
    fn null_namespace_is_rejected() {
        assert_eq!(
            errors(&clinic_with(7, "    namespace:")),
            ["policies/db.yaml:7:15: spec.selector.namespace: namespace must not be empty"]
        );
    }

    #[test]
    fn invalid_label() {
        assert_eq!(
            errors(&clinic_with(8, "    matchLabels: {app: 'records db'}")),
            [
                "policies/db.yaml:8:24: spec.selector.matchLabels.app: invalid label value \
              \"records db\": expected at most 63 letters, digits, '-', '_' or '.', starting and \
              ending with a letter or digit"
            ]
        );
    }

    #[test]
    fn empty_container_list() {
        assert_eq!(
            errors(&clinic_with(9, "    containers: []")),
            [
                "policies/db.yaml:9:17: spec.selector.containers: `containers` must list at least \
                 one container name, or be omitted to select every container of the pod"
            ]
        );
    }

    #[test]
    fn duplicate_keys() {
        assert_eq!(
            errors(&clinic_with(9, "    namespace: billing")),
            ["policies/db.yaml:9:5: spec.selector: duplicate key `namespace`"]
        );
        assert_eq!(
            errors(&clinic_with(
                8,
                "    matchLabels: {app: records-db, app: other}"
            )),
            ["policies/db.yaml:8:36: spec.selector.matchLabels: duplicate key `app`"]
        );
    }

    #[test]
    fn duplicate_key_does_not_hide_later_documents() {
        let text = format!(
            "{}---\n{}",
            clinic_with(9, "    namespace: billing"),
            clinic_with(10, "  mode: x")
        );
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:9:5: spec.selector: duplicate key `namespace`",
                "policies/db.yaml:30:9: spec.mode: unknown mode \"x\", expected enforce or audit",
            ]
        );
    }

    #[test]
    fn wrong_types() {
        let text = clinic_with(13, "      - to: 10.0.0.1").replace(
            "          - cidr: 10.96.0.0/12\n          - address: 10.1.2.3\n",
            "",
        );
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:13:13: spec.network.egress[0].to: invalid type: string \"10.0.0.1\", \
              expected a non-empty list"
            ]
        );
        assert_eq!(
            errors("- a\n- b\n"),
            ["policies/db.yaml:1:1: invalid type: sequence, expected a RuntimePolicy mapping"]
        );
        let text = CLINIC.replace(
            "  selector:\n    namespace: clinic\n    matchLabels: {app: records-db}\n    containers: [postgres]\n",
            "  selector: clinic\n",
        );
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:6:13: spec.selector: invalid type: string \"clinic\", expected a \
              selector mapping"
            ]
        );
    }

    #[test]
    fn null_egress_restricts() {
        let text = CLINIC.split("      - to:").next().unwrap();
        let policy = &parse(text).unwrap()[0];
        assert_eq!(policy.network.as_ref().unwrap().egress(), Some(&[][..]));
    }

    #[test]
    fn too_many_kernel_rules() {
        let peers: Vec<String> = (0..9).map(|i| format!("{{address: 10.0.0.{i}}}")).collect();
        let ports: Vec<String> = (1..=8).map(|port| format!("{{port: {port}}}")).collect();
        let egress = format!(
            "      - to: [{}]\n        ports: [{}]\n",
            peers.join(", "),
            ports.join(", ")
        );
        let text = CLINIC.split("      - to:").next().unwrap().to_owned() + &egress;
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:13:7: spec.network.egress: policy \"records-db\" needs 72 kernel \
              rules (peers × port entries, summed over the egress rules), more than the maximum of \
              64. Use wider CIDRs, port ranges or several policies"
            ]
        );
    }

    #[test]
    fn alias_bomb_gets_document_position() {
        // serde_yaml reports "repetition limit exceeded" without a position.
        let mut text = String::from(
            "---\n\n# bomb\nkind: RuntimePolicy\nl0: &l0 [a, a, a, a, a, a, a, a, a, a]\n",
        );
        for level in 1..9 {
            let previous = format!("*l{}", level - 1);
            let items = vec![previous; 10].join(", ");
            text.push_str(&format!("l{level}: &l{level} [{items}]\n"));
        }
        assert_eq!(
            errors(&text),
            [
                "policies/db.yaml:4:1: invalid YAML: repetition limit exceeded: aliases (`*name`) are \
             expanded too many times"
            ]
        );
    }

    #[test]
    fn duplicate_names_in_one_file() {
        let text = format!("{CLINIC}---\n{CLINIC}");
        let policies = parse(&text).unwrap();
        let errors: Vec<String> = check_set(&policies)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "policies/db.yaml:24:9: metadata.name: duplicate policy name \"records-db\", also \
              defined at policies/db.yaml:4:9"
            ]
        );
    }

    #[test]
    fn too_many_policies_in_set() {
        let policy = &parse(CLINIC).unwrap()[0];
        let policies: Vec<Policy> = (0..=MAX_POLICIES)
            .map(|i| Policy {
                name: format!("p{i}"),
                ..policy.clone()
            })
            .collect();
        let errors: Vec<String> = check_set(&policies)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            ["policies/db.yaml:4:9: too many policies: the set has 257, the maximum is 256"]
        );
        assert_eq!(check_set(&policies[..MAX_POLICIES]), []);
    }

    #[test]
    fn end_position_counts_characters() {
        assert_eq!(end_position(""), Position { line: 1, column: 1 });
        assert_eq!(end_position("ab\ncdé"), Position { line: 2, column: 4 });
        assert_eq!(end_position("ab\n"), Position { line: 2, column: 1 });
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn load_file_reports_first_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "db.yaml", &clinic_with(10, "  mode: block"));
        let error = load_file(&path).unwrap_err();
        assert_eq!(error.file, path);
        assert_eq!(
            error.position,
            Position {
                line: 10,
                column: 9
            }
        );
        assert_eq!(
            error.message,
            "spec.mode: unknown mode \"block\", expected enforce or audit"
        );
    }

    #[test]
    fn load_file_rejects_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let padding = "#".repeat(MAX_FILE_BYTES as usize);
        let path = write(dir.path(), "big.yaml", &format!("{CLINIC}{padding}\n"));
        let error = load_file(&path).unwrap_err();
        assert_eq!(error.position, Position::FILE_START);
        assert_eq!(
            error.message,
            "policy file is larger than the limit of 1048576 bytes (1 MiB). Split it into several \
             files"
        );
        let fits = write(
            dir.path(),
            "fits.yaml",
            &format!("{CLINIC}{}", &padding[CLINIC.len()..]),
        );
        assert_eq!(fs::metadata(&fits).unwrap().len(), MAX_FILE_BYTES);
        assert!(load_file(&fits).is_ok());
    }

    #[test]
    fn load_file_rejects_invalid_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.yaml");
        let mut bytes = CLINIC.as_bytes().to_vec();
        bytes.extend_from_slice(b"# caf\xe9\n");
        fs::write(&path, bytes).unwrap();
        let error = load_file(&path).unwrap_err();
        assert_eq!(
            error.position,
            Position {
                line: 20,
                column: 6
            }
        );
        assert_eq!(
            error.message,
            "invalid UTF-8: a policy file must be UTF-8 text"
        );
    }

    #[test]
    fn load_file_missing() {
        let dir = tempfile::tempdir().unwrap();
        let error = load_file(dir.path().join("absent.yaml")).unwrap_err();
        assert_eq!(error.position, Position::FILE_START);
        assert!(
            error.message.starts_with("failed to read policy file: "),
            "{}",
            error.message
        );
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let with_mark = format!("\u{feff}{CLINIC}");
        let policies = parse_bytes(with_mark.as_bytes(), Path::new("bom.yaml")).unwrap();
        assert_eq!(policies[0].name, "records-db");
    }

    #[test]
    fn load_dir_reads_configmap_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let version = root.join("..2024_01_01_00_00_00.000000001");
        fs::create_dir(&version).unwrap();
        write(
            &version,
            "b-api.yaml",
            &CLINIC.replace("records-db", "records-api"),
        );
        write(&version, "a-db.yml", CLINIC);
        write(&version, "notes.txt", "not a policy");
        std::os::unix::fs::symlink("..2024_01_01_00_00_00.000000001", root.join("..data")).unwrap();
        for name in ["b-api.yaml", "a-db.yml", "notes.txt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        write(root, ".hidden.yaml", "not: [valid");
        fs::create_dir(root.join("nested.yaml")).unwrap();
        std::os::unix::fs::symlink("absent.yaml", root.join("c-broken-link.yaml")).unwrap();
        let errors = load_dir(root).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].file, root.join("c-broken-link.yaml"));
        assert_eq!(errors[1].file, root.join("nested.yaml"));
        assert!(errors[1].message.contains("not a regular file"), "{}", errors[1].message);

        fs::remove_file(root.join("c-broken-link.yaml")).unwrap();
        fs::remove_dir(root.join("nested.yaml")).unwrap();
        let policies = load_dir(root).unwrap();
        let names: Vec<&str> = policies.iter().map(|policy| policy.name.as_str()).collect();
        assert_eq!(names, ["records-db", "records-api"]);
        assert_eq!(policies[0].source, root.join("a-db.yml"));
    }

    #[test]
    fn load_dir_reports_duplicates_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = write(dir.path(), "a.yaml", CLINIC);
        let second = write(dir.path(), "b.yaml", CLINIC);
        let errors = load_dir(dir.path()).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, second);
        assert_eq!(
            errors[0].message,
            format!(
                "metadata.name: duplicate policy name \"records-db\", also defined at {}:4:9",
                first.display()
            )
        );
    }

    #[test]
    fn load_dir_collects_errors_of_every_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", &clinic_with(10, "  mode: block"));
        write(
            dir.path(),
            "b.yaml",
            &clinic_with(4, "  name: b").replace("TCP", "tcp"),
        );
        write(dir.path(), "c.yaml", &clinic_with(4, "  name: c"));
        let errors = load_dir(dir.path()).unwrap_err();
        let positions: Vec<(String, Position)> = errors
            .iter()
            .map(|error| {
                (
                    error
                        .file
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    error.position,
                )
            })
            .collect();
        assert_eq!(
            positions,
            [
                (
                    "a.yaml".to_owned(),
                    Position {
                        line: 10,
                        column: 9
                    }
                ),
                (
                    "b.yaml".to_owned(),
                    Position {
                        line: 19,
                        column: 23
                    }
                ),
            ]
        );
    }

    #[test]
    fn load_dir_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let errors = load_dir(dir.path().join("absent")).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message
                .starts_with("failed to list policy directory: ")
        );
    }

    #[test]
    fn check_files_reports_each_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "good.yaml", CLINIC);
        let empty = write(dir.path(), "empty.yaml", "# nothing\n");
        let bad = write(
            dir.path(),
            "bad.yaml",
            &clinic_with(4, "  name: other").replace("TCP", "tcp"),
        );
        let again = write(dir.path(), "again.yaml", CLINIC);
        let report = check_files(&[good.clone(), empty.clone(), bad.clone(), again.clone()]);
        assert!(!report.all_valid());
        assert_eq!(report.files[0].policies, ["records-db"]);
        assert_eq!(report.files[0].errors, []);
        assert_eq!(report.files[1].errors, []);
        assert_eq!(report.files[2].errors.len(), 1);
        assert_eq!(report.files[3].errors.len(), 1);
        let expected = format!(
            "{good}: OK (records-db)\n\
             {empty}: OK (no policies)\n\
             {bad}:19:23: spec.network.egress[0].ports[0].protocol: unknown protocol \"tcp\", \
             expected TCP or UDP (omit protocol to allow both)\n\
             {again}:4:9: metadata.name: duplicate policy name \"records-db\", also defined at \
             {good}:4:9\n",
            good = good.display(),
            empty = empty.display(),
            bad = bad.display(),
            again = again.display(),
        );
        assert_eq!(report.to_string(), expected);
        assert!(check_files(&[good]).all_valid());
    }
}
