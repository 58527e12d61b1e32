//! A linear pre-scan for deeply nested flow collections. libyaml, under
//! serde_yaml 0.9, takes time that grows faster than the depth for flow
//! collections nested tens of thousands deep: 100,000 `[` in a 200 KB file
//! did not finish within two minutes. serde_yaml's own limit of 128 levels
//! applies only after libyaml has scanned them. Rejecting such text first
//! keeps a small file from stalling the agent.
//!
//! Block collections need more indentation per level, so the file size
//! limit already bounds their depth to about 1,400 levels, which libyaml
//! parses quickly.

use super::Position;

/// Deepest flow nesting the pre-scan lets through to libyaml, which parses
/// that much quickly; serde_yaml then applies its own limit of 128 levels.
pub const MAX_FLOW_DEPTH: usize = 1024;

/// Returns the position of the first `[` or `{` that opens a flow
/// collection deeper than [`MAX_FLOW_DEPTH`], skipping quoted scalars and
/// comments. A bracket inside a plain scalar counts too, which can only
/// reject text that nests brackets more than 1024 deep.
pub fn too_deep(text: &str) -> Option<Position> {
    let mut depth = 0usize;
    let mut line = 1;
    let mut line_start = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut previous = '\n';
    let mut in_comment = false;
    for (index, character) in text.char_indices() {
        if character == '\n' {
            line += 1;
            line_start = index + 1;
            in_comment = false;
            previous = character;
            continue;
        }
        if in_comment {
            continue;
        }
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if character == '\\' => escaped = true,
            Some(open) if character == open => quote = None,
            Some(_) => {}
            None => match character {
                '"' | '\'' => quote = Some(character),
                '#' if previous.is_whitespace() => in_comment = true,
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Some(Position {
                            line,
                            column: text[line_start..index].chars().count() + 1,
                        });
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = character;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_flow_sequence_found_at_limit() {
        let text = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        let position = too_deep(&text).expect("too deep");
        assert_eq!((position.line, position.column), (1, 4 + MAX_FLOW_DEPTH));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn quoted_and_commented_brackets_do_not_count() {
        let brackets = "[".repeat(200);
        let text = format!("a: \"{brackets}\"\nb: '{brackets}'\n# {brackets}\nc: [[1], {{d: [2]}}]\n");
        assert_eq!(too_deep(&text), None);
    }

    #[test]
    fn nesting_at_the_limit_passes() {
        let text = format!("a: {}{}\n", "[".repeat(MAX_FLOW_DEPTH), "]".repeat(MAX_FLOW_DEPTH));
        assert_eq!(too_deep(&text), None);
    }
}
