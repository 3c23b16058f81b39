//! RFC 6902 conformance of `PATCH /api/configuration/instances/{id}`, table-driven, over
//! HTTP: the RFC's Appendix A examples and the community json-patch-tests cases that
//! apply to an object document, plus their error cases. Every error must name the
//! failing operation's index and leave the configuration untouched.

mod common;

use common::TestCp;
use reqwest::StatusCode;
use serde_json::{Value, json};

enum Expect {
    /// The patch applies and gives this document.
    Doc(Value),
    /// The patch is refused, blaming the operation at this index.
    Fails(usize),
}

struct Case {
    comment: &'static str,
    doc: Value,
    patch: Value,
    expect: Expect,
}

fn ok(comment: &'static str, doc: Value, patch: Value, result: Value) -> Case {
    Case {
        comment,
        doc,
        patch,
        expect: Expect::Doc(result),
    }
}

fn fails(comment: &'static str, doc: Value, patch: Value, index: usize) -> Case {
    Case {
        comment,
        doc,
        patch,
        expect: Expect::Fails(index),
    }
}

fn cases() -> Vec<Case> {
    let escapes = json!({"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3,
                         "g|h": 4, "i\\j": 5, "k\"l": 6, " ": 7, "m~n": 8});
    vec![
        // RFC 6902 Appendix A.
        ok(
            "A.1 add an object member",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz", "value": "qux"}]),
            json!({"baz": "qux", "foo": "bar"}),
        ),
        ok(
            "A.2 add an array element",
            json!({"foo": ["bar", "baz"]}),
            json!([{"op": "add", "path": "/foo/1", "value": "qux"}]),
            json!({"foo": ["bar", "qux", "baz"]}),
        ),
        ok(
            "A.3 remove an object member",
            json!({"baz": "qux", "foo": "bar"}),
            json!([{"op": "remove", "path": "/baz"}]),
            json!({"foo": "bar"}),
        ),
        ok(
            "A.4 remove an array element",
            json!({"foo": ["bar", "qux", "baz"]}),
            json!([{"op": "remove", "path": "/foo/1"}]),
            json!({"foo": ["bar", "baz"]}),
        ),
        ok(
            "A.5 replace a value",
            json!({"baz": "qux", "foo": "bar"}),
            json!([{"op": "replace", "path": "/baz", "value": "boo"}]),
            json!({"baz": "boo", "foo": "bar"}),
        ),
        ok(
            "A.6 move a value",
            json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
            json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]),
            json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
        ),
        ok(
            "A.7 move an array element",
            json!({"foo": ["all", "grass", "cows", "eat"]}),
            json!([{"op": "move", "from": "/foo/1", "path": "/foo/3"}]),
            json!({"foo": ["all", "cows", "eat", "grass"]}),
        ),
        ok(
            "A.8 test a value: success",
            json!({"baz": "qux", "foo": ["a", 2, "c"]}),
            json!([{"op": "test", "path": "/baz", "value": "qux"},
                  {"op": "test", "path": "/foo/1", "value": 2}]),
            json!({"baz": "qux", "foo": ["a", 2, "c"]}),
        ),
        fails(
            "A.9 test a value: error",
            json!({"baz": "qux"}),
            json!([{"op": "test", "path": "/baz", "value": "bar"}]),
            0,
        ),
        ok(
            "A.10 add a nested member object",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/child", "value": {"grandchild": {}}}]),
            json!({"foo": "bar", "child": {"grandchild": {}}}),
        ),
        ok(
            "A.11 ignore unrecognized elements",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}]),
            json!({"foo": "bar", "baz": "qux"}),
        ),
        fails(
            "A.12 add to a nonexistent target",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/baz/bat", "value": "qux"}]),
            0,
        ),
        ok(
            "A.14 ~ escape ordering",
            json!({"/": 9, "~1": 10}),
            json!([{"op": "test", "path": "/~01", "value": 10}]),
            json!({"/": 9, "~1": 10}),
        ),
        fails(
            "A.15 comparing strings and numbers",
            json!({"/": 9, "~1": 10}),
            json!([{"op": "test", "path": "/~01", "value": "10"}]),
            0,
        ),
        ok(
            "A.16 add an array value",
            json!({"foo": ["bar"]}),
            json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}]),
            json!({"foo": ["bar", ["abc", "def"]]}),
        ),
        // json-patch-tests: add.
        ok(
            "add replaces an existing member",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "/foo", "value": 2}]),
            json!({"foo": 2}),
        ),
        ok(
            "add a numeric-string member",
            json!({}),
            json!([{"op": "add", "path": "/foo", "value": "1"}]),
            json!({"foo": "1"}),
        ),
        ok(
            "add with the / target (empty key)",
            json!({}),
            json!([{"op": "add", "path": "/", "value": 1}]),
            json!({"": 1}),
        ),
        ok(
            "add a composite value at top level",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "/bar", "value": [1, 2]}]),
            json!({"foo": 1, "bar": [1, 2]}),
        ),
        ok(
            "add into a composite value",
            json!({"foo": 1, "baz": [{"qux": "hello"}]}),
            json!([{"op": "add", "path": "/baz/0/foo", "value": "world"}]),
            json!({"foo": 1, "baz": [{"qux": "hello", "foo": "world"}]}),
        ),
        fails(
            "add out of bounds (upper)",
            json!({"bar": [1, 2]}),
            json!([{"op": "add", "path": "/bar/8", "value": "5"}]),
            0,
        ),
        fails(
            "add out of bounds (lower)",
            json!({"bar": [1, 2]}),
            json!([{"op": "add", "path": "/bar/-1", "value": "5"}]),
            0,
        ),
        ok(
            "add true, false and null",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "/t", "value": true},
                  {"op": "add", "path": "/f", "value": false},
                  {"op": "add", "path": "/n", "value": null}]),
            json!({"foo": 1, "t": true, "f": false, "n": null}),
        ),
        ok(
            "0 can be an object member name",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "/0", "value": "bar"}]),
            json!({"foo": 1, "0": "bar"}),
        ),
        ok(
            "add at the index equal to the length appends",
            json!({"foo": ["bar", "baz"]}),
            json!([{"op": "add", "path": "/foo/2", "value": "qux"}]),
            json!({"foo": ["bar", "baz", "qux"]}),
        ),
        ok(
            "add with a capitalisation the document lacks",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "/FOO", "value": "BAR"}]),
            json!({"foo": "bar", "FOO": "BAR"}),
        ),
        ok(
            "add can replace the whole document",
            json!({"foo": "bar"}),
            json!([{"op": "add", "path": "", "value": {"baz": "qux"}}]),
            json!({"baz": "qux"}),
        ),
        // remove.
        ok(
            "remove a member",
            json!({"foo": 1, "bar": [1, 2, 3, 4]}),
            json!([{"op": "remove", "path": "/bar"}]),
            json!({"foo": 1}),
        ),
        ok(
            "remove a nested member",
            json!({"foo": 1, "baz": [{"qux": "hello"}]}),
            json!([{"op": "remove", "path": "/baz/0/qux"}]),
            json!({"foo": 1, "baz": [{}]}),
        ),
        ok(
            "repeated removes",
            json!({"foo": [1, 2, 3, 4]}),
            json!([{"op": "remove", "path": "/foo/1"}, {"op": "remove", "path": "/foo/2"}]),
            json!({"foo": [1, 3]}),
        ),
        ok(
            "remove a null member",
            json!({"foo": null}),
            json!([{"op": "remove", "path": "/foo"}]),
            json!({}),
        ),
        fails(
            "remove a nonexistent member",
            json!({"foo": "bar"}),
            json!([{"op": "remove", "path": "/baz"}]),
            0,
        ),
        fails(
            "remove a deep nonexistent path",
            json!({"foo": "bar"}),
            json!([{"op": "remove", "path": "/missing1/missing2"}]),
            0,
        ),
        fails(
            "remove with a non-numeric array index",
            json!({"foo": 1, "baz": [{"qux": "hello"}]}),
            json!([{"op": "remove", "path": "/baz/1e0/qux"}]),
            0,
        ),
        fails(
            "remove with - is an error",
            json!({"foo": [1, 2, 3]}),
            json!([{"op": "remove", "path": "/foo/-"}]),
            0,
        ),
        // replace.
        ok(
            "replace with an array",
            json!({"foo": 1, "baz": [{"qux": "hello"}]}),
            json!([{"op": "replace", "path": "/foo", "value": [1, 2, 3, 4]}]),
            json!({"foo": [1, 2, 3, 4], "baz": [{"qux": "hello"}]}),
        ),
        ok(
            "replace a nested value",
            json!({"foo": [1, 2, 3, 4], "baz": [{"qux": "hello"}]}),
            json!([{"op": "replace", "path": "/baz/0/qux", "value": "world"}]),
            json!({"foo": [1, 2, 3, 4], "baz": [{"qux": "world"}]}),
        ),
        ok(
            "replace the whole document",
            json!({"foo": "bar"}),
            json!([{"op": "replace", "path": "", "value": {"baz": "qux"}}]),
            json!({"baz": "qux"}),
        ),
        ok(
            "replace null with something",
            json!({"foo": null}),
            json!([{"op": "replace", "path": "/foo", "value": "truthy"}]),
            json!({"foo": "truthy"}),
        ),
        ok(
            "replace something with null",
            json!({"foo": "bar"}),
            json!([{"op": "replace", "path": "/foo", "value": null}]),
            json!({"foo": null}),
        ),
        fails(
            "replace under a missing parent",
            json!({"bar": "baz"}),
            json!([{"op": "replace", "path": "/foo/bar", "value": false}]),
            0,
        ),
        fails(
            "replace a missing member",
            json!({"bar": "baz"}),
            json!([{"op": "replace", "path": "/foo", "value": 1}]),
            0,
        ),
        // move.
        ok(
            "move to the same location has no effect",
            json!({"foo": 1}),
            json!([{"op": "move", "from": "/foo", "path": "/foo"}]),
            json!({"foo": 1}),
        ),
        ok(
            "move a member",
            json!({"foo": 1, "baz": [{"qux": "hello"}]}),
            json!([{"op": "move", "from": "/foo", "path": "/bar"}]),
            json!({"baz": [{"qux": "hello"}], "bar": 1}),
        ),
        ok(
            "move into an array",
            json!({"baz": [{"qux": "hello"}], "bar": 1}),
            json!([{"op": "move", "from": "/baz/0/qux", "path": "/baz/1"}]),
            json!({"baz": [{}, "hello"], "bar": 1}),
        ),
        ok(
            "move a null member",
            json!({"foo": null}),
            json!([{"op": "move", "from": "/foo", "path": "/bar"}]),
            json!({"bar": null}),
        ),
        fails(
            "move from a missing location",
            json!({"foo": 1}),
            json!([{"op": "move", "from": "/nope", "path": "/bar"}]),
            0,
        ),
        fails(
            "move into its own child",
            json!({"foo": {"bar": 1}}),
            json!([{"op": "move", "from": "/foo", "path": "/foo/bar/baz"}]),
            0,
        ),
        // copy.
        ok(
            "copy a member",
            json!({"baz": [{"qux": "hello"}], "bar": 1}),
            json!([{"op": "copy", "from": "/baz/0", "path": "/boo"}]),
            json!({"baz": [{"qux": "hello"}], "bar": 1, "boo": {"qux": "hello"}}),
        ),
        ok(
            "copy a null member",
            json!({"foo": null}),
            json!([{"op": "copy", "from": "/foo", "path": "/bar"}]),
            json!({"foo": null, "bar": null}),
        ),
        fails(
            "copy from a missing location",
            json!({"foo": 1}),
            json!([{"op": "copy", "from": "/bar", "path": "/baz"}]),
            0,
        ),
        // test.
        ok(
            "test the whole document",
            json!({"foo": 1}),
            json!([{"op": "test", "path": "", "value": {"foo": 1}}]),
            json!({"foo": 1}),
        ),
        ok(
            "test the empty key",
            json!({"": 1}),
            json!([{"op": "test", "path": "/", "value": 1}]),
            json!({"": 1}),
        ),
        ok(
            "test every escape of RFC 6901",
            escapes.clone(),
            json!([{"op": "test", "path": "/foo", "value": ["bar", "baz"]},
                  {"op": "test", "path": "/foo/0", "value": "bar"},
                  {"op": "test", "path": "/", "value": 0},
                  {"op": "test", "path": "/a~1b", "value": 1},
                  {"op": "test", "path": "/c%d", "value": 2},
                  {"op": "test", "path": "/e^f", "value": 3},
                  {"op": "test", "path": "/g|h", "value": 4},
                  {"op": "test", "path": "/i\\j", "value": 5},
                  {"op": "test", "path": "/k\"l", "value": 6},
                  {"op": "test", "path": "/ ", "value": 7},
                  {"op": "test", "path": "/m~0n", "value": 8}]),
            escapes,
        ),
        ok(
            "test a member named 1e0",
            json!({"1e0": "foo"}),
            json!([{"op": "test", "path": "/1e0", "value": "foo"}]),
            json!({"1e0": "foo"}),
        ),
        ok(
            "test passes despite member order",
            json!({"foo": {"foo": 1, "bar": 2}}),
            json!([{"op": "test", "path": "/foo", "value": {"bar": 2, "foo": 1}}]),
            json!({"foo": {"foo": 1, "bar": 2}}),
        ),
        ok(
            "test a null member",
            json!({"foo": null}),
            json!([{"op": "test", "path": "/foo", "value": null}]),
            json!({"foo": null}),
        ),
        ok(
            "test with spurious properties",
            json!({"foo": 1}),
            json!([{"op": "test", "path": "/foo", "value": 1, "spurious": 1}]),
            json!({"foo": 1}),
        ),
        fails(
            "test fails on a different array",
            json!({"foo": {"bar": [1, 2, 5, 4]}}),
            json!([{"op": "test", "path": "/foo", "value": [1, 2]}]),
            0,
        ),
        fails(
            "test with an index with leading zeros",
            json!({"foo": ["bar", "baz"]}),
            json!([{"op": "test", "path": "/foo/00", "value": "bar"}]),
            0,
        ),
        fails(
            "test with index 01",
            json!({"foo": ["bar", "baz"]}),
            json!([{"op": "test", "path": "/foo/01", "value": "baz"}]),
            0,
        ),
        fails(
            "test a missing path",
            json!({"foo": 1}),
            json!([{"op": "test", "path": "/bar", "value": 1}]),
            0,
        ),
        // Atomicity and malformed documents.
        ok(
            "an empty patch changes nothing",
            json!({"foo": 1}),
            json!([]),
            json!({"foo": 1}),
        ),
        fails(
            "a later failure undoes earlier operations",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "/bar", "value": 2},
                     {"op": "replace", "path": "/foo", "value": 3},
                     {"op": "remove", "path": "/nope"}]),
            2,
        ),
        fails(
            "a failing test after a move undoes the move",
            json!({"a": {"b": 1}}),
            json!([{"op": "move", "from": "/a/b", "path": "/c"},
                     {"op": "test", "path": "/c", "value": 2}]),
            1,
        ),
        fails(
            "unrecognized op",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "/a", "value": 1},
                     {"op": "spam", "path": "/foo", "value": 1}]),
            1,
        ),
        fails(
            "missing op",
            json!({"foo": 1}),
            json!([{"path": "/foo", "value": 1}]),
            0,
        ),
        fails(
            "missing value for add",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "/bar"}]),
            0,
        ),
        fails(
            "missing value for replace",
            json!({"foo": 1}),
            json!([{"op": "replace", "path": "/foo"}]),
            0,
        ),
        fails(
            "missing value for test",
            json!({"foo": 1}),
            json!([{"op": "test", "path": "/foo"}]),
            0,
        ),
        fails(
            "missing from for copy",
            json!({"foo": 1}),
            json!([{"op": "copy", "path": "/bar"}]),
            0,
        ),
        fails(
            "missing from for move",
            json!({"foo": 1}),
            json!([{"op": "move", "path": "/bar"}]),
            0,
        ),
        fails(
            "a path without a leading slash",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "foo", "value": 2}]),
            0,
        ),
        fails(
            "an invalid ~ escape",
            json!({"foo": 1}),
            json!([{"op": "add", "path": "/~2", "value": 2}]),
            0,
        ),
    ]
}

