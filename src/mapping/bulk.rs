//! A bulk trigger read from its JSON text: the array the mapping sends to (`[recipient]
//! each`) is kept as each element's text and parsed only at its turn ([`super::apply::apply_to`]),
//! and the rest of the trigger is parsed once. A trigger of 100,000 recipients is then never
//! a tree of 100,000 parsed objects at once.

use super::Mapping;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// A trigger whose recipients' array was read apart: `trigger` holds an empty array there.
#[derive(Debug)]
pub struct Split<'a> {
    pub trigger: Value,
    pub elements: Vec<&'a RawValue>,
}

/// Splits `text` for `mapping`, or `None` when it is not worth it or not safe: the mapping
/// sends to no array, one of its paths reaches into the array through the trigger (it would
/// find it empty), the path crosses anything but objects, the text is not UTF-8 or not JSON,
/// or it holds an escaped NUL (the whole parse names where it is). The caller then parses
/// the whole, which also answers every error as before.
pub fn split<'a>(text: &'a [u8], mapping: &Mapping) -> Option<Split<'a>> {
    let each = mapping.file.recipient.each.as_ref()?;
    if mapping.paths().any(|p| p.starts_with(each)) {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    if text.contains("\\u0000") {
        return None;
    }
    let mut elements = None;
    let trigger = level(text, each.segments(), &mut elements)?;
    Some(Split {
        trigger,
        elements: elements?,
    })
}

/// The object `text` parsed but for the array at `path`, whose elements go to `found`.
fn level<'a>(
    text: &'a str,
    path: &[String],
    found: &mut Option<Vec<&'a RawValue>>,
) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let Entries(entries) = serde_json::from_str(text).ok()?;
    // As a parsed object: a repeated key keeps its first place and its last value.
    let last = entries.iter().rposition(|(k, _)| k == first);
    let mut object = Map::new();
    for (i, (key, raw)) in entries.into_iter().enumerate() {
        let value = if Some(i) == last {
            if rest.is_empty() {
                *found = Some(serde_json::from_str::<Vec<&RawValue>>(raw.get()).ok()?);
                Value::Array(Vec::new())
            } else {
                level(raw.get(), rest, found)?
            }
        } else {
            serde_json::from_str(raw.get()).ok()?
        };
        object.insert(key, value);
    }
    Some(Value::Object(object))
}

