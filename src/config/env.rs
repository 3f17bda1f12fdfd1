//! `${VAR}` in any string value of the configuration reads the environment, `${VAR:-value}`
//! with a default (`$${` is a literal `${`). A figment provider wrapper, so file names and keys stay in error messages.

use figment::value::{Dict, Map, Value};
use figment::{Error, Metadata, Profile, Provider};

/// Wraps a provider and expands `${VAR}` in every string it yields.
pub struct ExpandEnv<P>(pub P);

impl<P: Provider> Provider for ExpandEnv<P> {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        Only(&self.0, None).data()
    }
}

/// Like [`ExpandEnv`], keeping only the top-level tables named (a command that needs only
/// `[store]` does not need the other sections' secrets in its environment); all when `None`.
pub struct Only<'a, P>(pub &'a P, pub Option<&'static [&'static str]>);

impl<P: Provider> Provider for Only<'_, P> {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut data = self.0.data()?;
        if let Some(keep) = self.1 {
            for dict in data.values_mut() {
                dict.retain(|key, _| keep.contains(&key.as_str()));
            }
        }
        for dict in data.values_mut() {
            for (key, value) in dict.iter_mut() {
                expand_value(value, key).map_err(Error::from)?;
            }
        }
        Ok(data)
    }
}

/// Expands strings in place; the error names the unset variable and the key.
fn expand_value(value: &mut Value, path: &str) -> Result<(), String> {
    match value {
        Value::String(_, s) => {
            *s = expand(s, |name| std::env::var(name).ok()).map_err(|var| {
                format!("environment variable `{var}` is not set (used by key `{path}`)")
            })?;
        }
        Value::Dict(_, dict) => {
            for (key, v) in dict.iter_mut() {
                expand_value(v, &format!("{path}.{key}"))?;
            }
        }
        Value::Array(_, items) => {
            for (i, v) in items.iter_mut().enumerate() {
                expand_value(v, &format!("{path}.{i}"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${NAME}` with `lookup`; returns the first unset name as the error.
pub fn expand(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !s.contains('$') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let (Some(tail), Some(end)) = (after.strip_prefix("${"), after.find('}')) {
            let inner = &tail[..end - 2];
            let value = match inner.split_once(":-") {
                Some((name, default)) => lookup(name).unwrap_or_else(|| default.to_owned()),
                None => lookup(inner).ok_or_else(|| inner.to_owned())?,
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn variables_are_read_from_the_environment() {
        assert_eq!(expand("Bearer ${TOKEN}!", env).unwrap(), "Bearer s3cret!");
    }

    #[test]
    fn a_default_after_colon_dash_is_used_when_unset() {
        assert_eq!(
            expand("${MISSING:-dev}/${TOKEN:-x}", env).unwrap(),
            "dev/s3cret"
        );
    }

    #[test]
    fn an_unset_variable_is_an_error_naming_it() {
        assert_eq!(expand("${MISSING}", env), Err("MISSING".to_owned()));
    }

    #[test]
    fn double_dollar_is_a_literal_and_lone_dollars_stay() {
        assert_eq!(
            expand("$${TOKEN} costs $5 {{$X}}", env).unwrap(),
            "${TOKEN} costs $5 {{$X}}"
        );
    }
}
