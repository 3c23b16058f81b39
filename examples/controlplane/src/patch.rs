//! JSON Patch (RFC 6902) for desired configurations, on top of the `json-patch` crate:
//! parses a patch document operation by operation and applies it to a copy, so a failing
//! operation leaves the original untouched and the error names the operation's index,
//! its `op`, its `path` and why it failed.

use serde_json::Value;

/// Why a patch was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PatchFailure {
    /// The index of the failing operation, if one is to blame.
    pub index: Option<usize>,
    /// Its `op` member, if it had one.
    pub op: Option<String>,
    /// Its `path` member, if it had one.
    pub path: Option<String>,
    /// Why it failed.
    pub reason: String,
    /// `true` when the document itself is malformed (an HTTP 400), `false` when a
    /// well-formed operation could not be applied (an HTTP 422).
    pub malformed: bool,
}

impl PatchFailure {
    fn describe(&self) -> String {
        match (self.index, &self.op, &self.path) {
            (Some(i), Some(op), Some(path)) => {
                format!("operation {i} ({op} at \"{path}\") failed: {}", self.reason)
            }
            (Some(i), Some(op), None) => format!("operation {i} ({op}) failed: {}", self.reason),
            (Some(i), None, _) => format!("operation {i} is invalid: {}", self.reason),
            (None, _, _) => self.reason.clone(),
        }
    }
}

/// A parsed patch document.
#[derive(Debug, Clone)]
pub struct Patch {
    ops: Vec<json_patch::PatchOperation>,
    raw: Vec<Value>,
}

