//! Deserialization and validation of `spec.filesystem` and `spec.exec`, the
//! sections whose values are lists of paths.
//!
//! As in the rest of the schema, every check runs inside the `Visitor`
//! method of the value it is about, so that serde_yaml attaches the value's
//! position and field path to the error. The checks that compare an entry
//! with other entries (duplicates, nesting, a path in both exec lists) run
//! inside the entry's own `visit_str`, and a `DeserializeSeed` passes the
//! entries read before it.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::model::{ExecPolicy, FilesystemPolicy};
use super::schema::deserialize_checked_map;
use super::{MAX_EXEC_LIST_PATHS, MAX_PATH_BYTES, MAX_WRITABLE_PATHS};

impl<'de> Deserialize<'de> for FilesystemPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_map(
            deserializer,
            "a filesystem mapping",
            |fields: FilesystemFields| match fields.writable_paths {
                Some(_) if !fields.read_only => Err(
                    "writablePaths has no effect when readOnly is false, because every path is \
                     writable then. Remove writablePaths, or set readOnly: true"
                        .to_owned(),
                ),
                writable_paths => Ok(FilesystemPolicy {
                    read_only: fields.read_only,
                    writable_paths: writable_paths.unwrap_or_default(),
                }),
            },
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FilesystemFields {
    read_only: bool,
    #[serde(default, deserialize_with = "writable_paths")]
    writable_paths: Option<Vec<PathBuf>>,
}

fn writable_paths<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<PathBuf>>, D::Error> {
    PathListSeed {
        list: PathList::WritablePaths,
        other: None,
    }
    .deserialize(deserializer)
    .map(Some)
}

/// `spec.exec` is read field by field, so that the list read second can
/// reject a path that the first one contains, at that path's position.
impl<'de> Deserialize<'de> for ExecPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ExecVisitor)
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum ExecField {
    Allow,
    Deny,
}

struct ExecVisitor;

impl<'de> Visitor<'de> for ExecVisitor {
    type Value = ExecPolicy;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an exec mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExecPolicy, A::Error> {
        let mut allow: Option<Vec<PathBuf>> = None;
        let mut deny: Option<Vec<PathBuf>> = None;
        while let Some(field) = map.next_key::<ExecField>()? {
            // The duplicate-key scan rejects a repeated key before this
            // runs, so these errors are a second line of defense.
            match field {
                ExecField::Allow if allow.is_some() => {
                    return Err(de::Error::duplicate_field("allow"));
                }
                ExecField::Deny if deny.is_some() => {
                    return Err(de::Error::duplicate_field("deny"));
                }
                ExecField::Allow => {
                    let seed = PathListSeed {
                        list: PathList::Allow,
                        other: deny.as_deref().map(|deny| ("deny", deny)),
                    };
                    allow = Some(map.next_value_seed(seed)?);
                }
                ExecField::Deny => {
                    let seed = PathListSeed {
                        list: PathList::Deny,
                        other: allow.as_deref().map(|allow| ("allow", allow)),
                    };
                    deny = Some(map.next_value_seed(seed)?);
                }
            }
        }
        let deny = deny.unwrap_or_default();
        if allow.is_none() && deny.is_empty() {
            return Err(de::Error::custom(
                "exec needs allow (the only programs that may run) or a non-empty deny \
                 (programs that may never run). Remove exec to leave programs unrestricted",
            ));
        }
        Ok(ExecPolicy { allow, deny })
    }
}

/// One of the three path lists, with the checks that differ between them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PathList {
    WritablePaths,
    Allow,
    Deny,
}

impl PathList {
    fn field_name(self) -> &'static str {
        match self {
            PathList::WritablePaths => "writablePaths",
            PathList::Allow => "allow",
            PathList::Deny => "deny",
        }
    }

    fn max_len(self) -> usize {
        match self {
            PathList::WritablePaths => MAX_WRITABLE_PATHS,
            PathList::Allow | PathList::Deny => MAX_EXEC_LIST_PATHS,
        }
    }
}

