//! Positions in YAML documents, found through serde_yaml (0.9).
//!
//! serde_yaml exposes positions only on errors: an error raised inside a
//! `Visitor` method gets the position and the field path of the value being
//! deserialized. This module builds on that:
//!
//! - [`scan_document`] walks a whole document and raises an error at the
//!   second occurrence of a key. serde's derived structs would report a
//!   duplicate field at the start of the mapping, and maps such as
//!   `matchLabels` would silently keep the last value. It also counts the
//!   nodes of the file, aliases expanded, against [`MAX_FILE_NODES`].
//! - [`locate`] finds the position of the value at a key path, by raising an
//!   error on purpose when it reaches that value.
//! - [`split_error`] separates a serde_yaml error into its position and its
//!   message.

use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::load::Position;

/// Result of [`scan_document`] for one document.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan {
    /// The document has no content: an empty file, only comments, a `---`
    /// with nothing after it, or only `null`.
    Empty,
    /// The document has content and no duplicate keys.
    Content,
}

/// An error found by [`scan_document`].
#[derive(Debug)]
pub(super) struct ScanError {
    pub error: serde_yaml::Error,
    /// Whether the error is about content (a duplicate or complex key), so
    /// that the documents after it can still be read. Any other error means
    /// invalid YAML or a file over [`MAX_FILE_NODES`], and serde_yaml
    /// repeats a YAML error for every later document.
    pub content_error: bool,
}

/// Maximum number of nodes in one file, counted with every alias
/// (`*name`) replaced by the node it refers to. YAML without aliases has at
/// most about one node per byte, so a file within the 1 MiB limit reaches
/// it only through aliases or a crafted run of empty values. serde_yaml
/// bounds the number of alias replacements but not the size of what each
/// one repeats, so without this limit a 1 MiB file could make every later
/// pass over its documents visit billions of nodes.
pub(super) const MAX_FILE_NODES: usize = 1_000_000;

/// The nodes that [`scan_document`] may still visit in one file.
pub(super) struct NodeBudget(Cell<usize>);

impl NodeBudget {
    pub(super) fn new() -> Self {
        Self(Cell::new(MAX_FILE_NODES))
    }

    /// Counts one node, failing once the file has more than
    /// [`MAX_FILE_NODES`].
    fn count_node<E: de::Error>(&self) -> Result<(), E> {
        let left = self.0.get().checked_sub(1).ok_or_else(|| {
            E::custom(format!(
                "the file has more than {MAX_FILE_NODES} nodes once its aliases (`*name`) are \
                 expanded. Write the values out instead of repeating anchors"
            ))
        })?;
        self.0.set(left);
        Ok(())
    }
}

/// State of one [`scan_document`] walk, shared by every node it visits.
struct ScanState<'a> {
    content_error: Cell<bool>,
    budget: &'a NodeBudget,
}

impl ScanState<'_> {
    fn count_node<E: de::Error>(&self) -> Result<(), E> {
        self.budget.count_node()
    }
}

/// Walks one document and fails at the first duplicate key of any mapping,
/// at the first YAML syntax error, or when the file that `budget` belongs
/// to has more than [`MAX_FILE_NODES`] nodes.
pub(super) fn scan_document(
    document: serde_yaml::Deserializer,
    budget: &NodeBudget,
) -> Result<Scan, ScanError> {
    let state = ScanState {
        content_error: Cell::new(false),
        budget,
    };
    NodeSeed { state: &state }
        .deserialize(document)
        .map_err(|error| ScanError {
            error,
            content_error: state.content_error.get(),
        })
}

struct NodeSeed<'a> {
    state: &'a ScanState<'a>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Scan;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scan, D::Error> {
        deserializer.deserialize_any(NodeVisitor { state: self.state })
    }
}

struct NodeVisitor<'a> {
    state: &'a ScanState<'a>,
}