impl Patch {
    /// Parses a patch document (a JSON array of operation objects).
    pub fn parse(document: &Value) -> Result<Self, PatchFailure> {
        let Some(items) = document.as_array() else {
            return Err(PatchFailure {
                index: None,
                op: None,
                path: None,
                reason: "a JSON Patch document must be a JSON array of operations".into(),
                malformed: true,
            });
        };
        let mut ops = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let op = <json_patch::PatchOperation as serde::Deserialize>::deserialize(item)
                .map_err(|e| PatchFailure {
                    index: Some(index),
                    op: item.get("op").and_then(Value::as_str).map(str::to_owned),
                    path: None,
                    reason: e.to_string(),
                    malformed: true,
                })?;
            ops.push(op);
        }
        Ok(Self {
            ops,
            raw: items.clone(),
        })
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the patch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies the patch to a copy of `document` and returns the result; `document` is
    /// never modified.
    pub fn apply(&self, document: &Value) -> Result<Value, PatchFailure> {
        let mut patched = document.clone();
        // The copy is dropped on failure, so nothing needs undoing: `patch_unsafe` does
        // not undo. (`json_patch::patch` does, and its undo panics on some patches, such
        // as a move onto the whole document followed by a failing operation.)
        json_patch::patch_unsafe(&mut patched, &self.ops).map_err(|e| {
            let raw = self.raw.get(e.operation);
            PatchFailure {
                index: Some(e.operation),
                op: raw
                    .and_then(|r| r.get("op"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                path: raw
                    .and_then(|r| r.get("path"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                reason: explain(&e.kind, raw),
                malformed: false,
            }
        })?;
        Ok(patched)
    }
}

fn explain(kind: &json_patch::PatchErrorKind, raw: Option<&Value>) -> String {
    use json_patch::PatchErrorKind as K;
    match kind {
        K::TestFailed => "the value at the path does not equal the test value".into(),
        K::InvalidFromPointer => format!(
            "\"from\" ({}) does not name an existing value",
            raw.and_then(|r| r.get("from")).unwrap_or(&Value::Null)
        ),
        K::InvalidPointer => {
            "the path does not name an existing value (or a valid insertion point)".into()
        }
        K::CannotMoveInsideItself => "cannot move a value into one of its own children".into(),
        other => other.to_string(),
    }
}

/// The properties the JSON Patch fuzz target (`fuzz/fuzz_targets/json_patch.rs`) checks
/// on one input, `<document JSON> NUL <patch JSON>`: parsing and applying never panic,
/// the document is never modified, a refusal names an operation that exists and says
/// whether the document was malformed, and applying is deterministic. Inputs that are
/// not two JSON texts are ignored (they are serde_json's to refuse).
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (doc, rest) = data.split_at(split);
    let Ok(document) = serde_json::from_slice::<Value>(doc) else {
        return;
    };
    let Ok(patch_doc) = serde_json::from_slice::<Value>(rest.get(1..).unwrap_or_default()) else {
        return;
    };
    let before = document.clone();
    match Patch::parse(&patch_doc) {
        Err(failure) => {
            assert!(failure.malformed, "a parse failure is malformed: {failure}");
            if let Some(index) = failure.index {
                assert!(index < patch_doc.as_array().map_or(0, Vec::len));
            }
            let _ = failure.to_string();
        }
        Ok(patch) => {
            let first = patch.apply(&document);
            assert_eq!(document, before, "apply modified its input");
            match &first {
                Ok(_) => {}
                Err(failure) => {
                    assert!(!failure.malformed, "an apply failure is not malformed");
                    let index = failure.index.expect("an apply failure names its operation");
                    assert!(index < patch.len(), "{failure}");
                    let _ = failure.to_string();
                }
            }
            assert_eq!(patch.apply(&document), first, "apply is deterministic");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failing_operation_leaves_the_document_untouched_and_is_named() {
        let doc = json!({"a": 1, "b": [1, 2]});
        let patch = Patch::parse(&json!([
            {"op": "replace", "path": "/a", "value": 2},
            {"op": "test", "path": "/a", "value": 1},
        ]))
        .unwrap();
        let err = patch.apply(&doc).unwrap_err();
        assert_eq!(err.index, Some(1));
        assert_eq!(err.op.as_deref(), Some("test"));
        assert_eq!(err.path.as_deref(), Some("/a"));
        assert!(!err.malformed);
        assert_eq!(doc, json!({"a": 1, "b": [1, 2]}));
    }

    /// Found by `scripts/fuzz` (json_patch, December 2, 2026): json-patch 5.0.0's
    /// `patch` panicked undoing a move onto the whole document ("unable to undo applied
    /// patches"), which took down the request.
    #[test]
    fn a_move_onto_the_whole_document_then_a_failing_operation_is_refused_not_a_panic() {
        let doc = json!({"a": 1, "b": [1, 2]});
        let patch = Patch::parse(&json!([
            {"op": "move", "from": "/b", "path": ""},
            {"op": "remove", "path": "/a/b^~1^^^^^^^^^^^^^~1^^^^"},
        ]))
        .unwrap();
        let failure = patch.apply(&doc).unwrap_err();
        assert_eq!(failure.index, Some(1), "{failure:?}");
        assert_eq!(failure.op.as_deref(), Some("remove"));
        // And the fuzz target's property holds for the input it found.
        fuzz_one(
            b"{\"a\":1,\"b\":[1,2]}\0[{\"op\":\"move\",\"from\":\"/b\",\"path\":\"\",\"value\":1},{\"op\":\"remove\",\"path\":\"/a/b^~1^^^^^^^^^^^^^~1^^^^\"}]",
        );
    }

    #[test]
    fn a_malformed_operation_is_named_by_index() {
        let err = Patch::parse(&json!([{"op": "add", "path": "/a", "value": 1},
                                      {"op": "frobnicate", "path": "/a"}]))
        .unwrap_err();
        assert_eq!(err.index, Some(1));
        assert!(err.malformed);
        assert!(err.to_string().contains("operation 1"), "{err}");
        assert!(
            Patch::parse(&json!({"op": "add"}))
                .unwrap_err()
                .index
                .is_none()
        );
    }
}