/// Reads one path list.
struct PathListSeed<'a> {
    list: PathList,
    /// The field name and entries of the other exec list, when the mapping
    /// had it before this one: no path may be in both.
    other: Option<(&'static str, &'a [PathBuf])>,
}

impl<'de> DeserializeSeed<'de> for PathListSeed<'_> {
    type Value = Vec<PathBuf>;

    /// Reads `null`, `~` or an empty value as an empty list, as
    /// `network.egress` does, because a list that is present must never
    /// widen what is allowed.
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<PathBuf>, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for PathListSeed<'_> {
    type Value = Vec<PathBuf>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a list of absolute paths")
    }

    fn visit_none<E: de::Error>(self) -> Result<Vec<PathBuf>, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<PathBuf>, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<PathBuf>, A::Error> {
        let mut paths = Vec::new();
        loop {
            let seed = PathEntrySeed {
                list: self.list,
                earlier: &paths,
                other: self.other,
            };
            match seq.next_element_seed(seed)? {
                Some(path) => paths.push(path),
                None => break,
            }
        }
        let max = self.list.max_len();
        if paths.len() > max {
            let mut message = format!(
                "too many paths in {}: the list has {}, the maximum is {max}",
                self.list.field_name(),
                paths.len()
            );
            if self.list == PathList::WritablePaths {
                message.push_str(". Make a common parent directory writable instead");
            }
            return Err(de::Error::custom(message));
        }
        Ok(paths)
    }
}

/// Reads one entry of a path list and checks it, alone and against the
/// entries read before it.
struct PathEntrySeed<'a> {
    list: PathList,
    earlier: &'a [PathBuf],
    other: Option<(&'static str, &'a [PathBuf])>,
}

impl<'de> DeserializeSeed<'de> for PathEntrySeed<'_> {
    type Value = PathBuf;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<PathBuf, D::Error> {
        // Not `deserialize_str`, which would take `123` or `true` as text.
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathEntrySeed<'_> {
    type Value = PathBuf;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an absolute path")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<PathBuf, E> {
        self.check(value).map_err(E::custom)?;
        Ok(PathBuf::from(value))
    }

    /// Checks an empty value, `~` or `null` as the empty string.
    fn visit_unit<E: de::Error>(self) -> Result<PathBuf, E> {
        self.visit_str("")
    }

    /// serde_yaml visits an enum for a tagged node such as `!tag value`.
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<PathBuf, A::Error> {
        Err(de::Error::invalid_type(
            de::Unexpected::Other("tagged value"),
            &self,
        ))
    }
}

impl PathEntrySeed<'_> {
    fn check(&self, value: &str) -> Result<(), String> {
        check_path(value)?;
        let path = Path::new(value);
        let list = self.list.field_name();
        match self.list {
            PathList::WritablePaths if value == "/" => {
                return Err(
                    "writablePaths must not contain /, because that would make every path \
                     writable. List the directories that need writes, or remove the filesystem \
                     section"
                        .to_owned(),
                );
            }
            PathList::Allow | PathList::Deny if value == "/" => {
                return Err(format!(
                    "invalid path \"/\" in {list}: / is a directory, and exec lists name \
                     program files"
                ));
            }
            _ => {}
        }
        if let Some(index) = self.earlier.iter().position(|earlier| earlier == path) {
            return Err(format!(
                "duplicate path {value:?}, already listed at {list}[{index}]"
            ));
        }
        if self.list == PathList::WritablePaths {
            check_not_nested(path, self.earlier)?;
        }
        if let Some((other_list, other)) = self.other
            && let Some(index) = other.iter().position(|listed| listed == path)
        {
            return Err(format!(
                "path {value:?} is also listed at {other_list}[{index}], but a program cannot \
                 be both allowed and denied. Remove it from one of the lists"
            ));
        }
        Ok(())
    }
}

