//! Positions in YAML documents, found through serde_yaml (0.9).
//!
//! serde_yaml exposes positions only on errors: an error raised inside a
//! `Visitor` method gets the position and the field path of the value being
//! deserialized. This module builds on that:
//!
//! - [`scan_document`] walks a whole document and raises an error at the
//!   second occurrence of a key. serde's derived structs would report a
//!   duplicate field at the start of the mapping, and maps such as
//!   `matchLabels` would silently keep the last value.
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
    /// invalid YAML, and serde_yaml repeats it for every later document.
    pub content_error: bool,
}

/// Walks one document and fails at the first duplicate key of any mapping,
/// or at the first YAML syntax error.
pub(super) fn scan_document(document: serde_yaml::Deserializer) -> Result<Scan, ScanError> {
    let content_error = Cell::new(false);
    NodeSeed {
        content_error: &content_error,
    }
    .deserialize(document)
    .map_err(|error| ScanError {
        error,
        content_error: content_error.get(),
    })
}

struct NodeSeed<'a> {
    content_error: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Scan;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Scan, D::Error> {
        deserializer.deserialize_any(NodeVisitor {
            content_error: self.content_error,
        })
    }
}

struct NodeVisitor<'a> {
    content_error: &'a Cell<bool>,
}

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = Scan;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scan, E> {
        Ok(Scan::Content)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Scan, E> {
        Ok(Scan::Content)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Scan, E> {
        Ok(Scan::Content)
    }

    fn visit_i128<E>(self, _: i128) -> Result<Scan, E> {
        Ok(Scan::Content)
    }

    fn visit_u128<E>(self, _: u128) -> Result<Scan, E> {
        Ok(Scan::Content)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Scan, E> {
        Ok(Scan::Content)
    }

    fn visit_str<E>(self, _: &str) -> Result<Scan, E> {
        Ok(Scan::Content)
    }

    /// serde_yaml visits `unit` for `null`, `~` and an empty value, such
    /// as the content of a `---` line with nothing after it.
    fn visit_unit<E>(self) -> Result<Scan, E> {
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
        let seed = || NodeSeed {
            content_error: self.content_error,
        };
        while seq.next_element_seed(seed())?.is_some() {}
        Ok(Scan::Content)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scan, A::Error> {
        let mut seen = HashSet::new();
        loop {
            let key_seed = KeySeed {
                seen: &mut seen,
                content_error: self.content_error,
            };
            if map.next_key_seed(key_seed)?.is_none() {
                return Ok(Scan::Content);
            }
            map.next_value_seed(NodeSeed {
                content_error: self.content_error,
            })?;
        }
    }

    /// serde_yaml visits an enum for a tagged node such as `!tag value`.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Scan, A::Error> {
        let (IgnoredAny, variant) = data.variant()?;
        variant.newtype_variant_seed(NodeSeed {
            content_error: self.content_error,
        })
    }
}

/// Reads one mapping key and fails, at the key's position, if the mapping
/// already had it.
struct KeySeed<'a> {
    seen: &'a mut HashSet<String>,
    content_error: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl KeySeed<'_> {
    fn insert<E: de::Error>(self, key: String) -> Result<(), E> {
        if self.seen.contains(&key) {
            self.content_error.set(true);
            return Err(E::custom(format!("duplicate key `{key}`")));
        }
        self.seen.insert(key);
        Ok(())
    }

    fn reject_complex_key<E: de::Error>(self) -> Result<(), E> {
        self.content_error.set(true);
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
    let text = error.to_string();
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
        let failure = scan_document(only_document(text)).unwrap_err();
        assert!(failure.content_error);
        let (position_found, message) = split_error(&failure.error);
        assert_eq!(position_found, Some(position(5, 3)));
        assert_eq!(message, "b: duplicate key `c`");
    }

    #[test]
    fn scan_reports_duplicate_key_in_flow_mapping() {
        let text = "labels: {app: x, app: y}\n";
        let failure = scan_document(only_document(text)).unwrap_err();
        let (position_found, message) = split_error(&failure.error);
        assert_eq!(position_found, Some(position(1, 18)));
        assert_eq!(message, "labels: duplicate key `app`");
    }

    #[test]
    fn scan_allows_same_key_in_sibling_mappings() {
        let text = "- {a: 1}\n- {a: 2}\n";
        assert_eq!(scan_document(only_document(text)).unwrap(), Scan::Content);
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
                scan_document(only_document(text)).unwrap(),
                Scan::Empty,
                "{text:?}"
            );
        }
    }

    #[test]
    fn scan_reports_syntax_error_as_not_content() {
        let text = "a: [1, 2\nb: 3\n";
        let failure = scan_document(only_document(text)).unwrap_err();
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
        let failure = scan_document(only_document(&text)).unwrap_err();
        assert!(!failure.content_error);
        assert_eq!(
            split_error(&failure.error),
            (None, "repetition limit exceeded".to_owned())
        );
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
