//! Postmark's webhooks: one JSON object per request, by `RecordType`; Postmark does not sign,
//! so the webhook URL carries Basic auth (`[events.postmark]`). Sender metadata is `Metadata`.

use super::{digest, to, Malformed, Translated};
use serde_json::{json, Value};

use super::unix_time as unix;

/// Unix seconds of an RFC 3339 time.
pub(super) fn time_of(text: &str) -> Option<i64> {
    // 2019-11-05T16:33:54.9070259Z or with an offset: seconds are enough.
    let (date, rest) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let hms: String = rest.chars().take(8).collect();
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let offset = rest
        .get(8..)
        .map(|r| r.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit()))
        .unwrap_or("");
    let off = match offset {
        "" | "Z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let o = o.trim_start_matches(['+', '-']);
            let (h, m) = o.split_once(':').unwrap_or((o, "0"));
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss - off)
}

/// The event of a request body.
pub fn translate(e: &Value) -> Result<Vec<Translated>, Malformed> {
    let bad = |message: &str| Malformed {
        index: 0,
        message: message.to_owned(),
    };
    let kind = e["RecordType"]
        .as_str()
        .ok_or_else(|| bad("`RecordType` is missing"))?;
    let at_field = match kind {
        "Open" => "ReceivedAt",
        "Click" => "ReceivedAt",
        "Bounce" | "SpamComplaint" => "BouncedAt",
        "SubscriptionChange" => "ChangedAt",
        _ => "DeliveredAt",
    };
    let timestamp = e[at_field].as_str().and_then(unix);
    let id = e["ID"]
        .as_i64()
        .map(|n| format!("{kind}-{n}"))
        .unwrap_or_else(|| digest(e));
    let key = e["Metadata"]["pegabridge"].as_str().map(str::to_owned);
    let ua = e["UserAgent"].clone();
    let t = json!(timestamp);
    let activity = match kind {
        "Open" => Some(to::open(t, ua, Value::Null)),
        "Click" => {
            let url = e["OriginalLink"]
                .as_str()
                .ok_or_else(|| bad("a click needs `OriginalLink`"))?;
            Some(to::click(t, url, ua))
        }
        // A reply asking to unsubscribe, as Postmark classifies it.
        "Bounce" if e["Type"].as_str() == Some("Unsubscribe") => Some(to::plain("unsubscribes", t)),
        // Postmark's classification: HardBounce (and BadEmailAddress, ManuallyDeactivated)
        // is hard; the others (SoftBounce, Transient, DnsError, ...) are soft.
        "Bounce" => Some(to::bounce(
            t,
            matches!(
                e["Type"].as_str(),
                Some("HardBounce" | "BadEmailAddress" | "ManuallyDeactivated")
            ),
            json!(e["TypeCode"]
                .as_i64()
                .map(|c| c.to_string())
                .unwrap_or_default()),
            e["Description"].clone(),
        )),
        "SpamComplaint" => Some(to::plain("complaints", t)),
        // A subscription change made by the recipient (not the suppression after a hard
        // bounce or a complaint, which is already counted).
        "SubscriptionChange"
            if e["SuppressSending"].as_bool() == Some(true)
                && e["SuppressionReason"].as_str() == Some("ManualSuppression") =>
        {
            Some(to::plain("unsubscribes", t))
        }
        _ => None,
    };
    Ok(vec![Translated { id, key, activity }])
}

#[cfg(test)]
mod tests {
    #[test]
    fn postmark_times_are_read_as_unix_seconds() {
        assert_eq!(super::unix("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            super::unix("2019-11-05T16:33:54.9070259Z"),
            Some(1_572_971_634)
        );
        assert_eq!(
            super::unix("2019-11-05T16:33:54-05:00"),
            Some(1_572_971_634 + 5 * 3600)
        );
    }
}
