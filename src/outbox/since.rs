//! `--since` (CLI) and `since` (admin API): Unix seconds, or an age before now.

use anyhow::Context;

/// Unix seconds, or an age (`90m`, `2h`, `1d`, `30s`) before `now`.
pub fn parse_since(text: &str, now: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    let unit = match text.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86_400,
        _ => {
            return text
                .parse()
                .with_context(|| format!("`{text}` is not Unix seconds nor an age like 2h"))
        }
    };
    let n: i64 = text[..text.len() - 1]
        .parse()
        .with_context(|| format!("`{text}` is not an age like 90m, 2h or 1d"))?;
    n.checked_mul(unit)
        .and_then(|age| now.checked_sub(age))
        .filter(|at| n >= 0 && *at >= 0)
        .with_context(|| format!("`{text}` is not a usable age"))
}

#[cfg(test)]
mod tests {
    use super::parse_since;

    #[test]
    fn since_takes_unix_seconds_or_an_age() {
        assert_eq!(parse_since("1700000000", 0).unwrap(), 1_700_000_000);
        assert_eq!(parse_since("2h", 10_000).unwrap(), 10_000 - 7200);
        assert_eq!(parse_since("1d", 100_000).unwrap(), 100_000 - 86_400);
        assert!(parse_since("soon", 0).is_err());
    }
}