impl NodeVisitor<'_> {
    fn content<E: de::Error>(&self) -> Result<Scan, E> {
        self.state.count_node()?;
        Ok(Scan::Content)
    }
}

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = Scan;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scan, E> {
        self.content()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scan, E> {
        self.content()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Scan, E> {
        self.content()
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Scan, E> {
        self.content()
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Scan, E> {
        self.content()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scan, E> {
        self.content()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Scan, E> {
        self.content()
    }

    /// serde_yaml visits `unit` for `null`, `~` and an empty value, such
    /// as the content of a `---` line with nothing after it.
    fn visit_unit<E: de::Error>(self) -> Result<Scan, E> {
        self.state.count_node()?;
        Ok(Scan::Empty)
    }

    /// serde_yaml visits `none` only for a document without any node.
    fn visit_none<E>(self) -> Result<Scan, E> {
        Ok(Scan::Empty)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scan, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scan, A::Error> {
        self.state.count_node()?;
        let seed = || NodeSeed { state: self.state };
        while seq.next_element_seed(seed())?.is_some() {}
        Ok(Scan::Content)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scan, A::Error> {
        self.state.count_node()?;
        let mut seen = HashSet::new();
        loop {
            let key_seed = KeySeed {
                seen: &mut seen,
                state: self.state,
            };
            if map.next_key_seed(key_seed)?.is_none() {
                return Ok(Scan::Content);
            }
            map.next_value_seed(NodeSeed { state: self.state })?;
        }
    }

    /// serde_yaml visits an enum for a tagged node such as `!tag value`.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Scan, A::Error> {
        let (IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant_seed(NodeSeed { state: self.state })
    }
}

/// Reads one mapping key and fails, at the key's position, if the mapping
/// already had it.
struct KeySeed<'a> {
    seen: &'a mut HashSet<String>,
    state: &'a ScanState<'a>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl KeySeed<'_> {
    fn insert<E: de::Error>(self, key: String) -> Result<(), E> {
        self.state.count_node()?;
        if self.seen.contains(&key) {
            self.state.content_error.set(true);
            return Err(E::custom(format!("duplicate key `{key}`")));
        }
        self.seen.insert(key);
        Ok(())
    }

    fn reject_complex_key<E: de::Error>(self) -> Result<(), E> {
        self.state.content_error.set(true);
        Err(E::custom(
            "a mapping key must be a plain value, not a list or mapping",
        ))
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a mapping key")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.insert(value.to_string())
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.insert(value.to_string())
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.insert(value.to_string())
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<(), E> {
        self.insert(value.to_string())
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<(), E> {
        self.insert(value.to_string())
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.insert(value.to_string())
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.insert(value.to_owned())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.insert("null".to_owned())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.reject_complex_key()
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.reject_complex_key()
    }

    fn visit_enum<A: EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.reject_complex_key()
    }
}

/// Message of the error that [`locate`] raises on purpose. It cannot come
/// from a document, because no check produces it.
const LOCATE_MARKER: &str = "\u{0}parapet: position of the requested value";

/// Returns the position of the value at `keys` (mapping keys from the
/// document root) in `document`, or `None` when the document has no such
/// value. An empty `keys` returns the position of the document's root node.
pub(super) fn locate(document: serde_yaml::Deserializer, keys: &[&str]) -> Option<Position> {
    match (LocateSeed { keys }).deserialize(document) {
        Ok(()) => None,
        Err(error) if error.to_string().contains(LOCATE_MARKER) => {
            error.location().map(|location| Position {
                line: location.line(),
                column: location.column(),
            })
        }
        Err(_) => None,
    }
}

struct LocateSeed<'a> {
    keys: &'a [&'a str],
}

impl<'de> DeserializeSeed<'de> for LocateSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.keys {
            [] => deserializer.deserialize_any(MarkVisitor),
            _ => deserializer.deserialize_any(self),
        }
    }
}

/// Walks mappings along `keys`. Any other kind of node ends the search.
impl<'de> Visitor<'de> for LocateSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Ok(())
    }

    fn visit_enum<A: EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (first, rest) = self.keys.split_first().expect("keys is not empty here");
        while let Some(key) = map.next_key::<KeyText>()? {
            if key.0.as_deref() == Some(*first) {
                return map.next_value_seed(LocateSeed { keys: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }
}

/// Raises the [`LOCATE_MARKER`] error on whatever node it visits.
struct MarkVisitor;

impl MarkVisitor {
    fn mark<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(LOCATE_MARKER))
    }
}

impl<'de> Visitor<'de> for MarkVisitor {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(LOCATE_MARKER)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.mark()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.mark()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.mark()
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.mark()
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.mark()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.mark()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.mark()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.mark()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.mark()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.mark()
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.mark()
    }

    fn visit_enum<A: EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        self.mark()
    }
}

/// A mapping key as text, or `None` for a key that is a list or mapping.
struct KeyText(Option<String>);

impl<'de> de::Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(KeyTextVisitor)
    }
}

struct KeyTextVisitor;

