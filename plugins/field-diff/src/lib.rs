//! `field-diff`: a comparator that diffs two JSON documents structurally.
//!
//! Start reading at [`FieldDiff::compare`]. The rules:
//!
//! - Objects are compared key by key: a key only in the desired document is
//!   [`DriftKind::Added`](setpoint_plugin::DriftKind::Added), only in the actual one
//!   `Removed`, in both with different values `Changed` (or the differences inside it).
//! - A value whose JSON type differs (object vs. array, string vs. number, …) is one
//!   `Changed` drift. Numbers compare by value: `8080` equals `8080.0`.
//! - Lists whose elements are all objects carrying a unique string or number `id`, on
//!   both sides, are matched by `id` regardless of order. Other lists are compared index
//!   by index, with extra elements added or removed at the end.
//! - Paths are JSON pointers (RFC 6901) that resolve in a real document: the desired
//!   document for added and changed values, the actual document for removed ones. For an
//!   element matched by `id` that means its index in the desired document (in the actual
//!   one when it was removed); the message names the `id` instead, as
//!   `/queries[id=q1]/query: "MATCH a" -> "MATCH b"`.
//!
//! Parameters (a JSON object, all optional):
//!
//! - `ignore`: a list of JSON pointers. A drift is dropped when one of them is its path
//!   or an ancestor of it, token by token: `/sources` ignores `/sources/0/host` but not
//!   `/sourcesExtra`. Pointers match the paths described above.
//!
//! Any other parameter is rejected, so a typo does not silently compare everything.
//!
//! Natively, [`compare_wire`] runs exactly what the component's `compare` export runs;
//! [`compare_json`] stops before the drifts become the contract's records.

use std::collections::HashMap;

use setpoint_plugin::serde_json::{Map, Value};
use setpoint_plugin::{Comparator, Drift, Metadata, PluginError, pointer};

/// The `field-diff` comparator.
#[derive(Debug)]
pub struct FieldDiff;

#[cfg(feature = "export")]
setpoint_plugin::comparator!(FieldDiff);

impl Comparator for FieldDiff {
    fn metadata() -> Metadata {
        Metadata::comparator(
            "field-diff",
            env!("CARGO_PKG_VERSION"),
            "Structural JSON diff with ignore paths and lists matched by id",
        )
    }

    fn compare(desired: &Value, actual: &Value, params: &Value) -> Result<Vec<Drift>, PluginError> {
        let params = Params::parse(params)?;
        let mut diff = Diff {
            params: &params,
            path: String::new(),
            ids: Vec::new(),
            drifts: Vec::new(),
        };
        diff.value(desired, actual);
        Ok(diff.drifts)
    }
}

/// Parse the JSON texts and diff them, for native callers and tests.
pub fn compare_json(desired: &str, actual: &str, params: &str) -> Result<Vec<Drift>, PluginError> {
    setpoint_plugin::compare_json::<FieldDiff>(desired, actual, params)
}

/// [`compare_json`], then each drift as the record the contract carries (values as JSON
/// text): exactly what the Wasm `compare` export runs, minus the canonical ABI. The
/// host's benchmark measures the component against it.
pub fn compare_wire(
    desired: &str,
    actual: &str,
    params: &str,
) -> Result<Vec<setpoint_plugin::WireDrift>, PluginError> {
    setpoint_plugin::compare_wire::<FieldDiff>(desired, actual, params)
}

/// The parameters `field-diff` accepts.
#[derive(Debug, Default)]
struct Params {
    /// Pointers whose subtrees are not compared.
    ignore: Vec<String>,
}

impl Params {
    fn parse(params: &Value) -> Result<Self, PluginError> {
        let Value::Object(params) = params else {
            return Err(PluginError::invalid_params(format!(
                "params must be a JSON object, got {params}"
            )));
        };
        let mut parsed = Self::default();
        for (name, value) in params {
            match name.as_str() {
                "ignore" => parsed.ignore = parse_ignore(value)?,
                other => {
                    return Err(PluginError::invalid_params(format!(
                        "unknown parameter `{other}`; field-diff accepts `ignore`"
                    )));
                }
            }
        }
        Ok(parsed)
    }

