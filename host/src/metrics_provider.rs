//! Named metric queries for strategies' analysis (the `metrics.query` import): policy
//! names a query and where it runs, a plugin only names it.
//!
//! Start at [`MetricQueries`]: built from the `[metrics]` settings
//! ([`crate::config::MetricsSettings`]), it holds each query's parsed template and the
//! Prometheus client. [`MetricQueries::evaluate`] fills a template in for one instance
//! ([`Template::render`]) and runs it as an instant query
//! (`GET {url}/api/v1/query?query=…`), mapping Prometheus's answer onto the contract:
//!
//! | Prometheus answers | `query` returns |
//! |---|---|
//! | a vector of 0 series | `none` (no value yet, e.g. no scrape or no request) |
//! | a vector of 1 series, or a scalar | its value; `NaN` (e.g. `0/0`: no requests in the window) is `none`, `±Inf` is returned as is |
//! | a vector of N > 1 series | `invalid` (aggregate it to one, e.g. `sum(...)`) |
//! | a matrix or a string | `invalid` (an instant query must yield one number) |
//! | `status: error` (`bad_data`, `execution`, …) | `invalid` with Prometheus's message |
//! | `status: error` with `timeout`, `canceled`, `unavailable`; no answer within the timeout; unreachable | `unavailable` |
//!
//! Templates are checked when settings load: placeholders are `{{instance.id}}`,
//! `{{instance.name}}` and `{{instance.labels.KEY}}`, and each must sit inside a PromQL
//! string literal (`"…"` or `'…'`), where its value is escaped, so no instance name or
//! label can change the query's structure.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::runtime::scope::{CpError, InstanceInfo};

/// The contract's rule for a query name: what policy may call a query.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// What was wrong with the `[metrics]` settings; each names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A query name outside the allowed alphabet.
    #[error(
        "metrics.queries.{name}: a query name is lowercase letters, digits and `-` (not at either end), like `error-rate`; rename it"
    )]
    BadName {
        /// The name as written.
        name: String,
    },
    /// Queries are defined but no provider runs them.
    #[error(
        "metrics.queries.{name}: no metric provider is configured to run it; set metrics.prometheus.url (e.g. \"http://127.0.0.1:9090\") or remove the query"
    )]
    NoProvider {
        /// A query's name.
        name: String,
    },
    /// A template that cannot be filled in safely.
    #[error("metrics.queries.{name}: {reason}")]
    BadTemplate {
        /// The query's name.
        name: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The Prometheus URL does not parse.
    #[error(
        "metrics.prometheus.url: expected an http:// or https:// URL like \"http://127.0.0.1:9090\", got {url:?} ({reason})"
    )]
    BadUrl {
        /// The URL as given.
        url: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A zero timeout.
    #[error("metrics.prometheus.timeout: must be greater than zero")]
    ZeroTimeout,
    /// The HTTP client could not be built.
    #[error("metrics.prometheus: cannot set up the HTTP client: {0}")]
    Client(String),
}

/// Which string literal a placeholder stands in, so its value is escaped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    Double,
    Single,
}

/// What a placeholder stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Id,
    Name,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Value(Field, Quote),
}

/// A query's PromQL template, parsed when settings load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

const PLACEHOLDERS: &str = "{{instance.id}}, {{instance.name}}, {{instance.labels.KEY}}";