/// An object's entries in order, each value as its text.
struct Entries<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::apply::{apply, apply_to, TriggerLimits, Warnings};
    use serde_json::json;

    /// A mapping sending to each element of `each`, reading `email` (and `more` keys).
    fn mapping(each: &str, email: &str, more: &str) -> Mapping {
        let file = format!(
            "template = \"t.html\"\nsubject = \"s\"\ncampaign_id = 1\ncampaign_name = \"c\"\ncampaign_object_id = 1\ncontent_id = 1\ncontent_name = \"c\"\nbroadcast_event_type = \"CAMPAIGNMAIL\"\nsub_type = \"CAMPAIGNMAIL\"\n[auth]\ntype = \"bearer\"\ntoken = \"t\"\n[recipient]\neach = \"{each}\"\nemail = \"{email}\"\n[variables.OfferId]\npath = \"Offer.Id\"\n[variables.Name]\npath = \"Name\"\n{more}"
        );
        let html = "<p>{{$OfferId}} {{$Name}} {{$Amount}}</p>";
        Mapping {
            name: "bulk".into(),
            file: toml::from_str(&file).unwrap(),
            patterns: std::collections::HashMap::new(),
            template_html: html.into(),
            template_fields: crate::template::fields::manual_fields(html),
            limits: TriggerLimits {
                max_recipients: 1000,
                max_options_bytes: 16384,
                max_trigger_options_bytes: 1 << 24,
                max_trigger_expansion: 16,
            },
        }
    }

    /// The same personal broadcasts whether the array is read apart or the whole is parsed.
    fn same_either_way(m: &Mapping, text: &str) {
        let whole: Value = serde_json::from_str(text).unwrap();
        let split = split(text.as_bytes(), m).expect("split");
        let expected = apply(m, &[], &whole, Warnings::Collect).unwrap();
        let got = apply_to(
            m,
            &[],
            &split.trigger,
            Some(&split.elements),
            Warnings::Collect,
        );
        assert_eq!(got.unwrap(), expected);
    }

    #[test]
    fn a_split_trigger_maps_as_the_whole_does_wherever_the_array_and_other_fields_are() {
        let m = mapping(
            "Data.Customers",
            "Email",
            "[variables.Amount]\npath = \"Amount\"\n",
        );
        // The trigger's fields after the array, nested, a big number kept digit for digit, a
        // repeated key (the last value counts, as when parsed whole), escapes in keys.
        same_either_way(
            &m,
            r#"{"Data": {"Customers": [
                   {"Email": "a@x.nl", "Name": "A\u00e9", "Amount": 123456789012345678901234567890},
                   {"Email": "b@x.nl", "Amount": 1.50}],
                 "Cust\u006fmers": [{"Email": "repeated@x.nl"}]},
               "Name": "fallback", "Offer": {"Id": "O-1", "Id": "O-2"}}"#,
        );
        assert_eq!(
            split(
                br#"{"Data": {"Customers": [{"Email": "a@x.nl"}, {"Email": "b@x.nl"}]}}"#,
                &m
            )
            .unwrap()
            .elements
            .len(),
            2
        );
    }

    #[test]
    fn an_element_that_breaks_the_rules_is_named_by_its_place_as_when_parsed_whole() {
        let m = mapping("Customers", "Email", "");
        let text = r#"{"Customers": [{"Email": "a@x.nl"}, {"Email": 7}], "Offer": {"Id": "O"}}"#;
        let whole: Value = serde_json::from_str(text).unwrap();
        let split = split(text.as_bytes(), &m).unwrap();
        let got = apply_to(
            &m,
            &[],
            &split.trigger,
            Some(&split.elements),
            Warnings::Skip,
        );
        assert_eq!(got, apply(&m, &[], &whole, Warnings::Skip));
        assert!(format!("{got:?}").contains("Customers.1"), "{got:?}");
    }

    #[test]
    fn what_cannot_be_split_safely_is_left_to_the_whole_parse() {
        let m = mapping("Customers", "Email", "");
        let none = |text: &str, m: &Mapping| split(text.as_bytes(), m).is_none();
        assert!(
            none(r#"{"Customers": {"Email": "a@x.nl"}}"#, &m),
            "not an array"
        );
        assert!(none(r#"{"Other": []}"#, &m), "no array");
        assert!(none(r#"[{"Email": "a@x.nl"}]"#, &m), "not an object");
        assert!(
            none(r#"{"Customers": [{"Email": "a@x.nl"}]"#, &m),
            "malformed"
        );
        assert!(
            none(r#"{"Customers": [{"Email": "a\u0000@x.nl"}]}"#, &m),
            "an escaped NUL: the whole parse names where it is"
        );
        assert!(none("{\"Customers\": [\"\u{0}\"]}", &m), "not JSON");
        // A path of the mapping reaching into the array through the trigger.
        let reaching = mapping(
            "Customers",
            "Email",
            "[variables.First]\npath = \"$.Customers.0.Email\"\n",
        );
        assert!(none(r#"{"Customers": [{"Email": "a@x.nl"}]}"#, &reaching));
        // No array to send to at all.
        let mut single = mapping("Customers", "Email", "");
        single.file.recipient.each = None;
        assert!(none(r#"{"Email": "a@x.nl"}"#, &single));
        // An empty array is split, and refused by the mapping as the whole would be.
        let empty = split(br#"{"Customers": []}"#, &m).unwrap();
        let whole = json!({"Customers": []});
        assert_eq!(
            apply_to(
                &m,
                &[],
                &empty.trigger,
                Some(&empty.elements),
                Warnings::Skip
            ),
            apply(&m, &[], &whole, Warnings::Skip)
        );
    }
}
