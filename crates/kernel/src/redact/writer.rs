//! The `MakeWriter` that puts the redactor between the log formatter and the output.
//!
//! `tracing-subscriber`'s fmt layer formats each event into a buffer and hands it to the
//! writer in one `write_all`, so a write normally holds exactly one whole line: it is redacted
//! and passed on with no copy when nothing is found. A writer that receives a partial line
//! (another caller, a future formatter) keeps it until the newline, a flush or its drop, so
//! a value is never split across two scans.

use std::io;

use tracing::Metadata;
use tracing_subscriber::fmt::MakeWriter;

use super::{LineFormat, Redactor};

/// Wraps a `MakeWriter` so everything written through it is redacted first.
#[derive(Debug, Clone)]
pub struct RedactingMakeWriter<M> {
    inner: M,
    redactor: Redactor,
    format: LineFormat,
}

impl<M> RedactingMakeWriter<M> {
    /// `format` says how to read each line: JSON documents or free text.
    pub fn new(inner: M, redactor: Redactor, format: LineFormat) -> Self {
        Self {
            inner,
            redactor,
            format,
        }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter::new(self.inner.make_writer(), &self.redactor, self.format)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        RedactingWriter::new(
            self.inner.make_writer_for(meta),
            &self.redactor,
            self.format,
        )
    }
}

/// One event's writer: redacts whole lines, then writes them to `inner`.
pub struct RedactingWriter<'a, W: io::Write> {
    inner: W,
    redactor: &'a Redactor,
    format: LineFormat,
    /// A partial line waiting for its end (empty, and unallocated, in the usual case).
    pending: Vec<u8>,
}

impl<W: io::Write> std::fmt::Debug for RedactingWriter<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactingWriter")
            .field("format", &self.format)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<'a, W: io::Write> RedactingWriter<'a, W> {
    /// A writer over `inner` using `redactor`.
    pub fn new(inner: W, redactor: &'a Redactor, format: LineFormat) -> Self {
        Self {
            inner,
            redactor,
            format,
            pending: Vec::new(),
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        match std::str::from_utf8(bytes) {
            Ok(text) => {
                let out = self.redactor.redact_lines(text, self.format);
                self.inner.write_all(out.as_bytes())
            }
            // The formatter writes UTF-8; anything else is repaired rather than let through
            // unscanned.
            Err(_) => {
                let text = String::from_utf8_lossy(bytes);
                let out = self.redactor.redact_lines(&text, self.format);
                self.inner.write_all(out.as_bytes())
            }
        }
    }

    fn emit_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.emit(&pending)
    }
}

impl<W: io::Write> io::Write for RedactingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.redactor.is_enabled() {
            return self.inner.write(buf);
        }
        if self.pending.is_empty() && buf.last() == Some(&b'\n') {
            self.emit(buf)?;
            return Ok(buf.len());
        }
        self.pending.extend_from_slice(buf);
        if let Some(i) = self.pending.iter().rposition(|&b| b == b'\n') {
            let rest = self.pending.split_off(i + 1);
            let complete = std::mem::replace(&mut self.pending, rest);
            self.emit(&complete)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit_pending()?;
        self.inner.flush()
    }
}

impl<W: io::Write> Drop for RedactingWriter<'_, W> {
    fn drop(&mut self) {
        // Nowhere to report a failure from a drop; the formatter has already returned.
        let _ = self.emit_pending();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::redact::RedactionConfig;

    #[test]
    fn a_line_split_across_writes_is_redacted_as_a_whole() {
        let redactor = Redactor::new(&RedactionConfig::default(), None).expect("redactor");
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out, &redactor, LineFormat::Text);
            w.write_all(b"card 4111 1111 ").expect("write");
            w.write_all(b"1111 1111 done\nphone 98765").expect("write");
            w.write_all(b"43210").expect("write");
        }
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(out, "card ************1111 done\nphone ******3210");
    }
}
