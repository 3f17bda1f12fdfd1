//! Secrets (tokens, passwords): never printed by `Debug` or `Display`, compared in constant time.

use axum::http;
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// A secret string.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), presented)
    }
}

/// Compares without an early exit on the first differing byte (credentials that are not
/// secret themselves, such as a user name, are compared this way too).
pub fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    expected.ct_eq(presented).into()
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Whether `Authorization: Basic` carries this user name and password (both compared, always,
/// in constant time: no early exit on a wrong user name).
pub fn basic_matches(headers: &http::HeaderMap, username: &str, password: &Secret) -> bool {
    use base64::Engine;
    presented(headers, "Basic ")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| d.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
        .is_some_and(|(u, p)| {
            constant_time_eq(username.as_bytes(), u.as_bytes()) & password.matches(p.as_bytes())
        })
}

/// The credentials after `scheme` in the `Authorization` header.
pub fn presented<'h>(headers: &'h http::HeaderMap, scheme: &str) -> Option<&'h str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix(scheme))
}

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_output_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter3"));
        assert!(!s.matches(b"hunter"));
    }
}