impl<'de> Visitor<'de> for KeyTextVisitor {
    type Value = KeyText;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a mapping key")
    }

    fn visit_bool<E>(self, value: bool) -> Result<KeyText, E> {
        Ok(KeyText(Some(value.to_string())))
    }

    fn visit_i64<E>(self, value: i64) -> Result<KeyText, E> {
        Ok(KeyText(Some(value.to_string())))
    }

    fn visit_u64<E>(self, value: u64) -> Result<KeyText, E> {
        Ok(KeyText(Some(value.to_string())))
    }

    fn visit_f64<E>(self, value: f64) -> Result<KeyText, E> {
        Ok(KeyText(Some(value.to_string())))
    }

    fn visit_str<E>(self, value: &str) -> Result<KeyText, E> {
        Ok(KeyText(Some(value.to_owned())))
    }

    fn visit_unit<E>(self) -> Result<KeyText, E> {
        Ok(KeyText(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<KeyText, A::Error> {
        Ok(KeyText(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<KeyText, A::Error> {
        Ok(KeyText(None))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, _: A) -> Result<KeyText, A::Error> {
        Ok(KeyText(None))
    }
}

/// Splits a serde_yaml error into its position, if it has one, and its
/// message without the position. serde_yaml's `Display` writes
/// `PATH: MESSAGE at line L column C` for errors raised while deserializing
/// (no `PATH: ` at the document root), and `PROBLEM at line L column C,
/// CONTEXT at line L2 column C2` for YAML syntax errors. It leaves out the
/// position when it is line 1, column 1.
pub(super) fn split_error(error: &serde_yaml::Error) -> (Option<Position>, String) {
    let text = explain_limit(error.to_string());
    let Some(location) = error.location() else {
        return (None, text);
    };
    let position = Position {
        line: location.line(),
        column: location.column(),
    };
    let suffix = format!(" at line {} column {}", location.line(), location.column());
    let message = match text.strip_suffix(&suffix) {
        Some(message) => message.to_owned(),
        None => text.replacen(&suffix, "", 1),
    };
    (Some(position), message)
}

/// Adds the cause to serde_yaml's messages for its limits, which name the
/// limit only.
fn explain_limit(message: String) -> String {
    if message.starts_with("recursion limit exceeded") {
        // serde_yaml (0.9) allows 128 levels of nesting.
        message.replacen(
            "recursion limit exceeded",
            "recursion limit exceeded: lists and mappings nest more than 128 levels deep, or \
             an alias (`*name`) is inside the node its anchor (`&name`) marks",
            1,
        )
    } else if message.starts_with("repetition limit exceeded") {
        message.replacen(
            "repetition limit exceeded",
            "repetition limit exceeded: aliases (`*name`) are expanded too many times",
            1,
        )
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_document(text: &str) -> serde_yaml::Deserializer<'_> {
        serde_yaml::Deserializer::from_str(text)
            .next()
            .expect("one document")
    }

    fn position(line: usize, column: usize) -> Position {
        Position { line, column }
    }

    #[test]
    fn scan_reports_duplicate_key_at_second_key() {
        let text = "a: 1\nb:\n  c: 1\n  d: 2\n  c: 3\n";
        let failure = scan_document(only_document(text), &NodeBudget::new()).unwrap_err();
        assert!(failure.content_error);
        let (position_found, message) = split_error(&failure.error);
        assert_eq!(position_found, Some(position(5, 3)));
        assert_eq!(message, "b: duplicate key `c`");
    }

    #[test]
    fn scan_reports_duplicate_key_in_flow_mapping() {
        let text = "labels: {app: x, app: y}\n";
        let failure = scan_document(only_document(text), &NodeBudget::new()).unwrap_err();
        let (position_found, message) = split_error(&failure.error);
        assert_eq!(position_found, Some(position(1, 18)));
        assert_eq!(message, "labels: duplicate key `app`");
    }

    #[test]
    fn scan_allows_same_key_in_sibling_mappings() {
        let text = "- {a: 1}\n- {a: 2}\n";
        assert_eq!(
            scan_document(only_document(text), &NodeBudget::new()).unwrap(),
            Scan::Content
        );
    }

    #[test]
    fn scan_reports_empty_documents() {
        for text in [
            "",
            "# comment only\n",
            "---\n",
            "--- # comment\n",
            "null\n",
            "~\n",
        ] {
            assert_eq!(
                scan_document(only_document(text), &NodeBudget::new()).unwrap(),
                Scan::Empty,
                "{text:?}"
            );
        }
    }

    #[test]
    fn scan_reports_syntax_error_as_not_content() {
        let text = "a: [1, 2\nb: 3\n";
        let failure = scan_document(only_document(text), &NodeBudget::new()).unwrap_err();
        assert!(!failure.content_error);
        assert!(failure.error.location().is_some());
    }

    #[test]
    fn repetition_limit_error_has_no_position() {
        let mut text = String::from("l0: &l0 [a, a, a, a, a, a, a, a, a, a]\n");
        for level in 1..9 {
            let items = vec![format!("*l{}", level - 1); 10].join(", ");
            text.push_str(&format!("l{level}: &l{level} [{items}]\n"));
        }
        let failure = scan_document(only_document(&text), &NodeBudget::new()).unwrap_err();
        assert!(!failure.content_error);
        assert_eq!(
            split_error(&failure.error),
            (
                None,
                "repetition limit exceeded: aliases (`*name`) are expanded too many times"
                    .to_owned()
            )
        );
    }

    /// 1001 aliases of a list of 1000 items: 1002 alias replacements, far
    /// below serde_yaml's own limit, but more than a million nodes.
    #[test]
    fn scan_limits_nodes_after_alias_expansion() {
        let items = vec!["x"; 1000].join(", ");
        let aliases = vec!["*a"; 1001].join(", ");
        let text = format!("a: &a [{items}]\nb: [{aliases}]\n");
        let failure = scan_document(only_document(&text), &NodeBudget::new()).unwrap_err();
        assert!(!failure.content_error);
        let (_, message) = split_error(&failure.error);
        assert!(
            message.contains("more than 1000000 nodes once its aliases"),
            "{message}"
        );
    }

    #[test]
    fn scan_accepts_file_at_node_limit() {
        // The root mapping, its key and its list are three nodes.
        let items = vec!["x"; MAX_FILE_NODES - 3].join(",");
        let text = format!("a: [{items}]\n");
        let scan = scan_document(only_document(&text), &NodeBudget::new());
        assert_eq!(scan.unwrap(), Scan::Content);
        let text = format!("a: [{items},x]\n");
        let scan = scan_document(only_document(&text), &NodeBudget::new());
        assert!(!scan.unwrap_err().content_error);
    }

    #[test]
    fn node_budget_spans_documents() {
        let budget = NodeBudget::new();
        let items = vec!["x"; MAX_FILE_NODES / 2].join(",");
        let text = format!("[{items}]\n---\n[{items}]\n");
        let mut documents = serde_yaml::Deserializer::from_str(&text);
        let first = documents.next().unwrap();
        assert_eq!(scan_document(first, &budget).unwrap(), Scan::Content);
        let second = documents.next().unwrap();
        assert!(scan_document(second, &budget).is_err());
    }

    #[test]
    fn locate_finds_nested_value() {
        let text = "metadata:\n  labels: {}\n  name: records-db\n";
        let found = locate(only_document(text), &["metadata", "name"]);
        assert_eq!(found, Some(position(3, 9)));
    }

    #[test]
    fn locate_finds_value_in_flow_mapping() {
        let text = "metadata: {name: x}\n";
        let found = locate(only_document(text), &["metadata", "name"]);
        assert_eq!(found, Some(position(1, 18)));
    }

    #[test]
    fn locate_returns_none_for_missing_key() {
        let text = "metadata:\n  name: x\n";
        assert_eq!(locate(only_document(text), &["spec", "mode"]), None);
        assert_eq!(
            locate(only_document(text), &["metadata", "name", "x"]),
            None
        );
    }

    #[test]
    fn locate_root_in_later_document() {
        let text = "a: 1\n---\n# comment\nb: 2\n";
        let second = serde_yaml::Deserializer::from_str(text).nth(1).unwrap();
        assert_eq!(locate(second, &[]), Some(position(4, 1)));
    }

    #[test]
    fn split_error_strips_position_from_message() {
        let error = serde_yaml::from_str::<u16>("70000").unwrap_err();
        let (found, message) = split_error(&error);
        assert_eq!(found, Some(position(1, 1)));
        assert_eq!(message, "invalid value: integer `70000`, expected u16");
    }

    #[test]
    fn split_error_keeps_syntax_error_context() {
        let error = serde_yaml::from_str::<serde_yaml::Value>("a:\n  b: 1\n c: 2\n").unwrap_err();
        let (found, message) = split_error(&error);
        assert_eq!(found, Some(position(3, 2)));
        assert_eq!(
            message,
            "did not find expected key, while parsing a block mapping"
        );
    }
}