impl Template {
    /// Parses `source`; the error says what is wrong (the caller names the key).
    pub fn parse(source: &str) -> Result<Template, String> {
        #[derive(Clone, Copy, PartialEq)]
        enum State {
            Code,
            Comment,
            Str(char),
        }
        if source.trim().is_empty() {
            return Err("the query is empty; write a PromQL expression".to_owned());
        }
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut state = State::Code;
        let mut rest = source;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{{") {
                let Some(end) = after.find("}}") else {
                    return Err(format!(
                        "`{{{{` is not closed by `}}}}`; the placeholders are {PLACEHOLDERS}"
                    ));
                };
                let inner = after[..end].trim();
                let field = match inner {
                    "instance.id" => Field::Id,
                    "instance.name" => Field::Name,
                    _ => match inner.strip_prefix("instance.labels.") {
                        Some(key) if !key.is_empty() => Field::Label(key.to_owned()),
                        _ => {
                            return Err(format!(
                                "unknown placeholder `{{{{{inner}}}}}`; the placeholders are {PLACEHOLDERS}"
                            ));
                        }
                    },
                };
                let quote = match state {
                    State::Str('"') => Quote::Double,
                    State::Str('\'') => Quote::Single,
                    _ => {
                        return Err(format!(
                            "placeholder `{{{{{inner}}}}}` is outside a \"…\" or '…' string literal, where its value could change the query; write it inside one, like instance_id=\"{{{{instance.id}}}}\""
                        ));
                    }
                };
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Value(field, quote));
                rest = &after[end + 2..];
                continue;
            }
            text.push(c);
            rest = &rest[c.len_utf8()..];
            state = match (state, c) {
                (State::Code, '"' | '\'' | '`') => State::Str(c),
                (State::Code, '#') => State::Comment,
                (State::Comment, '\n') => State::Code,
                (State::Str(q), '\\') if q != '`' => {
                    // The escaped character is part of the literal, whatever it is.
                    if let Some(next) = rest.chars().next() {
                        text.push(next);
                        rest = &rest[next.len_utf8()..];
                    }
                    state
                }
                (State::Str(q), c) if c == q => State::Code,
                (state, _) => state,
            };
        }
        if let State::Str(q) = state {
            return Err(format!(
                "a string literal opened with {q} is not closed; close it"
            ));
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template {
            source: source.to_owned(),
            pieces,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The PromQL for `instance`, each value escaped for its string literal. Fails when
    /// the template names a label the instance does not have.
    pub fn render(&self, instance: &InstanceInfo) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(field, quote) => {
                    let value = match field {
                        Field::Id => instance.id.as_str(),
                        Field::Name => instance.name.as_str(),
                        Field::Label(key) => instance
                            .labels
                            .iter()
                            .find(|(k, _)| k == key)
                            .map(|(_, v)| v.as_str())
                            .ok_or_else(|| {
                                format!(
                                    "instance {} has no label `{key}`, which the query needs ({{{{instance.labels.{key}}}}}); label it or change the query",
                                    instance.id
                                )
                            })?,
                    };
                    escape_into(&mut out, value, *quote);
                }
            }
        }
        Ok(out)
    }
}

/// Escape `value` for the inside of a PromQL string literal (Go's escapes): the quote,
/// the backslash and control characters, so the value stays one string.
fn escape_into(out: &mut String, value: &str, quote: Quote) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' if quote == Quote::Double => out.push_str("\\\""),
            '\'' if quote == Quote::Single => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
}

/// Where queries run.
#[derive(Clone)]
struct Prometheus {
    /// `{url}/api/v1/query`.
    query_url: reqwest::Url,
    timeout: Duration,
    http: reqwest::Client,
}

impl fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prometheus")
            .field("query_url", &self.query_url.as_str())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The named queries policy defines and the provider that runs them. Empty by default:
/// every `query` call then answers `not-found`.
#[derive(Debug, Clone, Default)]
pub struct MetricQueries {
    queries: BTreeMap<String, Template>,
    prometheus: Option<Prometheus>,
}

impl MetricQueries {
    /// Checks and compiles `[metrics]`: names, templates, the URL; queries need a provider.
    pub fn new(settings: &crate::config::MetricsSettings) -> Result<MetricQueries, Error> {
        let mut queries = BTreeMap::new();
        for (name, source) in &settings.queries {
            if !valid_name(name) {
                return Err(Error::BadName { name: name.clone() });
            }
            let template = Template::parse(source).map_err(|reason| Error::BadTemplate {
                name: name.clone(),
                reason,
            })?;
            queries.insert(name.clone(), template);
        }
        let prometheus = match &settings.prometheus.url {
            None => {
                if let Some(name) = queries.keys().next() {
                    return Err(Error::NoProvider { name: name.clone() });
                }
                None
            }
            Some(url) => Some(Prometheus::new(url, settings.prometheus.timeout)?),
        };
        Ok(MetricQueries {
            queries,
            prometheus,
        })
    }

