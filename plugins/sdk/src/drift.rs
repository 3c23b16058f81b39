//! One difference between a desired and an actual configuration (the contract's `drift`).

use std::fmt;

use serde_json::Value;

/// How a value differs between the desired and the actual configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriftKind {
    /// Present in the desired configuration, absent from the actual one.
    Added,
    /// Present in the actual configuration, absent from the desired one.
    Removed,
    /// Present in both with different values.
    Changed,
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Added => "added",
            Self::Removed => "removed",
            Self::Changed => "changed",
        })
    }
}

/// One difference between the desired and the actual configuration.
///
/// Build one with [`Drift::added`], [`Drift::removed`] or [`Drift::changed`]; they write a
/// default message `<path>: <actual> -> <desired>` (what the instance runs, then what it
/// should run; `(absent)` for a missing side, values as compact JSON cut at 64 bytes),
/// which [`Drift::with_message`] replaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// JSON pointer (RFC 6901) of the value that differs; `""` is the whole document.
    /// Build it with the [`pointer`](crate::pointer) helpers so `~` and `/` are escaped.
    pub path: String,
    /// Whether the value was added, removed or changed.
    pub kind: DriftKind,
    /// The desired value; `None` when `kind` is [`DriftKind::Removed`].
    pub desired: Option<Value>,
    /// The actual value; `None` when `kind` is [`DriftKind::Added`].
    pub actual: Option<Value>,
    /// A short sentence for people, for example `port: 8080 -> 8081`.
    pub message: String,
}

/// What a default message shows for a missing side.
const ABSENT: &str = "(absent)";
/// Longest value rendering, in bytes, in a default message.
const MAX_RENDERED_VALUE_BYTES: usize = 64;

impl Drift {
    /// `desired` is at `path` in the desired configuration and missing from the actual one.
    pub fn added(path: impl Into<String>, desired: Value) -> Self {
        let path = path.into();
        let message = message(&path, ABSENT, &render(&desired));
        Self {
            path,
            kind: DriftKind::Added,
            desired: Some(desired),
            actual: None,
            message,
        }
    }

    /// `actual` is at `path` in the actual configuration and missing from the desired one.
    pub fn removed(path: impl Into<String>, actual: Value) -> Self {
        let path = path.into();
        let message = message(&path, &render(&actual), ABSENT);
        Self {
            path,
            kind: DriftKind::Removed,
            desired: None,
            actual: Some(actual),
            message,
        }
    }

    /// The value at `path` is `desired` in the desired configuration and `actual` in the
    /// actual one.
    pub fn changed(path: impl Into<String>, desired: Value, actual: Value) -> Self {
        let path = path.into();
        let message = message(&path, &render(&actual), &render(&desired));
        Self {
            path,
            kind: DriftKind::Changed,
            desired: Some(desired),
            actual: Some(actual),
            message,
        }
    }

    /// This drift as the contract carries it: values rendered as compact JSON text, whole
    /// (only the default message cuts them).
    pub fn into_wire(self) -> WireDrift {
        WireDrift {
            path: self.path,
            kind: self.kind,
            desired: self.desired.as_ref().map(json_text),
            actual: self.actual.as_ref().map(json_text),
            message: self.message,
        }
    }

    /// Replace the default message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
}

/// A drift as the contract carries it to the host: the values as compact JSON text.
///
/// [`Drift::into_wire`] makes one. A component's `compare` export returns one per drift;
/// natively, [`compare_wire`](crate::compare_wire) returns the same list, to check the
/// exact text the host will see or to benchmark a comparator against its component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireDrift {
    /// As [`Drift::path`].
    pub path: String,
    /// As [`Drift::kind`].
    pub kind: DriftKind,
    /// [`Drift::desired`] as compact JSON text.
    pub desired: Option<String>,
    /// [`Drift::actual`] as compact JSON text.
    pub actual: Option<String>,
    /// As [`Drift::message`].
    pub message: String,
}

/// `value` as compact JSON text. `serde_json::to_string` writes straight into a buffer;
/// `Value`'s `Display` goes through `fmt` a token at a time.
fn json_text(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| value.to_string())
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn label(path: &str) -> &str {
    if path.is_empty() { "(document)" } else { path }
}

