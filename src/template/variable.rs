//! Manual field names and the `[[variables]]` list: the fields every template must carry.

use serde::Deserialize;
use std::fmt;

/// A manual field name as the email platform's personalization syntax accepts it
/// (`{{$Name}}`): an ASCII letter or `_`, then letters, digits or `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VariableName(String);

/// Why a string is not a [`VariableName`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a valid manual field name (letters, digits and `_`, not starting with a digit)"
)]
pub struct InvalidVariableName(pub String);

impl VariableName {
    /// Parses a manual field name.
    pub fn parse(s: &str) -> Result<Self, InvalidVariableName> {
        let mut chars = s.chars();
        let valid_start = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_');
        if valid_start && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidVariableName(s.to_owned()))
        }
    }
}

impl AsRef<str> for VariableName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VariableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for VariableName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One entry of `[[variables]]`: a manual field and the default used when a send has no value.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// The manual field's name, e.g. `UniqueOfferId`.
    pub name: VariableName,
    /// The value the template falls back to, e.g. `NONE`.
    #[serde(default)]
    pub default: String,
}

/// The two fields Pega needs (the seed's "Variables Pega"), used when no `[[variables]]` is configured.
pub fn pega_defaults() -> Vec<Variable> {
    [("UniqueOfferId", "NONE"), ("InteractionId", "0")]
        .into_iter()
        .map(|(name, default)| Variable {
            name: VariableName::parse(name).expect("built-in names are valid"),
            default: default.to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_personalization_syntax() {
        assert!(VariableName::parse("UniqueOfferId").is_ok());
        assert!(VariableName::parse("_private2").is_ok());
        for bad in ["", "2fast", "has space", "dash-ed", "quote\"", "ünïcode"] {
            assert_eq!(
                VariableName::parse(bad),
                Err(InvalidVariableName(bad.into()))
            );
        }
    }
}
