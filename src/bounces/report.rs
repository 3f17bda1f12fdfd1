//! What a message mailed to the bounce domain reports, read with mail-parser: a delivery
//! status notification (`multipart/report; report-type=delivery-status`, its
//! `message/delivery-status` or RFC 6533's `message/global-delivery-status` part, one result
//! per recipient block), a feedback report (`message/feedback-report`, RFC 5965), an
//! auto-reply, or nothing usable.

use mail_parser::{Message, MessageParser, MimeHeaders};

/// One recipient block of a delivery status notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    pub final_recipient: Option<String>,
    /// `failed`, `delayed`, `delivered`, `relayed`, `expanded` (lowercase).
    pub action: String,
    /// The enhanced status code, e.g. `5.1.1` (comments dropped).
    pub status: String,
    /// `Diagnostic-Code` without its type, whole (folded lines joined).
    pub diagnostic: Option<String>,
}

/// What a message reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Delivery {
        recipients: Vec<RecipientStatus>,
        /// The return path the notification names (Postfix's `X-Postfix-Sender`), if any.
        sender: Option<String>,
    },
    Feedback {
        /// `abuse`, `fraud`, `virus`, `not-spam`, `other`... (lowercase).
        feedback_type: String,
        original_mail_from: Option<String>,
        original_rcpt_to: Option<String>,
    },
    /// An out-of-office or other automatic answer without a report.
    AutoReply,
    /// Nothing pegabridge can use.
    Unusable(String),
}

/// The report, the message's own `Message-ID` (to recognise the same report twice) and the
/// `Message-ID` of the original message it quotes, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub report: Report,
    pub id: Option<String>,
    pub original_message_id: Option<String>,
}

impl Parsed {
    /// What kind of message it is, for metrics: `dsn`, `feedback`, `auto_reply`, `unreadable`.
    pub fn kind(&self) -> &'static str {
        match self.report {
            Report::Delivery { .. } => "dsn",
            Report::Feedback { .. } => "feedback",
            Report::AutoReply => "auto_reply",
            Report::Unusable(_) => "unreadable",
        }
    }
}

/// Reads `raw` (the whole message as received).
pub fn parse(raw: &[u8]) -> Parsed {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Parsed {
            report: Report::Unusable("not a MIME message".into()),
            id: None,
            original_message_id: None,
        };
    };
    let id = message.message_id().map(str::to_owned);
    let original_message_id = original_message_id(&message);
    let mut report = None;
    for part in &message.parts {
        let Some(ct) = part.content_type() else {
            continue;
        };
        if !ct.ctype().eq_ignore_ascii_case("message") {
            continue;
        }
        let subtype = ct.subtype().unwrap_or_default().to_ascii_lowercase();
        match subtype.as_str() {
            "delivery-status" | "global-delivery-status" => {
                report = Some(delivery(part.contents()));
                break;
            }
            "feedback-report" => {
                report = Some(feedback(part.contents()));
                break;
            }
            _ => {}
        }
    }
    let report = report
        .or_else(|| jmrp(&message))
        .or_else(|| failed_recipients(&message))
        .unwrap_or_else(|| {
            let auto = message
                .header_raw("Auto-Submitted")
                .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"));
            if auto || message.header_raw("X-Autoreply").is_some() {
                Report::AutoReply
            } else {
                Report::Unusable("no delivery status or feedback report in it".into())
            }
        });
    Parsed {
        report,
        id,
        original_message_id,
    }
}

/// Microsoft's JMRP complaint, which may carry no feedback-report part: the complained-of
/// message attached, marked `X-HmXmrOriginalRecipient`; its `Return-Path` is the sender's.
fn jmrp(message: &Message<'_>) -> Option<Report> {
    let marked = |m: &Message<'_>| m.header_raw("X-HmXmrOriginalRecipient").map(str::to_owned);
    let mut rcpt = marked(message);
    let mut mail_from = None;
    for part in &message.parts {
        if let Some(inner) = part.message() {
            rcpt = rcpt.or_else(|| marked(inner));
            mail_from = mail_from.or_else(|| inner.header_raw("Return-Path").map(str::to_owned));
        }
    }
    let rcpt = rcpt?;
    Some(Report::Feedback {
        feedback_type: "abuse".into(),
        original_mail_from: mail_from.map(|m| m.trim().to_owned()),
        original_rcpt_to: Some(rcpt.trim().to_owned()),
    })
}