    fn ignores(&self, path: &str) -> bool {
        self.ignore
            .iter()
            .any(|prefix| pointer::has_prefix(path, prefix))
    }
}

fn parse_ignore(value: &Value) -> Result<Vec<String>, PluginError> {
    let expected = || {
        PluginError::invalid_params(format!(
            "parameter `ignore` must be a list of JSON pointers such as [\"/sources\"], got {value}"
        ))
    };
    let Value::Array(items) = value else {
        return Err(expected());
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(p) if pointer::is_valid(p) => Ok(p.clone()),
            Value::String(p) => Err(PluginError::invalid_params(format!(
                "parameter `ignore`: {p:?} is not a JSON pointer (it must be empty or start with `/`, and `~` must be followed by 0 or 1)"
            ))),
            _ => Err(expected()),
        })
        .collect()
}

/// One diff in progress: the current position and the drifts found so far.
struct Diff<'p, 'v> {
    params: &'p Params,
    /// The pointer of the value being compared.
    path: String,
    /// The elements matched by id on the way to `path`: where each one's token starts and
    /// ends in `path`, and its id. Messages show those tokens as `[id=…]`; the label is
    /// only rendered when a drift is recorded, so walking equal subtrees costs no second
    /// string.
    ids: Vec<(usize, usize, IdKey<'v>)>,
    drifts: Vec<Drift>,
}

impl<'v> Diff<'_, 'v> {
    /// Compare the values at the current position.
    ///
    /// Equal values hold no drift at any depth, so an equal subtree is skipped whole: one
    /// equality pass (which stops at the first difference) instead of a walk that builds
    /// the pointer of every key and index in it. Configurations that drift usually do so
    /// in a few places, so most subtrees end here.
    fn value(&mut self, desired: &'v Value, actual: &'v Value) {
        if desired == actual || self.params.ignores(&self.path) {
            return;
        }
        match (desired, actual) {
            (Value::Object(d), Value::Object(a)) => self.object(d, a),
            (Value::Array(d), Value::Array(a)) => match (IdIndex::of(d), IdIndex::of(a)) {
                (Some(d_ids), Some(a_ids)) => self.keyed_list(d, &d_ids, a, &a_ids),
                _ => self.list(d, a),
            },
            (Value::Number(_), Value::Number(_)) if same_number(desired, actual) => {}
            _ => self.push(Drift::changed(
                self.path.clone(),
                desired.clone(),
                actual.clone(),
            )),
        }
    }

    /// Both maps iterate in key order (serde_json's `Map` is a `BTreeMap`; the test
    /// `maps_iterate_in_key_order` guards that), so one merge pass pairs the keys: one
    /// key comparison per step instead of a tree lookup per key on each side. Drifts
    /// come out as before: the desired keys in order, then the keys only in `actual`.
    fn object(&mut self, desired: &'v Map<String, Value>, actual: &'v Map<String, Value>) {
        let mut only_actual = Vec::new();
        let mut actual = actual.iter().peekable();
        for (key, d) in desired {
            while let Some(entry) = actual.next_if(|(a_key, _)| *a_key < key) {
                only_actual.push(entry);
            }
            let counterpart = actual.next_if(|(a_key, _)| *a_key == key).map(|(_, a)| a);
            self.enter(Token::Key(key), None, |diff| match counterpart {
                Some(a) => diff.value(d, a),
                None => diff.added(d),
            });
        }
        for (key, a) in only_actual.into_iter().chain(actual) {
            self.enter(Token::Key(key), None, |diff| diff.removed(a));
        }
    }

