//! The text log line: `{time} {LEVEL} {message} {name}={value} ...`.
//!
//! The layout is tracing-subscriber's default (RFC 3339 time in microseconds, the
//! level right-aligned, the message, then each field as `name=value`: text fields
//! quoted, `%` fields as their `Display`, numbers bare), written straight into the
//! line with no colour codes. The default formatter passes every field and the
//! level through its styling layer even with colours off; with one access-log line
//! per request and one line per conflict, that styling was a measurable share of
//! the server's CPU per request.

use std::fmt;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as text lines (spans are not used by the server, and are not
/// written).
pub struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(
            writer,
            "{} {} ",
            humantime::format_rfc3339_micros(SystemTime::now()),
            level_label(*event.metadata().level())
        )?;
        let mut fields = Fields {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The level, right-aligned to the width of the longest.
fn level_label(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => " WARN",
        Level::INFO => " INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Writes an event's fields in the order they were recorded.
struct Fields<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// Writes one field: the message bare, any other as `name=` and its value.
    fn write(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = (|| {
            self.writer.write_str(separator)?;
            if field.name() != "message" {
                self.writer.write_str(field.name())?;
                self.writer.write_char('=')?;
            }
            value(self.writer)
        })();
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, |w| w.write_str(value));
        } else {
            self.write(field, |w| write!(w, "{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, |w| write!(w, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, |w| write!(w, "{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, |w| write!(w, "{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::Collected;
    use super::*;

    #[test]
    fn a_line_has_the_time_the_level_the_message_and_every_field() {
        let captured = Collected::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .event_format(TextLine)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let detail = "the resource is at version 2";
            tracing::warn!(
                request_id = %"01ABC",
                status = 412u16,
                delta = -3i64,
                retried = false,
                quoted = "a \"b\"",
                detail = %detail,
                "write refused"
            );
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line = text.strip_suffix('\n').expect("one line, ended");
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "time {time:?}");
        assert_eq!(
            rest,
            " WARN write refused request_id=01ABC status=412 delta=-3 retried=false \
             quoted=\"a \\\"b\\\"\" detail=the resource is at version 2"
        );
    }
}