/// A plain-text bounce without a DSN part (Exim's, qmail's with the header): the recipients
/// of `X-Failed-Recipients`, each with the first SMTP reply after its address in the text.
fn failed_recipients(message: &Message<'_>) -> Option<Report> {
    static REPLY: std::sync::OnceLock<(regex::Regex, regex::Regex)> = std::sync::OnceLock::new();
    let (reply, enhanced) = REPLY.get_or_init(|| {
        (
            regex::Regex::new(r"\b([45][0-9][0-9])[ -][^\n]*").expect("a valid pattern"),
            regex::Regex::new(r"\b([245]\.[0-9]{1,3}\.[0-9]{1,3})\b").expect("a valid pattern"),
        )
    });
    let header = message.header_raw("X-Failed-Recipients")?;
    let text = message
        .body_text(0)
        .map(|t| t.into_owned())
        .unwrap_or_default();
    let recipients: Vec<RecipientStatus> = header
        .split(',')
        .map(str::trim)
        .filter(|a| a.contains('@'))
        .map(|address| {
            let after = text.find(address).map_or("", |at| &text[at..]);
            let found = reply.captures(after);
            let code = found.as_ref().and_then(|c| c.get(1)).map(|m| m.as_str());
            let detail = found.as_ref().and_then(|c| enhanced.captures(&c[0]));
            let status = match (detail.and_then(|d| d.get(1)), code) {
                (Some(e), _) => e.as_str().to_owned(),
                (None, Some(c)) => format!("{}.0.0", &c[..1]),
                // "This is a permanent error": Exim's bounce without a reply from the host.
                (None, None) => "5.0.0".into(),
            };
            RecipientStatus {
                final_recipient: Some(address.to_owned()),
                action: "failed".into(),
                status,
                diagnostic: found.map(|c| c[0].trim().to_owned()),
            }
        })
        .collect();
    (!recipients.is_empty()).then_some(Report::Delivery {
        recipients,
        sender: None,
    })
}

/// The quoted original's `Message-ID` (a `message/rfc822` part or `text/rfc822-headers`).
fn original_message_id(message: &Message<'_>) -> Option<String> {
    for part in &message.parts {
        if let Some(inner) = part.message() {
            if let Some(id) = inner.message_id() {
                return Some(id.to_owned());
            }
        }
        let headers = part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
        });
        if headers {
            let mut bytes = part.contents().to_vec();
            bytes.extend_from_slice(b"\r\n\r\n");
            if let Some(inner) = MessageParser::default().parse(&bytes) {
                if let Some(id) = inner.message_id() {
                    return Some(id.to_owned());
                }
            }
        }
    }
    None
}