    fn list(&mut self, desired: &'v [Value], actual: &'v [Value]) {
        for (i, d) in desired.iter().enumerate() {
            self.enter(Token::Index(i), None, |diff| match actual.get(i) {
                Some(a) => diff.value(d, a),
                None => diff.added(d),
            });
        }
        for (i, a) in actual.iter().enumerate().skip(desired.len()) {
            self.enter(Token::Index(i), None, |diff| diff.removed(a));
        }
    }

    fn keyed_list(
        &mut self,
        desired: &'v [Value],
        desired_ids: &IdIndex<'v>,
        actual: &'v [Value],
        actual_ids: &IdIndex<'v>,
    ) {
        for (i, d) in desired.iter().enumerate() {
            let id = desired_ids.ids[i];
            self.enter(Token::Index(i), Some(id), |diff| {
                match actual_ids.find(id) {
                    Some(j) => diff.value(d, &actual[j]),
                    None => diff.added(d),
                }
            });
        }
        for (j, a) in actual.iter().enumerate() {
            let id = actual_ids.ids[j];
            if desired_ids.find(id).is_none() {
                self.enter(Token::Index(j), Some(id), |diff| diff.removed(a));
            }
        }
    }

    /// Run `f` one level down, at `token` (an element matched by `id` when given).
    fn enter(&mut self, token: Token<'_>, id: Option<IdKey<'v>>, f: impl FnOnce(&mut Self)) {
        let start = self.path.len();
        match token {
            Token::Key(key) => pointer::push(&mut self.path, key),
            Token::Index(i) => push_index(&mut self.path, i),
        }
        if let Some(id) = id {
            self.ids.push((start, self.path.len(), id));
        }
        f(self);
        if id.is_some() {
            self.ids.pop();
        }
        self.path.truncate(start);
    }

    fn added(&mut self, desired: &Value) {
        if !self.params.ignores(&self.path) {
            self.push(Drift::added(self.path.clone(), desired.clone()));
        }
    }

    fn removed(&mut self, actual: &Value) {
        if !self.params.ignores(&self.path) {
            self.push(Drift::removed(self.path.clone(), actual.clone()));
        }
    }

    /// `path` as messages show it: elements matched by id appear as `[id=…]`, as in
    /// `/queries[id=q1]/query`.
    fn label(&self) -> String {
        let mut label = String::with_capacity(self.path.len() + 16);
        let mut copied = 0;
        for (start, end, id) in &self.ids {
            label.push_str(&self.path[copied..*start]);
            label.push_str("[id=");
            id.push_to(&mut label);
            label.push(']');
            copied = *end;
        }
        label.push_str(&self.path[copied..]);
        label
    }

    /// Record `drift`, rewriting its message's path into the label when they differ.
    fn push(&mut self, mut drift: Drift) {
        // The default messages start with the path verbatim (see `Drift::changed`).
        if !self.ids.is_empty() && drift.message.starts_with(&self.path) {
            let mut message = self.label();
            message.push_str(&drift.message[self.path.len()..]);
            drift.message = message;
        }
        self.drifts.push(drift);
    }
}

/// One step down a document: an object key or a list index.
#[derive(Debug, Clone, Copy)]
enum Token<'a> {
    Key(&'a str),
    Index(usize),
}

/// Append list index `i` to `path` as a pointer token, without a temporary string.
fn push_index(path: &mut String, i: usize) {
    path.push('/');
    path.push_str(itoa::Buffer::new().format(i));
}

/// An element's `id`: a string or a number (compared by its JSON text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IdKey<'a> {
    String(&'a str),
    Number(&'a setpoint_plugin::serde_json::Number),
}

impl IdKey<'_> {
    /// Append the id as messages show it: a string as is, a number as its JSON text.
    /// A string id (the usual kind) is copied rather than written through `Display`: in
    /// Wasm, `fmt`'s dynamic calls cost an indirect-call table fill per instance, and every
    /// call gets a fresh instance. Number ids still go through `fmt`.
    fn push_to(&self, out: &mut String) {
        match self {
            Self::String(s) => out.push_str(s),
            Self::Number(n) => out.push_str(&n.to_string()),
        }
    }
}

