//! The text log's fields, as tracing-subscriber writes them, more cheaply. Its formatter
//! writes each field through `format_args!` with styled names and each string through
//! `str`'s `Debug`: about 1,500 instructions a field, and a request's span has four, every
//! request, whatever is logged (`valgrind --tool=callgrind` of the cost bench at saturation).
//! Without ANSI colours, a field here is its name, `=`, and its value's `Debug`, a plain
//! string (printable ASCII without `"` or `\`, which `Debug` prints as it is) quoted and
//! copied. The message, errors, `log.` and `r#` names, and everything in colour go to
//! tracing-subscriber's formatter unchanged.

use std::fmt;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// The text format's fields (see the module's notes).
#[derive(Debug, Default)]
pub struct TextFields;

impl<'a> MakeVisitor<Writer<'a>> for TextFields {
    type Visitor = TextVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        TextVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes fields as tracing-subscriber's `DefaultVisitor` does (see the module's notes).
pub struct TextVisitor<'a> {
    writer: Writer<'a>,
    /// Whether no field was written yet (the next one needs no space before it).
    is_empty: bool,
    result: fmt::Result,
}

/// A string that `Debug` would print unchanged between its quotes.
fn plain(value: &str) -> bool {
    (value.bytes()).all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

impl TextVisitor<'_> {
    /// Whether this field is written here (else by tracing-subscriber's visitor).
    fn ours(&self, field: &Field) -> bool {
        let name = field.name();
        self.result.is_ok()
            && !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("r#")
    }

    /// The field's name and `=`, after a space unless it is the first.
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.is_empty) {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(field.name())?;
        self.writer.write_char('=')
    }

    /// The field written by tracing-subscriber's own visitor.
    fn theirs(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut theirs = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut theirs);
        self.result = theirs.finish();
        self.is_empty = false;
    }
}

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name().starts_with("log.") {
            return; // the `log` crate's metadata, which tracing-subscriber skips too
        }
        if self.ours(field) && plain(value) {
            self.result = self.name(field).and_then(|()| {
                self.writer.write_char('"')?;
                self.writer.write_str(value)?;
                self.writer.write_char('"')
            });
        } else {
            self.theirs(|v| v.record_str(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name().starts_with("log.") {
            return; // as in `record_str`
        }
        if self.ours(field) {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        } else {
            self.theirs(|v| v.record_debug(field, value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.theirs(|v| v.record_error(field, value));
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::TextFields;
    use std::sync::{Arc, Mutex};

    /// What `emit` logs in the text format (in colour or not), with [`TextFields`] or
    /// tracing-subscriber's own.
    fn logged(ours: bool, ansi: bool, emit: &dyn Fn()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .without_time()
            .with_writer(move || Buffer(sink.clone()));
        if ours {
            let subscriber = builder.fmt_fields(TextFields).finish();
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        let text = out.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Every kind of value reads as tracing-subscriber writes it: plain strings (quoted as
    /// they are) and every other (escaped by its formatter).
    #[test]
    fn the_text_fields_read_as_tracing_subscribers_own() {
        let emit = || {
            let span = tracing::info_span!("request", request_id = "req-42", method = %"POST",
                route = "/activities/{id}");
            let _inside = span.enter();
            tracing::warn!(
                plain = "a b-c_1~",
                quoted = "say \"hi\"",
                backslash = "C:\\x",
                control = "bell\u{7} esc\u{1b}[31m red",
                newline = "two\nlines",
                unicode = "caf\u{e9} \u{1f600}",
                empty = "",
                number = 3,
                shown = %"as Display",
                "a message with \"quotes\" and \u{1b}[0m"
            );
        };
        let ours = logged(true, false, &emit);
        assert_eq!(ours, logged(false, false, &emit));
        assert_eq!(logged(true, true, &emit), logged(false, true, &emit));
        assert!(ours.contains(r#"request_id="req-42""#), "{ours}");
        assert!(ours.contains(r#"quoted="say \"hi\"""#), "{ours}");
    }
}