/// The groups of `Name: value` fields of a report part (blank lines between groups, folded
/// lines joined), names lowercase.
fn groups(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut out = Vec::new();
    let mut group: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !group.is_empty() {
                out.push(std::mem::take(&mut group));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = group.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !group.is_empty() {
        out.push(group);
    }
    out
}

fn field(group: &[(String, String)], name: &str) -> Option<String> {
    group
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// A typed value's text (`smtp; 550 ...` -> `550 ...`, `rfc822; a@b` -> `a@b`).
fn untyped(value: &str) -> String {
    match value.split_once(';') {
        Some((kind, rest)) if !kind.contains(' ') => rest.trim().to_owned(),
        _ => value.trim().to_owned(),
    }
}

fn delivery(body: &[u8]) -> Report {
    let groups = groups(body);
    let sender = groups
        .first()
        .and_then(|g| field(g, "x-postfix-sender").or_else(|| field(g, "original-envelope-id")))
        .map(|s| untyped(&s));
    let recipients: Vec<RecipientStatus> = groups
        .iter()
        .filter(|g| field(g, "action").is_some() || field(g, "status").is_some())
        .map(|g| RecipientStatus {
            final_recipient: field(g, "final-recipient")
                .or_else(|| field(g, "original-recipient"))
                .map(|r| untyped(&r)),
            action: field(g, "action").unwrap_or_default().to_ascii_lowercase(),
            status: field(g, "status")
                .and_then(|s| s.split_whitespace().next().map(str::to_owned))
                .unwrap_or_default(),
            diagnostic: field(g, "diagnostic-code").map(|d| untyped(&d)),
        })
        .collect();
    if recipients.is_empty() {
        return Report::Unusable("a delivery status without a recipient block".into());
    }
    Report::Delivery { recipients, sender }
}

fn feedback(body: &[u8]) -> Report {
    let fields: Vec<(String, String)> = groups(body).into_iter().flatten().collect();
    let Some(feedback_type) = field(&fields, "feedback-type") else {
        return Report::Unusable("a feedback report without Feedback-Type".into());
    };
    Report::Feedback {
        feedback_type: feedback_type.to_ascii_lowercase(),
        original_mail_from: field(&fields, "original-mail-from").map(|s| untyped(&s)),
        original_rcpt_to: field(&fields, "original-rcpt-to").map(|s| untyped(&s)),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, RecipientStatus, Report};

    #[test]
    fn real_reports_read_as_what_they_report() {
        let postfix = parse(include_bytes!(
            "../../tests/bounces/postfix-outlook-541.eml"
        ));
        let Report::Delivery { recipients, sender } = &postfix.report else {
            panic!("{postfix:?}");
        };
        assert_eq!(
            recipients[0],
            RecipientStatus {
                final_recipient: Some("kijitora@example.br".into()),
                action: "failed".into(),
                status: "5.4.1".into(),
                diagnostic: Some("550 5.4.1 <kijitora@example.br>: Recipient address rejected: Access denied [BL2NAM02FT061.eop-nam02.prod.protection.outlook.com]".into()),
            }
        );
        assert!(sender.as_deref().unwrap().starts_with("bounces+"));
        assert_eq!(
            postfix.id.as_deref(),
            Some("20170812215709.84FFABD9@example.net.br")
        );
        let hotmail = parse(include_bytes!(
            "../../tests/bounces/hotmail-mailbox-full.eml"
        ));
        assert!(
            matches!(&hotmail.report, Report::Delivery { recipients, .. } if recipients[0].status == "5.2.2")
        );
        assert_eq!(
            hotmail.original_message_id.as_deref(),
            Some("BLU436-SMTP6645ECA6E7FEFFE86D040BBA770@phx.gbl")
        );
        let arf = parse(include_bytes!(
            "../../tests/bounces/returnpath-fbl-abuse.eml"
        ));
        assert_eq!(
            arf.report,
            Report::Feedback {
                feedback_type: "abuse".into(),
                original_mail_from: Some("fake.sender@example.net".into()),
                original_rcpt_to: None,
            }
        );
    }

    #[test]
    fn a_jmrp_complaint_without_a_feedback_report_part() {
        // Shaped as Microsoft documents JMRP (constructed here: no licensed sample).
        let jmrp = "From: staff@hotmail.com\r\nTo: fbl@bounce.example.com\r\nSubject: complaint about message from 192.0.2.1\r\nMessage-ID: <jmrp-1@hotmail.com>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nX-HmXmrOriginalRecipient: <someone@hotmail.com>\r\nReturn-Path: <b-1-2-0123456789abcdef0123@bounce.example.com>\r\nFrom: offers@mail.example\r\nMessage-ID: <u@mail.example>\r\nSubject: Offer\r\n\r\nHello\r\n--b--\r\n";
        assert_eq!(
            parse(jmrp.as_bytes()).report,
            Report::Feedback {
                feedback_type: "abuse".into(),
                original_mail_from: Some("<b-1-2-0123456789abcdef0123@bounce.example.com>".into()),
                original_rcpt_to: Some("<someone@hotmail.com>".into()),
            }
        );
    }

    #[test]
    fn a_delay_notice_and_an_auto_reply() {
        let delayed = "From: MAILER-DAEMON@x.example\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nStill trying.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x.example\r\n\r\nFinal-Recipient: rfc822; a@y.example\r\nAction: delayed\r\nStatus: 4.4.7\r\n\r\n--b--\r\n";
        assert!(matches!(
            parse(delayed.as_bytes()).report,
            Report::Delivery { recipients, .. } if recipients[0].action == "delayed" && recipients[0].status == "4.4.7"
        ));
        let ooo = "From: a@y.example\r\nAuto-Submitted: auto-replied\r\nSubject: Away\r\n\r\nBack Monday.\r\n";
        assert_eq!(parse(ooo.as_bytes()).report, Report::AutoReply);
        assert!(matches!(parse(b"hello").report, Report::Unusable(_)));
    }
}