    /// Whether any query is defined (the daemon then offers the `metrics` capability).
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// The names of the defined queries, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.queries.keys().map(String::as_str)
    }

    /// The template named `name`, or `not-found` naming the ones there are.
    pub fn template(&self, name: &str) -> Result<&Template, CpError> {
        self.queries.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            CpError::NotFound(if known.is_empty() {
                format!(
                    "no metric query named `{name}`: policy defines none (add it under [metrics.queries])"
                )
            } else {
                format!(
                    "no metric query named `{name}`; policy defines: {}",
                    known.join(", ")
                )
            })
        })
    }

    /// Evaluate the query named `name` for `instance`: see the module documentation for
    /// how Prometheus's answer maps onto the result.
    pub async fn evaluate(
        &self,
        name: &str,
        instance: &InstanceInfo,
    ) -> Result<Option<f64>, CpError> {
        let template = self.template(name)?;
        let promql = template
            .render(instance)
            .map_err(|e| CpError::Invalid(format!("query `{name}`: {e}")))?;
        let Some(prometheus) = &self.prometheus else {
            // `new` refuses queries without a provider; kept for a hand-built value.
            return Err(CpError::Unavailable(format!(
                "query `{name}`: no metric provider is configured"
            )));
        };
        prometheus
            .instant(&promql)
            .await
            .map_err(|e| e.for_query(name, &promql))
    }
}

/// Why an instant query has no value, before it is named for the plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryError {
    /// Prometheus could not be asked (unreachable, timeout, a transient error).
    Unavailable(String),
    /// The query is wrong or yields other than one number.
    Invalid(String),
}

impl QueryError {
    fn for_query(self, name: &str, promql: &str) -> CpError {
        match self {
            QueryError::Unavailable(e) => CpError::Unavailable(format!("query `{name}`: {e}")),
            QueryError::Invalid(e) => CpError::Invalid(format!("query `{name}` ({promql}): {e}")),
        }
    }
}