/// Checks that a new writable path is neither inside nor around an earlier
/// one. Paths have passed [`check_path`], so `Path::starts_with` compares
/// whole components and `/var/run2` is not inside `/var/run`.
fn check_not_nested(path: &Path, earlier: &[PathBuf]) -> Result<(), String> {
    for (index, other) in earlier.iter().enumerate() {
        if path.starts_with(other) {
            return Err(format!(
                "writable path {:?} is inside writablePaths[{index}] {:?}, which already makes \
                 it writable. Remove one of them",
                path.display().to_string(),
                other.display().to_string()
            ));
        }
        if other.starts_with(path) {
            return Err(format!(
                "writable path {:?} contains writablePaths[{index}] {:?}, which is then \
                 redundant. Remove one of them",
                path.display().to_string(),
                other.display().to_string()
            ));
        }
    }
    Ok(())
}

/// Checks the form that every policy path must have: absolute, at most
/// [`MAX_PATH_BYTES`] bytes, no NUL byte, no `.` or `..` component, no
/// repeated `/`, and no trailing `/` except for `/` itself.
///
/// Paths are rejected, never rewritten, so that a policy means exactly what
/// its file contains.
pub(super) fn check_path(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("path must not be empty".to_owned());
    }
    if value.contains('\0') {
        return Err(format!("invalid path {value:?}: contains a NUL byte"));
    }
    if value.len() > MAX_PATH_BYTES {
        return Err(format!(
            "invalid path of {} bytes: longer than the maximum of {MAX_PATH_BYTES} bytes",
            value.len()
        ));
    }
    if !value.starts_with('/') {
        return Err(format!(
            "invalid path {value:?}: not absolute, expected a path that starts with /"
        ));
    }
    if value.split('/').any(|part| part == "." || part == "..") {
        return Err(format!(
            "invalid path {value:?}: \".\" and \"..\" components are not allowed. Write the \
             path without them"
        ));
    }
    if value.contains("//") {
        return Err(format!(
            "invalid path {value:?}: repeated '/', did you mean {:?}?",
            suggested_path(value)
        ));
    }
    if value.len() > 1 && value.ends_with('/') {
        return Err(format!(
            "invalid path {value:?}: trailing '/', did you mean {:?}?",
            suggested_path(value)
        ));
    }
    Ok(())
}