fn id_of(value: &Value) -> Option<IdKey<'_>> {
    match value.as_object()?.get("id")? {
        Value::String(s) => Some(IdKey::String(s)),
        Value::Number(n) => Some(IdKey::Number(n)),
        _ => None,
    }
}

/// The ids of a list whose elements are all objects with a unique `id`.
struct IdIndex<'v> {
    /// The id of each element, in list order.
    ids: Vec<IdKey<'v>>,
    /// Position by id, for lists longer than [`IdIndex::SCAN_LIMIT`]; shorter ones (the
    /// usual configuration list) are scanned, which beats hashing every id.
    positions: Option<HashMap<IdKey<'v>, usize>>,
}

impl<'v> IdIndex<'v> {
    const SCAN_LIMIT: usize = 16;

    /// The index of `list`; `None` when an element is not an object with an `id` or two
    /// elements share one.
    fn of(list: &'v [Value]) -> Option<Self> {
        let ids = list.iter().map(id_of).collect::<Option<Vec<_>>>()?;
        if ids.len() <= Self::SCAN_LIMIT {
            let unique = ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id));
            return unique.then_some(IdIndex {
                ids,
                positions: None,
            });
        }
        let mut positions = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if positions.insert(*id, i).is_some() {
                return None;
            }
        }
        Some(IdIndex {
            ids,
            positions: Some(positions),
        })
    }

    /// The position of the element with `id`.
    fn find(&self, id: IdKey<'_>) -> Option<usize> {
        match &self.positions {
            Some(positions) => positions.get(&id).copied(),
            None => self.ids.iter().position(|x| *x == id),
        }
    }
}