/// `value` as compact JSON, cut at [`MAX_RENDERED_VALUE_BYTES`] on a character boundary.
///
/// Serialization stops a byte past the limit, so a large added or removed subtree is not
/// rendered whole only to be cut, and it writes bytes directly rather than through
/// `fmt::Display` (a dynamic `fmt::Write` call per piece).
fn render(value: &Value) -> String {
    let mut out = Bounded(Vec::with_capacity(MAX_RENDERED_VALUE_BYTES + 1));
    // The only error is `Bounded` refusing bytes past the limit: then `out` is full.
    let _ = serde_json::to_writer(&mut out, value);
    let mut bytes = out.0;
    let cut = bytes.len() > MAX_RENDERED_VALUE_BYTES;
    if cut {
        // Back up to the start of a UTF-8 sequence (never a continuation byte 0b10xxxxxx).
        let mut end = MAX_RENDERED_VALUE_BYTES;
        while bytes[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        bytes.truncate(end);
    }
    // serde_json writes UTF-8 and the cut is on a character boundary.
    let mut text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    if cut {
        text.push('…');
    }
    text
}

/// A writer that keeps the first [`MAX_RENDERED_VALUE_BYTES`] + 1 bytes and then fails.
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = MAX_RENDERED_VALUE_BYTES + 1 - self.0.len();
        if room == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let n = buf.len().min(room);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `<path>: <before> -> <after>` without `format!`'s machinery.
fn message(path: &str, before: &str, after: &str) -> String {
    let path = label(path);
    let mut message = String::with_capacity(path.len() + before.len() + after.len() + 6);
    message.push_str(path);
    message.push_str(": ");
    message.push_str(before);
    message.push_str(" -> ");
    message.push_str(after);
    message
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn into_wire_renders_values_whole_as_compact_json() {
        let long = "x".repeat(100);
        let wire = Drift::changed("/a", json!({"k": [1, 2], "s": long}), json!(null)).into_wire();
        assert_eq!(wire.path, "/a");
        assert_eq!(wire.kind, DriftKind::Changed);
        assert_eq!(
            wire.desired.as_deref(),
            Some(format!(r#"{{"k":[1,2],"s":"{long}"}}"#).as_str())
        );
        assert_eq!(wire.actual.as_deref(), Some("null"));
        // Only the message is cut.
        assert!(wire.message.ends_with('…'), "{}", wire.message);

        let added = Drift::added("/b", json!("v")).into_wire();
        assert_eq!(
            (added.desired.as_deref(), added.actual),
            (Some(r#""v""#), None)
        );
        let removed = Drift::removed("/c", json!(1.5)).into_wire();
        assert_eq!(
            (removed.desired, removed.actual.as_deref()),
            (None, Some("1.5"))
        );
    }

    #[test]
    fn builders_fill_sides_and_default_messages() {
        let changed = Drift::changed("/port", json!(8081), json!(8080));
        assert_eq!(changed.kind, DriftKind::Changed);
        assert_eq!(changed.message, "/port: 8080 -> 8081");

        let added = Drift::added("/sources/1", json!({"id": "b"}));
        assert_eq!(added.actual, None);
        assert_eq!(added.message, r#"/sources/1: (absent) -> {"id":"b"}"#);

        let removed = Drift::removed("", json!("x"));
        assert_eq!(removed.desired, None);
        assert_eq!(removed.message, r#"(document): "x" -> (absent)"#);
    }

    /// What `render` must produce: the whole rendering, then cut.
    fn reference_render(value: &Value) -> String {
        let mut text = value.to_string();
        if text.len() > MAX_RENDERED_VALUE_BYTES {
            let mut end = MAX_RENDERED_VALUE_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }

    #[test]
    fn render_matches_rendering_whole_then_cutting() {
        // Lengths around the limit, with one-, two-, three- and four-byte characters
        // landing on every position of the cut.
        for unit in ["a", "é", "€", "𝄞"] {
            for n in 0..80 {
                for value in [
                    json!(unit.repeat(n)),
                    json!({"k": unit.repeat(n), "n": 1}),
                    json!([n, unit.repeat(n)]),
                ] {
                    assert_eq!(render(&value), reference_render(&value), "{value}");
                }
            }
        }
        assert_eq!(render(&json!(null)), "null");
    }

    #[test]
    fn long_values_are_cut_on_a_char_boundary() {
        let long = "é".repeat(100);
        let drift = Drift::added("/a", json!(long));
        assert!(drift.message.ends_with('…'));
        assert!(drift.message.len() < 100);
    }
}