/// Returns `value` with every run of `/` replaced by one `/` and without a
/// trailing `/`, for error messages only.
fn suggested_path(value: &str) -> String {
    let parts: Vec<&str> = value.split('/').filter(|part| !part.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, parse_str};

    /// Returns the text of a policy whose lines from 11 on are `sections`.
    fn policy_text(sections: &str) -> String {
        format!(
            "\
apiVersion: parapet.dev/v1alpha1
kind: RuntimePolicy
metadata:
  name: records-db
spec:
  selector:
    namespace: clinic
    matchLabels: {{app: records-db}}
    containers: [postgres]
  mode: enforce
{sections}"
        )
    }

    fn parse(sections: &str) -> Policy {
        let text = policy_text(sections);
        let mut policies = parse_str(&text, Path::new("policies/db.yaml"))
            .unwrap_or_else(|errors| panic!("{text}\n{errors:?}"));
        policies.remove(0)
    }

    /// Returns the errors of the policy with `sections` as `Display`
    /// strings.
    fn errors(sections: &str) -> Vec<String> {
        let text = policy_text(sections);
        match parse_str(&text, Path::new("policies/db.yaml")) {
            Ok(policies) => panic!("expected errors, parsed {policies:?}"),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn paths(values: &[&str]) -> Vec<PathBuf> {
        values.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn path_accepts_valid_forms() {
        let longest = format!("/{}", "a".repeat(MAX_PATH_BYTES - 1));
        for value in ["/", "/tmp", "/var/run/postgresql", "/a.b/..c/.d", &longest] {
            assert_eq!(check_path(value), Ok(()), "{value}");
        }
    }

    #[test]
    fn path_rejects_invalid_forms() {
        let cases = [
            ("", "path must not be empty"),
            ("/tmp\0x", "invalid path \"/tmp\\0x\": contains a NUL byte"),
            (
                "tmp",
                "invalid path \"tmp\": not absolute, expected a path that starts with /",
            ),
            (
                "./tmp",
                "invalid path \"./tmp\": not absolute, expected a path that starts with /",
            ),
            (
                "/tmp/../etc",
                "invalid path \"/tmp/../etc\": \".\" and \"..\" components are not allowed. \
                 Write the path without them",
            ),
            (
                "/tmp/.",
                "invalid path \"/tmp/.\": \".\" and \"..\" components are not allowed. Write \
                 the path without them",
            ),
            (
                "/..",
                "invalid path \"/..\": \".\" and \"..\" components are not allowed. Write the \
                 path without them",
            ),
            (
                "//tmp",
                "invalid path \"//tmp\": repeated '/', did you mean \"/tmp\"?",
            ),
            (
                "/var//run/",
                "invalid path \"/var//run/\": repeated '/', did you mean \"/var/run\"?",
            ),
            (
                "//",
                "invalid path \"//\": repeated '/', did you mean \"/\"?",
            ),
            (
                "/tmp/",
                "invalid path \"/tmp/\": trailing '/', did you mean \"/tmp\"?",
            ),
        ];
        for (value, message) in cases {
            assert_eq!(check_path(value), Err(message.to_owned()), "{value:?}");
        }
    }

    #[test]
    fn path_length_limit() {
        let too_long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert_eq!(
            check_path(&too_long),
            Err("invalid path of 4096 bytes: longer than the maximum of 4095 bytes".to_owned())
        );
        // Bytes count, not characters: 2048 two-byte characters and `/`.
        let multibyte = format!("/{}", "é".repeat(2048));
        assert!(check_path(&multibyte).is_err());
    }

    #[test]
    fn filesystem_section_parses() {
        let policy = parse(
            "  filesystem:\n    readOnly: true\n    writablePaths: [/tmp, /var/run/postgresql]\n",
        );
        assert_eq!(
            policy.filesystem,
            Some(FilesystemPolicy {
                read_only: true,
                writable_paths: paths(&["/tmp", "/var/run/postgresql"]),
            })
        );
        assert_eq!(policy.exec, None);
        assert_eq!(policy.network, None);
    }

    #[test]
    fn filesystem_without_writable_paths() {
        let policy = parse("  filesystem: {readOnly: true}\n");
        let filesystem = policy.filesystem.unwrap();
        assert!(filesystem.read_only);
        assert_eq!(filesystem.writable_paths, Vec::<PathBuf>::new());
        for empty in ["", " null", " []"] {
            let policy = parse(&format!(
                "  filesystem:\n    readOnly: true\n    writablePaths:{empty}\n"
            ));
            assert_eq!(
                policy.filesystem.unwrap().writable_paths,
                Vec::<PathBuf>::new(),
                "{empty}"
            );
        }
        let policy = parse("  filesystem: {readOnly: false}\n");
        assert_eq!(policy.filesystem, Some(FilesystemPolicy::default()));
    }

    #[test]
    fn writable_siblings_are_not_nested() {
        let policy =
            parse("  filesystem: {readOnly: true, writablePaths: [/var/run, /var/run2]}\n");
        assert_eq!(
            policy.filesystem.unwrap().writable_paths,
            paths(&["/var/run", "/var/run2"])
        );
    }

    #[test]
    fn read_only_is_required() {
        assert_eq!(
            errors("  filesystem:\n    writablePaths: [/tmp]\n"),
            ["policies/db.yaml:12:5: spec.filesystem: missing field `readOnly`"]
        );
        assert_eq!(
            errors("  filesystem:\n"),
            ["policies/db.yaml:11:14: spec.filesystem: missing field `readOnly`"]
        );
    }

    #[test]
    fn read_only_of_wrong_type() {
        assert_eq!(
            errors("  filesystem:\n    readOnly: yes\n"),
            [
                "policies/db.yaml:12:15: spec.filesystem.readOnly: invalid type: string \"yes\", \
                 expected a boolean"
            ]
        );
        assert_eq!(
            errors("  filesystem: true\n"),
            [
                "policies/db.yaml:11:15: spec.filesystem: invalid type: boolean `true`, expected \
                 a filesystem mapping"
            ]
        );
    }

    #[test]
    fn writable_paths_without_read_only() {
        let message = "spec.filesystem: writablePaths has no effect when readOnly is false, \
                       because every path is writable then. Remove writablePaths, or set \
                       readOnly: true";
        assert_eq!(
            errors("  filesystem:\n    readOnly: false\n    writablePaths: [/tmp]\n"),
            [format!("policies/db.yaml:12:5: {message}")]
        );
        assert_eq!(
            errors("  filesystem:\n    readOnly: false\n    writablePaths: []\n"),
            [format!("policies/db.yaml:12:5: {message}")]
        );
    }

    #[test]
    fn misspelled_filesystem_field() {
        assert_eq!(
            errors("  filesystem:\n    readOnly: true\n    writeablePaths: [/tmp]\n"),
            [
                "policies/db.yaml:13:5: spec.filesystem: unknown field `writeablePaths`, \
                 expected `readOnly` or `writablePaths`"
            ]
        );
    }

    #[test]
    fn invalid_writable_path_has_entry_position() {
        assert_eq!(
            errors(
                "  filesystem:\n    readOnly: true\n    writablePaths:\n      - /tmp\n      - var/lib\n"
            ),
            [
                "policies/db.yaml:15:9: spec.filesystem.writablePaths[1]: invalid path \
                 \"var/lib\": not absolute, expected a path that starts with /"
            ]
        );
        assert_eq!(
            errors("  filesystem: {readOnly: true, writablePaths: [/tmp/../etc]}\n"),
            [
                "policies/db.yaml:11:48: spec.filesystem.writablePaths[0]: invalid path \
                 \"/tmp/../etc\": \".\" and \"..\" components are not allowed. Write the path \
                 without them"
            ]
        );
        assert_eq!(
            errors("  filesystem: {readOnly: true, writablePaths: [5]}\n"),
            [
                "policies/db.yaml:11:48: spec.filesystem.writablePaths[0]: invalid type: \
                 integer `5`, expected an absolute path"
            ]
        );
        assert_eq!(
            errors("  filesystem: {readOnly: true, writablePaths: [{path: /tmp}]}\n"),
            [
                "policies/db.yaml:11:48: spec.filesystem.writablePaths[0]: invalid type: map, \
                 expected an absolute path"
            ]
        );
        assert_eq!(
            errors("  filesystem: {readOnly: true, writablePaths: /tmp}\n"),
            [
                "policies/db.yaml:11:47: spec.filesystem.writablePaths: invalid type: string \
                 \"/tmp\", expected a list of absolute paths"
            ]
        );
    }

    #[test]
    fn root_is_not_writable() {
        assert_eq!(
            errors("  filesystem: {readOnly: true, writablePaths: [/tmp, /]}\n"),
            [
                "policies/db.yaml:11:54: spec.filesystem.writablePaths[1]: writablePaths must \
                 not contain /, because that would make every path writable. List the \
                 directories that need writes, or remove the filesystem section"
            ]
        );
    }

    #[test]
    fn duplicate_writable_path() {
        assert_eq!(
            errors(
                "  filesystem:\n    readOnly: true\n    writablePaths:\n      - /tmp\n      - /data\n      - /tmp\n"
            ),
            [
                "policies/db.yaml:16:9: spec.filesystem.writablePaths[2]: duplicate path \
                 \"/tmp\", already listed at writablePaths[0]"
            ]
        );
    }

    #[test]
    fn nested_writable_paths() {
        assert_eq!(
            errors(
                "  filesystem: {readOnly: true, writablePaths: [/var/run, /var/run/postgresql]}\n"
            ),
            [
                "policies/db.yaml:11:58: spec.filesystem.writablePaths[1]: writable path \
                 \"/var/run/postgresql\" is inside writablePaths[0] \"/var/run\", which already \
                 makes it writable. Remove one of them"
            ]
        );
        assert_eq!(
            errors(
                "  filesystem: {readOnly: true, writablePaths: [/tmp, /var/run/postgresql, /var]}\n"
            ),
            [
                "policies/db.yaml:11:75: spec.filesystem.writablePaths[2]: writable path \"/var\" \
                 contains writablePaths[1] \"/var/run/postgresql\", which is then redundant. \
                 Remove one of them"
            ]
        );
    }

    #[test]
    fn writable_path_limit() {
        let list = |count: usize| {
            let entries: Vec<String> = (0..count).map(|i| format!("/data/{i}")).collect();
            format!(
                "  filesystem:\n    readOnly: true\n    writablePaths: [{}]\n",
                entries.join(", ")
            )
        };
        let policy = parse(&list(MAX_WRITABLE_PATHS));
        assert_eq!(
            policy.filesystem.unwrap().writable_paths.len(),
            MAX_WRITABLE_PATHS
        );
        assert_eq!(
            errors(&list(MAX_WRITABLE_PATHS + 1)),
            [
                "policies/db.yaml:13:20: spec.filesystem.writablePaths: too many paths in \
                 writablePaths: the list has 65, the maximum is 64. Make a common parent \
                 directory writable instead"
            ]
        );
    }

    #[test]
    fn exec_section_parses() {
        let policy = parse(
            "  exec:\n    allow: [/usr/lib/postgresql/15/bin/postgres, /bin/sh]\n    deny: [/bin/busybox]\n",
        );
        assert_eq!(
            policy.exec,
            Some(ExecPolicy {
                allow: Some(paths(&["/usr/lib/postgresql/15/bin/postgres", "/bin/sh"])),
                deny: paths(&["/bin/busybox"]),
            })
        );
        assert_eq!(policy.filesystem, None);
    }

    #[test]
    fn exec_with_one_list() {
        let policy = parse("  exec:\n    deny: [/usr/bin/apt]\n");
        assert_eq!(
            policy.exec,
            Some(ExecPolicy {
                allow: None,
                deny: paths(&["/usr/bin/apt"]),
            })
        );
        let policy = parse("  exec:\n    allow: [/bin/sh]\n");
        assert_eq!(
            policy.exec,
            Some(ExecPolicy {
                allow: Some(paths(&["/bin/sh"])),
                deny: Vec::new(),
            })
        );
    }

    #[test]
    fn exec_empty_allow_lets_nothing_run() {
        for sections in [
            "  exec:\n    allow: []\n",
            "  exec:\n    allow:\n",
            "  exec:\n    allow: null\n",
            "  exec:\n    allow: ~\n",
        ] {
            let policy = parse(sections);
            assert_eq!(
                policy.exec,
                Some(ExecPolicy {
                    allow: Some(Vec::new()),
                    deny: Vec::new(),
                }),
                "{sections}"
            );
        }
    }

    #[test]
    fn exec_without_lists() {
        let message = "spec.exec: exec needs allow (the only programs that may run) or a \
                       non-empty deny (programs that may never run). Remove exec to leave \
                       programs unrestricted";
        assert_eq!(
            errors("  exec: {}\n"),
            [format!("policies/db.yaml:11:9: {message}")]
        );
        assert_eq!(
            errors("  exec:\n    deny: []\n"),
            [format!("policies/db.yaml:12:5: {message}")]
        );
        assert_eq!(
            errors("  exec:\n"),
            [format!("policies/db.yaml:11:8: {message}")]
        );
    }

    #[test]
    fn exec_of_wrong_type() {
        assert_eq!(
            errors("  exec: [/bin/sh]\n"),
            ["policies/db.yaml:11:9: spec.exec: invalid type: sequence, expected an exec mapping"]
        );
        assert_eq!(
            errors("  exec:\n    allow: /bin/sh\n"),
            [
                "policies/db.yaml:12:12: spec.exec.allow: invalid type: string \"/bin/sh\", \
                 expected a list of absolute paths"
            ]
        );
    }

    #[test]
    fn misspelled_exec_field() {
        assert_eq!(
            errors("  exec:\n    allowed: [/bin/sh]\n"),
            [
                "policies/db.yaml:12:5: spec.exec: unknown field `allowed`, expected `allow` or \
                 `deny`"
            ]
        );
    }

    #[test]
    fn duplicate_exec_key() {
        assert_eq!(
            errors("  exec:\n    deny: [/bin/sh]\n    deny: [/bin/bash]\n"),
            ["policies/db.yaml:13:5: spec.exec: duplicate key `deny`"]
        );
    }

    #[test]
    fn duplicate_exec_path() {
        assert_eq!(
            errors("  exec:\n    deny: [/bin/sh, /bin/bash, /bin/sh]\n"),
            [
                "policies/db.yaml:12:32: spec.exec.deny[2]: duplicate path \"/bin/sh\", already \
                 listed at deny[0]"
            ]
        );
    }

    #[test]
    fn exec_path_in_both_lists() {
        assert_eq!(
            errors(
                "  exec:\n    allow: [/bin/sh, /bin/bash]\n    deny: [/bin/busybox, /bin/bash]\n"
            ),
            [
                "policies/db.yaml:13:26: spec.exec.deny[1]: path \"/bin/bash\" is also listed at \
                 allow[1], but a program cannot be both allowed and denied. Remove it from one of \
                 the lists"
            ]
        );
        assert_eq!(
            errors("  exec:\n    deny: [/bin/sh]\n    allow: [/bin/sh]\n"),
            [
                "policies/db.yaml:13:13: spec.exec.allow[0]: path \"/bin/sh\" is also listed at \
                 deny[0], but a program cannot be both allowed and denied. Remove it from one of \
                 the lists"
            ]
        );
    }

    #[test]
    fn exec_root_is_not_a_program() {
        assert_eq!(
            errors("  exec:\n    deny: [/]\n"),
            [
                "policies/db.yaml:12:12: spec.exec.deny[0]: invalid path \"/\" in deny: / is a \
                 directory, and exec lists name program files"
            ]
        );
    }

    #[test]
    fn invalid_exec_path() {
        assert_eq!(
            errors("  exec:\n    allow: [/usr/bin//python3]\n"),
            [
                "policies/db.yaml:12:13: spec.exec.allow[0]: invalid path \"/usr/bin//python3\": \
                 repeated '/', did you mean \"/usr/bin/python3\"?"
            ]
        );
        assert_eq!(
            errors("  exec:\n    deny: [bash]\n"),
            [
                "policies/db.yaml:12:12: spec.exec.deny[0]: invalid path \"bash\": not absolute, \
                 expected a path that starts with /"
            ]
        );
    }

    #[test]
    fn exec_list_limit() {
        let list = |field: &str, count: usize| {
            let entries: Vec<String> = (0..count).map(|i| format!("/opt/bin/p{i}")).collect();
            format!("  exec:\n    {field}: [{}]\n", entries.join(", "))
        };
        for field in ["allow", "deny"] {
            let policy = parse(&list(field, MAX_EXEC_LIST_PATHS));
            let exec = policy.exec.unwrap();
            let count = exec.allow.map_or(0, |allow| allow.len()) + exec.deny.len();
            assert_eq!(count, MAX_EXEC_LIST_PATHS, "{field}");
        }
        assert_eq!(
            errors(&list("allow", MAX_EXEC_LIST_PATHS + 1)),
            [
                "policies/db.yaml:12:12: spec.exec.allow: too many paths in allow: the list has \
                 257, the maximum is 256"
            ]
        );
        assert_eq!(
            errors(&list("deny", MAX_EXEC_LIST_PATHS + 1)),
            [
                "policies/db.yaml:12:11: spec.exec.deny: too many paths in deny: the list has \
                 257, the maximum is 256"
            ]
        );
    }

    #[test]
    fn all_sections_together() {
        let policy = parse(
            "  filesystem: {readOnly: true, writablePaths: [/tmp]}\n  \
             exec: {deny: [/bin/sh]}\n  network: {egress: []}\n",
        );
        assert!(policy.filesystem.is_some());
        assert!(policy.exec.is_some());
        assert_eq!(policy.network.unwrap().egress(), Some(&[][..]));
    }

    #[test]
    fn unknown_spec_field_lists_new_sections() {
        assert_eq!(
            errors("  files:\n    readOnly: true\n"),
            [
                "policies/db.yaml:11:3: spec: unknown field `files`, expected one of `selector`, \
                 `mode`, `filesystem`, `exec`, `network`"
            ]
        );
    }
}