#[tokio::test]
async fn patch_conforms_to_rfc_6902_and_the_json_patch_test_suite() {
    let cp = TestCp::start().await;
    let id = cp
        .create(json!({"name": "patched", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let config_path = format!("/api/configuration/instances/{id}");
    let mut failures = Vec::new();
    for case in cases() {
        let (status, _) = cp.put(&config_path, &case.doc).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: setting the document",
            case.comment
        );
        let before = cp.changes_after(0).await["latestSequence"]
            .as_u64()
            .unwrap();
        let (status, body) = cp.patch(&config_path, &case.patch).await;
        let stored = cp.configuration(&id).await;
        let after = cp.changes_after(0).await["latestSequence"]
            .as_u64()
            .unwrap();
        match case.expect {
            Expect::Doc(expected) => {
                if status != StatusCode::OK || body != expected || stored != expected {
                    failures.push(format!(
                        "{}: expected 200 {expected}, got {status} {body} (stored {stored})",
                        case.comment
                    ));
                }
                if after != before + 1 {
                    failures.push(format!(
                        "{}: no ConfigurationChanged published",
                        case.comment
                    ));
                }
            }
            Expect::Fails(index) => {
                let named = body["operation"].as_u64() == Some(index as u64)
                    && body["error"]
                        .as_str()
                        .is_some_and(|e| e.contains(&format!("operation {index}")));
                if !status.is_client_error() || !named {
                    failures.push(format!(
                        "{}: expected a 4xx naming operation {index}, got {status} {body}",
                        case.comment
                    ));
                }
                if stored != case.doc {
                    failures.push(format!(
                        "{}: the configuration changed to {stored} despite the failure",
                        case.comment
                    ));
                }
                if after != before {
                    failures.push(format!("{}: a failed patch was published", case.comment));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn malformed_documents_are_400_and_inapplicable_ones_422() {
    let cp = TestCp::start().await;
    let id = cp
        .create(json!({"name": "p", "platformType": "Simulated"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/configuration/instances/{id}");
    let (status, body) = cp.patch(&path, &json!({"op": "add"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("array"));
    let (status, _) = cp.raw(reqwest::Method::PATCH, &path, "[{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = cp
        .patch(
            &path,
            &json!([{"op": "test", "path": "/logLevel", "value": "debug"}]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["op"], "test");
    assert_eq!(body["path"], "/logLevel");
    // A patch whose result is not a valid configuration is refused, naming the field.
    let (status, body) = cp
        .patch(
            &path,
            &json!([{"op": "replace", "path": "/port", "value": "eighty"}]),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`port`"), "{body}");
    // The seed's `query` is accepted and stored as `queryText`.
    let (status, body) = cp
        .patch(
            &path,
            &json!([{"op": "add", "path": "/queries/-", "value": {"id": "q", "query": "MATCH (n)"}}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["queries"][0]["queryText"], "MATCH (n)");
    cp.shutdown().await;
}