/// Numbers are equal when their values are: `8080` equals `8080.0`.
fn same_number(a: &Value, b: &Value) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use setpoint_plugin::DriftKind;
    use setpoint_plugin::serde_json::json;

    use super::*;

    fn diff(desired: Value, actual: Value, params: Value) -> Vec<Drift> {
        FieldDiff::compare(&desired, &actual, &params).expect("compare succeeds")
    }

    fn summary(drifts: &[Drift]) -> Vec<(String, DriftKind)> {
        drifts.iter().map(|d| (d.path.clone(), d.kind)).collect()
    }

    #[test]
    fn identical_documents_have_no_drift() {
        let doc = json!({"host": "0.0.0.0", "port": 8080, "sources": [{"id": "a"}], "x": [1, 2]});
        assert!(diff(doc.clone(), doc, json!({})).is_empty());
    }

    #[test]
    fn scalar_change_reports_both_values_and_a_message() {
        let drifts = diff(json!({"port": 8081}), json!({"port": 8080}), json!({}));
        assert_eq!(drifts.len(), 1);
        assert_eq!(drifts[0].path, "/port");
        assert_eq!(drifts[0].kind, DriftKind::Changed);
        assert_eq!(drifts[0].desired, Some(json!(8081)));
        assert_eq!(drifts[0].actual, Some(json!(8080)));
        assert_eq!(drifts[0].message, "/port: 8080 -> 8081");
    }

    #[test]
    fn keys_only_on_one_side_are_added_or_removed() {
        let drifts = diff(
            json!({"a": 1, "b": {"c": true}}),
            json!({"a": 1, "d": null}),
            json!({}),
        );
        assert_eq!(
            summary(&drifts),
            [
                ("/b".into(), DriftKind::Added),
                ("/d".into(), DriftKind::Removed)
            ]
        );
    }

    #[test]
    fn type_change_is_one_changed_drift() {
        let drifts = diff(json!({"a": [1]}), json!({"a": {"0": 1}}), json!({}));
        assert_eq!(summary(&drifts), [("/a".into(), DriftKind::Changed)]);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(diff(json!({"p": 8080}), json!({"p": 8080.0}), json!({})).is_empty());
        assert_eq!(diff(json!({"p": 1}), json!({"p": "1"}), json!({})).len(), 1);
    }

    #[test]
    fn plain_lists_compare_by_index() {
        let drifts = diff(json!({"l": [1, 2, 3]}), json!({"l": [1, 5]}), json!({}));
        assert_eq!(
            summary(&drifts),
            [
                ("/l/1".into(), DriftKind::Changed),
                ("/l/2".into(), DriftKind::Added)
            ]
        );
        let drifts = diff(json!({"l": []}), json!({"l": ["x"]}), json!({}));
        assert_eq!(summary(&drifts), [("/l/0".into(), DriftKind::Removed)]);
    }

    #[test]
    fn id_keyed_lists_ignore_order() {
        let desired = json!({"queries": [{"id": "a", "q": 1}, {"id": "b", "q": 2}]});
        let actual = json!({"queries": [{"id": "b", "q": 2}, {"id": "a", "q": 1}]});
        assert!(diff(desired, actual, json!({})).is_empty());
    }

    #[test]
    fn id_keyed_paths_use_desired_index_and_actual_index_for_removed() {
        let desired = json!({"queries": [{"id": "a", "q": 1}, {"id": "c", "q": 3}]});
        let actual = json!({"queries": [{"id": "b", "q": 2}, {"id": "a", "q": 9}]});
        let drifts = diff(desired, actual, json!({}));
        assert_eq!(
            summary(&drifts),
            [
                ("/queries/0/q".into(), DriftKind::Changed),
                ("/queries/1".into(), DriftKind::Added),
                ("/queries/0".into(), DriftKind::Removed),
            ]
        );
        assert_eq!(drifts[0].message, "/queries[id=a]/q: 9 -> 1");
        assert!(
            drifts[1]
                .message
                .starts_with("/queries[id=c]: (absent) -> ")
        );
        assert!(
            drifts[2]
                .message
                .starts_with(r#"/queries[id=b]: {"id":"b","q":2} -> (absent)"#)
        );
    }

    #[test]
    fn maps_iterate_in_key_order() {
        // `Diff::object` merges the two maps' keys in one pass, which needs sorted
        // iteration: serde_json's `preserve_order` feature would break it.
        let mut map = Map::new();
        for key in ["b", "c", "a"] {
            map.insert(key.into(), Value::Null);
        }
        assert_eq!(map.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn object_keys_interleaved_on_both_sides() {
        let drifts = diff(
            json!({"b": 1, "d": 2, "f": 3, "h": 4}),
            json!({"a": 0, "b": 1, "c": 0, "d": 9, "g": 0, "i": 0}),
            json!({}),
        );
        assert_eq!(
            summary(&drifts),
            [
                ("/d".into(), DriftKind::Changed),
                ("/f".into(), DriftKind::Added),
                ("/h".into(), DriftKind::Added),
                ("/a".into(), DriftKind::Removed),
                ("/c".into(), DriftKind::Removed),
                ("/g".into(), DriftKind::Removed),
                ("/i".into(), DriftKind::Removed),
            ]
        );
    }

    #[test]
    fn long_id_keyed_lists_match_by_id() {
        // Longer than IdIndex::SCAN_LIMIT, so matched through the hash index.
        let desired: Vec<Value> = (0..40).map(|i| json!({"id": i, "v": i})).collect();
        let mut actual: Vec<Value> = desired.iter().rev().cloned().collect();
        actual[0] = json!({"id": 39, "v": -1});
        let drifts = diff(json!({"l": desired}), json!({"l": actual}), json!({}));
        assert_eq!(summary(&drifts), [("/l/39/v".into(), DriftKind::Changed)]);
        assert_eq!(drifts[0].message, "/l[id=39]/v: -1 -> 39");

        let mut duplicated: Vec<Value> = (0..40).map(|i| json!({"id": i})).collect();
        duplicated[39] = json!({"id": 0});
        let drifts = diff(
            json!({"l": duplicated.clone()}),
            json!({"l": duplicated.iter().rev().cloned().collect::<Vec<_>>()}),
            json!({}),
        );
        assert!(!drifts.is_empty(), "duplicate ids fall back to by-index");
    }

    #[test]
    fn nested_id_keyed_labels() {
        let desired = json!({"s": [{"id": "x", "q": [{"id": 7, "v": 1}]}]});
        let actual = json!({"s": [{"id": "x", "q": [{"id": 7, "v": 2}]}]});
        let drifts = diff(desired, actual, json!({}));
        assert_eq!(drifts[0].path, "/s/0/q/0/v");
        assert_eq!(drifts[0].message, "/s[id=x]/q[id=7]/v: 2 -> 1");
    }

    #[test]
    fn index_tokens_are_decimal() {
        for (i, text) in [(0, "/0"), (7, "/7"), (10, "/10"), (1234, "/1234")] {
            let mut path = String::new();
            push_index(&mut path, i);
            assert_eq!(path, text);
        }
        let mut path = String::from("/a");
        push_index(&mut path, usize::MAX);
        assert_eq!(path, format!("/a/{}", usize::MAX));
    }

    #[test]
    fn lists_with_duplicate_or_missing_ids_compare_by_index() {
        let desired = json!([{"id": 1}, {"id": 1}]);
        let actual = json!([{"id": 1}, {"id": 2}]);
        assert_eq!(
            summary(&diff(desired, actual, json!({}))),
            [("/1/id".into(), DriftKind::Changed)]
        );
        let desired = json!([{"id": 1}, {"name": "x"}]);
        let actual = json!([{"name": "x"}, {"id": 1}]);
        assert_eq!(diff(desired, actual, json!({})).len(), 4);
    }

    #[test]
    fn ignore_is_a_token_prefix_match() {
        let desired = json!({"sources": [{"host": "a"}], "sourcesExtra": 1, "port": 1});
        let actual = json!({"sources": [{"host": "b"}], "sourcesExtra": 2, "port": 2});
        let drifts = diff(desired, actual, json!({"ignore": ["/sources", "/port"]}));
        assert_eq!(
            summary(&drifts),
            [("/sourcesExtra".into(), DriftKind::Changed)]
        );
    }

    #[test]
    fn ignore_covers_added_and_removed_values() {
        let drifts = diff(
            json!({"a": {"x": 1}}),
            json!({"b": 2}),
            json!({"ignore": ["/a", "/b"]}),
        );
        assert!(drifts.is_empty());
    }

    #[test]
    fn keys_with_slash_and_tilde_are_escaped() {
        let drifts = diff(
            json!({"a/b": {"c~d": 1}}),
            json!({"a/b": {"c~d": 2}}),
            json!({}),
        );
        assert_eq!(drifts[0].path, "/a~1b/c~0d");
        let ignored = diff(
            json!({"a/b": {"c~d": 1}}),
            json!({"a/b": {"c~d": 2}}),
            json!({"ignore": ["/a~1b"]}),
        );
        assert!(ignored.is_empty());
    }

    #[test]
    fn invalid_params_name_the_parameter() {
        for params in [
            json!({"ignore": "/a"}),
            json!({"ignore": ["a"]}),
            json!({"ignroe": []}),
            json!([]),
        ] {
            let Err(PluginError::InvalidParams(message)) =
                FieldDiff::compare(&json!({}), &json!({}), &params)
            else {
                panic!("{params} should be rejected");
            };
            assert!(
                message.contains("ignore") || message.contains("object"),
                "{message}"
            );
        }
    }

    #[test]
    fn compare_json_rejects_text_that_is_not_json() {
        assert!(matches!(
            compare_json("{", "{}", "{}"),
            Err(PluginError::InvalidInput(_))
        ));
        assert!(matches!(
            compare_json("{}", "{}", "nope"),
            Err(PluginError::InvalidParams(_))
        ));
        assert_eq!(
            compare_json(r#"{"a":1}"#, r#"{"a":2}"#, "").unwrap().len(),
            1
        );
    }
}
