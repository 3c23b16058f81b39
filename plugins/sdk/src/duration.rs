//! Durations in strategy parameters: `"500ms"`, `"10s"`, `"2m"`, `"1h"`, a sum of those
//! (`"1m30s"`), or a JSON number of milliseconds (`1500`).
//!
//! ```
//! use std::time::Duration;
//! use setpoint_plugin::duration;
//! use setpoint_plugin::serde_json::json;
//!
//! assert_eq!(duration::parse("1m30s"), Ok(Duration::from_secs(90)));
//! assert_eq!(duration::from_param("drain", &json!(250)).unwrap(), Duration::from_millis(250));
//! let error = duration::from_param("drain", &json!("soon")).unwrap_err();
//! assert!(error.to_string().contains("`drain`"));
//! assert_eq!(duration::format(Duration::from_millis(90_500)), "1m30.5s");
//! ```
//!
//! Strategies read them with [`Rollout::duration_param_or`](crate::Rollout::duration_param_or).
//! The resolution is the millisecond, as the contract's `elapsed-ms` and `after-ms`.

use std::time::Duration;

use serde_json::Value;

use crate::PluginError;

/// The units a duration string may use, longest suffix first so `ms` is not read as `m`.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// Parse a duration string: one or more `<digits><unit>` terms, unit `ms`, `s`, `m` or
/// `h`, added up (`"1h30m"`, `"2s500ms"`). Spaces are not allowed; a bare number is
/// refused (say `"500ms"`: a JSON number of milliseconds is [`from_param`]'s business).
///
/// The error says what was wrong, without naming a parameter; [`from_param`] adds it.
pub fn parse(text: &str) -> Result<Duration, String> {
    let expected = "expected a duration like \"500ms\", \"10s\", \"2m\" or \"1h\"";
    if text.is_empty() {
        return Err(format!("{expected}, got an empty string"));
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("{expected}, got {text:?}"));
        }
        let (number, tail) = rest.split_at(digits);
        let Some((unit, scale)) = UNITS.iter().find(|(unit, _)| tail.starts_with(unit)) else {
            return Err(if tail.is_empty() {
                format!("{expected}, got {text:?} (a number needs a unit: ms, s, m or h)")
            } else {
                format!("{expected}, got {text:?} (unknown unit at {tail:?})")
            });
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{expected}, got {text:?} (number too large)"))?;
        total_ms = value
            .checked_mul(*scale)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("{expected}, got {text:?} (too long)"))?;
        rest = &tail[unit.len()..];
    }
    Ok(Duration::from_millis(total_ms))
}

/// The duration parameter `name` given as `value`: a string [`parse`] accepts, or a
/// non-negative integer of milliseconds. Anything else is
/// [`PluginError::InvalidParams`] naming the parameter and the value.
pub fn from_param(name: &str, value: &Value) -> Result<Duration, PluginError> {
    match value {
        Value::String(text) => parse(text).map_err(|why| {
            PluginError::invalid_params(format!("parameter `{name}`: {why}"))
        }),
        Value::Number(n) => n.as_u64().map(Duration::from_millis).ok_or_else(|| {
            PluginError::invalid_params(format!(
                "parameter `{name}`: a number is a count of milliseconds and must be a non-negative integer, got {n}"
            ))
        }),
        other => Err(PluginError::invalid_params(format!(
            "parameter `{name}`: expected a duration like \"500ms\", \"10s\", \"2m\", \"1h\" or a number of milliseconds, got {other}"
        ))),
    }
}

/// `duration` for people and messages: `"0s"`, `"250ms"`, `"10s"`, `"1.5s"`, `"2m"`,
/// `"1m30.5s"`, `"1h5m"`. [`parse`] reads back every output without a fraction.
pub fn format(duration: Duration) -> String {
    let total_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if total_ms == 0 {
        return "0s".to_owned();
    }
    if total_ms < 1_000 {
        return format!("{total_ms}ms");
    }
    let hours = total_ms / 3_600_000;
    let minutes = total_ms % 3_600_000 / 60_000;
    let ms = total_ms % 60_000;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if ms > 0 {
        let (secs, frac) = (ms / 1_000, ms % 1_000);
        if frac == 0 {
            out.push_str(&format!("{secs}s"));
        } else {
            let frac = format!("{frac:03}");
            out.push_str(&format!("{secs}.{}s", frac.trim_end_matches('0')));
        }
    }
    out
}

/// `duration` in whole milliseconds, saturating (for the contract's `u64` fields).
pub fn as_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_each_unit_and_sums() {
        for (text, ms) in [
            ("0s", 0),
            ("500ms", 500),
            ("10s", 10_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1h2m3s4ms", 3_723_004),
            ("90s", 90_000),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for (text, hint) in [
            ("", "empty"),
            ("10", "needs a unit"),
            ("10d", "unknown unit"),
            ("s", "got \"s\""),
            ("1.5s", "unknown unit"),
            (" 1s", "got"),
            ("1s ", "got \"1s \""),
            ("-1s", "got"),
            ("99999999999999999999s", "too large"),
            ("9999999999999999h", "too long"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(hint), "{text:?}: {error}");
        }
    }

    #[test]
    fn params_take_strings_and_milliseconds_and_errors_name_the_parameter() {
        assert_eq!(
            from_param("drain", &json!("2s")).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            from_param("drain", &json!(1500)).unwrap(),
            Duration::from_millis(1500)
        );
        for value in [json!("2 s"), json!(-1), json!(1.5), json!(true), json!([])] {
            let Err(PluginError::InvalidParams(message)) = from_param("drain", &value) else {
                panic!("{value} should be refused");
            };
            assert!(message.contains("`drain`"), "{message}");
        }
    }

    #[test]
    fn formats_for_people_and_round_trips() {
        for (ms, text) in [
            (0, "0s"),
            (250, "250ms"),
            (1_000, "1s"),
            (1_500, "1.5s"),
            (1_050, "1.05s"),
            (120_000, "2m"),
            (90_500, "1m30.5s"),
            (3_900_000, "1h5m"),
        ] {
            assert_eq!(format(Duration::from_millis(ms)), text);
        }
        for ms in [0, 250, 1_000, 61_000, 3_600_000, 3_723_000] {
            let text = format(Duration::from_millis(ms));
            assert_eq!(parse(&text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }
}