impl Prometheus {
    fn new(url: &str, timeout: Duration) -> Result<Prometheus, Error> {
        let bad = |reason: String| Error::BadUrl {
            url: url.to_owned(),
            reason,
        };
        let base = reqwest::Url::parse(url.trim()).map_err(|e| bad(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(bad("the scheme must be http or https, with a host".into()));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(bad("a query string or fragment cannot be kept".into()));
        }
        let query_url = reqwest::Url::parse(&format!(
            "{}/api/v1/query",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|e| bad(e.to_string()))?;
        if timeout.is_zero() {
            return Err(Error::ZeroTimeout);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Client(crate::error_chain(&e)))?;
        Ok(Prometheus {
            query_url,
            timeout,
            http,
        })
    }

    /// One instant query, bounded by the timeout.
    async fn instant(&self, promql: &str) -> Result<Option<f64>, QueryError> {
        let url = self.query_url.as_str();
        let response = self
            .http
            .get(self.query_url.clone())
            .query(&[("query", promql)])
            .send()
            .await
            .map_err(|e| {
                QueryError::Unavailable(if e.is_timeout() {
                    format!(
                        "Prometheus at {url} did not answer within {:?}",
                        self.timeout
                    )
                } else {
                    format!(
                        "cannot reach Prometheus at {url}: {}",
                        crate::error_chain(&e)
                    )
                })
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            QueryError::Unavailable(format!(
                "reading Prometheus's answer from {url}: {}",
                crate::error_chain(&e)
            ))
        })?;
        match serde_json::from_str::<Value>(&text) {
            Ok(body) => answer(&body),
            Err(_) if status.is_server_error() => Err(QueryError::Unavailable(format!(
                "Prometheus at {url} answered {status}: {}",
                truncate(&text)
            ))),
            Err(_) => Err(QueryError::Invalid(format!(
                "{url} answered {status} with something other than Prometheus's JSON: {}",
                truncate(&text)
            ))),
        }
    }
}

fn truncate(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Map an `/api/v1/query` answer onto the contract (see the module documentation).
pub fn answer(body: &Value) -> Result<Option<f64>, QueryError> {
    let status = body["status"].as_str().unwrap_or("");
    if status == "error" {
        let kind = body["errorType"].as_str().unwrap_or("unknown");
        let message = body["error"].as_str().unwrap_or("(no message)");
        let text = format!("Prometheus: {kind}: {message}");
        return Err(match kind {
            "timeout" | "canceled" | "unavailable" => QueryError::Unavailable(text),
            _ => QueryError::Invalid(text),
        });
    }
    if status != "success" {
        return Err(QueryError::Invalid(format!(
            "not a Prometheus query answer (status {:?})",
            body["status"]
        )));
    }
    let data = &body["data"];
    match data["resultType"].as_str() {
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            match series {
                [] => Ok(None),
                [one] => sample_value(&one["value"]),
                many => Err(QueryError::Invalid(format!(
                    "the query yields {} series; aggregate it (e.g. sum(...)) to one",
                    many.len()
                ))),
            }
        }
        Some("scalar") => sample_value(&data["result"]),
        Some("matrix") => Err(QueryError::Invalid(
            "the query yields a range vector; an instant value is needed (wrap it in e.g. rate(...) or last_over_time(...))"
                .to_owned(),
        )),
        Some(other) => Err(QueryError::Invalid(format!(
            "the query yields a {other}; it must yield one number"
        ))),
        None => Err(QueryError::Invalid(
            "Prometheus's answer has no data.resultType".to_owned(),
        )),
    }
}

/// `[timestamp, "value"]` → the value; `NaN` is no value.
fn sample_value(sample: &Value) -> Result<Option<f64>, QueryError> {
    let text = sample[1].as_str().ok_or_else(|| {
        QueryError::Invalid(format!("a sample is not [time, \"value\"]: {sample}"))
    })?;
    let value = match text {
        "NaN" => return Ok(None),
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse::<f64>().map_err(|_| {
            QueryError::Invalid(format!("the sample value {other:?} is not a number"))
        })?,
    };
    Ok((!value.is_nan()).then_some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(name: &str, labels: &[(&str, &str)]) -> InstanceInfo {
        InstanceInfo {
            id: "i-1".into(),
            name: name.into(),
            status: crate::runtime::scope::InstanceStatus::Running,
            platform: "Process".into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn placeholders_are_filled_in_and_escaped() {
        let t = Template::parse(
            r#"sum(x{id="{{instance.id}}", name="{{ instance.name }}", team='{{instance.labels.team}}'})"#,
        )
        .unwrap();
        let i = instance(r#"a"b\c"#, &[("team", "o'k\"\n")]);
        assert_eq!(
            t.render(&i).unwrap(),
            r#"sum(x{id="i-1", name="a\"b\\c", team='o\'k"\n'})"#
        );
        let missing = t.render(&instance("n", &[])).unwrap_err();
        assert!(missing.contains("no label `team`"), "{missing}");
    }

    #[test]
    fn bad_templates_say_what_is_wrong() {
        for (source, says) in [
            ("x{id={{instance.id}}}", "outside"),
            ("x # {{instance.id}}", "outside"),
            ("x{id=`{{instance.id}}`}", "outside"),
            (
                r#"x{id="{{instance.uid}}"}"#,
                "unknown placeholder `{{instance.uid}}`",
            ),
            (r#"x{id="{{instance.labels.}}"}"#, "unknown placeholder"),
            (r#"x{id="{{instance.id"}"#, "not closed"),
            (r#"x{id="a}"#, "not closed"),
            ("  ", "empty"),
        ] {
            let error = Template::parse(source).unwrap_err();
            assert!(error.contains(says), "{source}: {error}");
        }
        // An escaped quote does not end the literal.
        Template::parse(r#"x{a="\"{{instance.id}}"}"#).unwrap();
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("error-rate") && valid_name("p99"));
        for bad in ["", "Error", "error_rate", "-x", "x-", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn answers_map_onto_the_contract() {
        let vector = |result: Value| json!({"status": "success", "data": {"resultType": "vector", "result": result}});
        let one = |v: &str| vector(json!([{"metric": {}, "value": [1.0, v]}]));
        assert_eq!(answer(&vector(json!([]))), Ok(None));
        assert_eq!(answer(&one("0.25")), Ok(Some(0.25)));
        assert_eq!(answer(&one("NaN")), Ok(None));
        assert_eq!(answer(&one("+Inf")), Ok(Some(f64::INFINITY)));
        assert_eq!(answer(&one("-Inf")), Ok(Some(f64::NEG_INFINITY)));
        let two = vector(json!([
            {"metric": {"a": "1"}, "value": [1.0, "1"]},
            {"metric": {"a": "2"}, "value": [1.0, "2"]}
        ]));
        assert!(
            matches!(answer(&two), Err(QueryError::Invalid(e)) if e.contains("yields 2 series; aggregate"))
        );
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}});
        assert_eq!(answer(&scalar), Ok(Some(3.0)));
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(matches!(answer(&matrix), Err(QueryError::Invalid(_))));
        let bad =
            json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 3"});
        assert!(
            matches!(answer(&bad), Err(QueryError::Invalid(e)) if e.contains("parse error at char 3"))
        );
        let slow = json!({"status": "error", "errorType": "timeout", "error": "query timed out"});
        assert!(matches!(answer(&slow), Err(QueryError::Unavailable(_))));
        assert!(matches!(answer(&one("x")), Err(QueryError::Invalid(_))));
    }

    fn settings(url: Option<&str>, queries: &[(&str, &str)]) -> crate::config::MetricsSettings {
        let mut s = crate::config::MetricsSettings::default();
        s.prometheus.url = url.map(str::to_owned);
        s.queries = queries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        s
    }

    #[test]
    fn settings_are_checked_at_load() {
        let q = r#"sum(x{id="{{instance.id}}"})"#;
        assert!(MetricQueries::new(&settings(None, &[])).unwrap().is_empty());
        assert_eq!(
            MetricQueries::new(&settings(None, &[("error-rate", q)])).unwrap_err(),
            Error::NoProvider {
                name: "error-rate".into()
            }
        );
        let e =
            MetricQueries::new(&settings(Some("http://p:9090"), &[("Error_Rate", q)])).unwrap_err();
        assert!(
            e.to_string().starts_with("metrics.queries.Error_Rate: "),
            "{e}"
        );
        let e = MetricQueries::new(&settings(Some("127.0.0.1:9090"), &[])).unwrap_err();
        assert!(e.to_string().starts_with("metrics.prometheus.url: "), "{e}");
        let e = MetricQueries::new(&settings(
            Some("http://p"),
            &[("x", "y{a={{instance.id}}}")],
        ))
        .unwrap_err();
        assert!(
            e.to_string().starts_with("metrics.queries.x: placeholder"),
            "{e}"
        );
        let ok = MetricQueries::new(&settings(Some("http://p:9090/prom/"), &[("x", q)])).unwrap();
        assert_eq!(
            ok.prometheus.unwrap().query_url.as_str(),
            "http://p:9090/prom/api/v1/query"
        );
    }

    /// The client against a tiny server: a request reaches it with the query, and a
    /// server that does not answer in time is `unavailable`.
    #[tokio::test]
    async fn the_client_asks_and_times_out() {
        use axum::extract::Query;
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/api/v1/query",
            get(|Query(q): Query<BTreeMap<String, String>>| async move {
                let query = q.get("query").cloned().unwrap_or_default();
                if query == "slow" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                let value = if query.contains(r#"\""#) { "2" } else { "1" };
                axum::Json(json!({"status": "success", "data": {"resultType": "vector",
                    "result": [{"metric": {}, "value": [1.0, value]}]}}))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let p = Prometheus::new(&format!("http://{addr}"), Duration::from_millis(300)).unwrap();
        assert_eq!(p.instant(r#"x{a="\""}"#).await, Ok(Some(2.0)));
        assert_eq!(p.instant("x").await, Ok(Some(1.0)));
        assert!(
            matches!(p.instant("slow").await, Err(QueryError::Unavailable(e)) if e.contains("did not answer"))
        );
        let closed = Prometheus::new("http://127.0.0.1:1", Duration::from_secs(1)).unwrap();
        assert!(matches!(
            closed.instant("x").await,
            Err(QueryError::Unavailable(_))
        ));
    }
}
