//! JSON pointers (RFC 6901), the paths of [`Drift`](crate::Drift)s.
//!
//! A pointer is `""` (the whole document) or a sequence of `/`-prefixed reference tokens
//! in which `~` is written `~0` and `/` is written `~1`.
//!
//! ```
//! use setpoint_plugin::pointer;
//!
//! let mut path = pointer::join("", "sources");
//! pointer::push(&mut path, "a/b~c");
//! assert_eq!(path, "/sources/a~1b~0c");
//! assert!(pointer::has_prefix("/sources/0/host", "/sources"));
//! assert!(!pointer::has_prefix("/sourcesX", "/sources"));
//! ```

use std::borrow::Cow;

/// Escape one reference token: `~` becomes `~0`, `/` becomes `~1`.
pub fn escape(token: &str) -> Cow<'_, str> {
    // A byte scan: both characters are ASCII, and a `char` pattern would decode UTF-8.
    if token.bytes().any(|b| b == b'~' || b == b'/') {
        Cow::Owned(token.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(token)
    }
}

/// Undo [`escape`] on one reference token.
pub fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// Append `token` (unescaped) to `path`.
pub fn push(path: &mut String, token: &str) {
    path.push('/');
    path.push_str(&escape(token));
}

/// `base` with `token` (unescaped) appended.
pub fn join(base: &str, token: &str) -> String {
    let mut path = String::with_capacity(base.len() + token.len() + 1);
    path.push_str(base);
    push(&mut path, token);
    path
}

/// The pointer made of `tokens` (unescaped).
pub fn from_tokens<I>(tokens: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut path = String::new();
    for token in tokens {
        push(&mut path, token.as_ref());
    }
    path
}

/// The unescaped reference tokens of `path`; `None` when `path` is not a pointer.
pub fn tokens(path: &str) -> Option<Vec<Cow<'_, str>>> {
    if path.is_empty() {
        return Some(Vec::new());
    }
    let rest = path.strip_prefix('/')?;
    if !is_valid(path) {
        return None;
    }
    Some(rest.split('/').map(unescape).collect())
}

/// Whether `path` is a syntactically valid JSON pointer.
pub fn is_valid(path: &str) -> bool {
    if path.is_empty() {
        return true;
    }
    if !path.starts_with('/') {
        return false;
    }
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return false;
        }
    }
    true
}

/// Whether `prefix` names `path` or one of its ancestors, token by token: `/sources` is a
/// prefix of `/sources/0/host` but not of `/sourcesX`. `""` is a prefix of everything.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_and_unescape_round_trip_tilde_and_slash() {
        assert_eq!(escape("a/b~c"), "a~1b~0c");
        assert_eq!(unescape("a~1b~0c"), "a/b~c");
        // `~01` is an escaped `~` followed by `1`, not a `/`.
        assert_eq!(unescape("~01"), "~1");
        assert_eq!(escape("~1"), "~01");
    }

    #[test]
    fn tokens_split_and_unescape() {
        assert_eq!(tokens("").unwrap(), Vec::<Cow<'_, str>>::new());
        assert_eq!(tokens("/a~1b/0").unwrap(), vec!["a/b", "0"]);
        assert_eq!(tokens("/"), Some(vec![Cow::Borrowed("")]));
        assert_eq!(tokens("a"), None);
        assert_eq!(tokens("/a~2"), None);
    }

    #[test]
    fn prefix_matches_whole_tokens_only() {
        assert!(has_prefix("/sources/0/host", "/sources"));
        assert!(has_prefix("/sources", "/sources"));
        assert!(has_prefix("/anything", ""));
        assert!(!has_prefix("/sourcesX/0", "/sources"));
        assert!(!has_prefix("/source", "/sources"));
    }

    #[test]
    fn from_tokens_escapes_each_token() {
        assert_eq!(from_tokens(["queries", "a/b"]), "/queries/a~1b");
        assert_eq!(from_tokens(Vec::<String>::new()), "");
    }
}
