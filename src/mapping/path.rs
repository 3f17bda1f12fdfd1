//! Dotted paths into a trigger's JSON (`Offers.0.InteractionID`).

use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// Where a path starts when a mapping sends to each element of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The element first, then the trigger (no prefix).
    ElementThenRoot,
    /// The trigger root only (`$.` prefix).
    Root,
}

/// A parsed path: non-empty segments; a numeric segment indexes an array (or names an
/// object key of digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    raw: String,
    scope: Scope,
    segments: Vec<String>,
}

/// Why a path was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a valid path (dotted names and indices, e.g. `Offers.0.InteractionID`)")]
pub struct InvalidPath(pub String);

impl FieldPath {
    /// Parses `a.b.0.c`, or `$.a.b` for a path from the trigger root.
    pub fn parse(raw: &str) -> Result<Self, InvalidPath> {
        let (scope, rest) = match raw.strip_prefix("$.") {
            Some(rest) => (Scope::Root, rest),
            None => (Scope::ElementThenRoot, raw),
        };
        let segments: Vec<String> = rest.split('.').map(str::to_owned).collect();
        if rest.is_empty() || segments.iter().any(|s| s.is_empty() || s.trim() != s) {
            return Err(InvalidPath(raw.to_owned()));
        }
        Ok(Self {
            raw: raw.to_owned(),
            scope,
            segments,
        })
    }

    /// Its segments, in order.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Whether this path begins with every segment of `prefix` (whatever either's scope: an
    /// element's path falls back to the trigger).
    pub fn starts_with(&self, prefix: &FieldPath) -> bool {
        self.segments.starts_with(&prefix.segments)
    }

    /// The value at this path in `root`, if every segment exists.
    pub fn get<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        self.segments.iter().try_fold(root, |v, seg| match v {
            Value::Object(map) => map.get(seg),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// Resolves for one recipient: in the element (if any and in scope), else in the trigger.
    /// Returns the value and the full path it was found at (for error messages).
    pub fn resolve<'v>(
        &self,
        trigger: &'v Value,
        element: Option<(&'v Value, &str)>,
    ) -> (Option<&'v Value>, String) {
        if let (Some((item, prefix)), Scope::ElementThenRoot) = (element, self.scope) {
            if let Some(v) = self.get(item) {
                return (Some(v), format!("{prefix}.{}", self.segments.join(".")));
            }
        }
        (self.get(trigger), self.segments.join("."))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl AsRef<str> for FieldPath {
    fn as_ref(&self) -> &str {
        &self.raw
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_reach_objects_and_array_elements() {
        let v = json!({"Offers": [{"Id": "A"}, {"Id": "B"}], "7": {"x": 1}});
        assert_eq!(
            FieldPath::parse("Offers.1.Id").unwrap().get(&v),
            Some(&json!("B"))
        );
        assert_eq!(FieldPath::parse("7.x").unwrap().get(&v), Some(&json!(1)));
        assert_eq!(FieldPath::parse("Offers.2.Id").unwrap().get(&v), None);
        assert_eq!(FieldPath::parse("Offers.Id").unwrap().get(&v), None);
    }

    #[test]
    fn element_paths_fall_back_to_the_trigger_and_dollar_means_the_root() {
        let trigger =
            json!({"Offer": {"Id": "T"}, "Email": "root@x", "Customers": [{"Email": "a@x"}]});
        let item = &trigger["Customers"][0];
        let email = FieldPath::parse("Email").unwrap();
        assert_eq!(
            email.resolve(&trigger, Some((item, "Customers.0"))),
            (Some(&json!("a@x")), "Customers.0.Email".to_owned())
        );
        let offer = FieldPath::parse("Offer.Id").unwrap();
        assert_eq!(
            offer.resolve(&trigger, Some((item, "Customers.0"))).0,
            Some(&json!("T"))
        );
        let root = FieldPath::parse("$.Email").unwrap();
        assert_eq!(
            root.resolve(&trigger, Some((item, "Customers.0"))).0,
            Some(&json!("root@x"))
        );
    }

    #[test]
    fn empty_segments_are_refused() {
        for bad in ["", "a..b", ".a", "a.", "$.", "a. b"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad}");
        }
    }
}
