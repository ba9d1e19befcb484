//! Syslog sink: RFC 5424 messages with octet-counting framing (RFC 6587) over TCP, or over TLS
//! (RFC 5425) with rustls and the ring provider.
//!
//! Each record becomes `<14>1 TIMESTAMP HOSTNAME APP-NAME PROCID - [SD] MSG` with
//! HOSTNAME = pod name (the instance), APP-NAME = app guid, PROCID = `[APP/PROC/WEB/3]`
//! (source type and instance index, as Cloud Foundry's syslog drains write it), and one
//! structured-data element with every other field. MSG is the line's bytes, unchanged and
//! without a BOM (`MSG-ANY`), unless [`NonUtf8::Lossy`] is configured.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::destination::Sink;
use crate::error::LogsError;
pub use crate::options::{DEFAULT_SD_ID, validate_sd_id};
use crate::options::{NonUtf8, SyslogOptions};
use crate::record::Record;
use crate::tls::{host_of, tls_client_config};

/// PRI of stdout lines, and of lines whose stream is unknown (read merged): facility user (1),
/// severity informational (6), as Cloud Foundry's syslog drains write `OUT` lines.
pub const PRI: u8 = 14;

/// PRI of stderr lines: facility user (1), severity error (3), as Cloud Foundry's syslog drains
/// write `ERR` lines.
pub const PRI_STDERR: u8 = 11;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// How records are rendered as RFC 5424 messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogFormat {
    /// SD-ID of the element carrying the record fields.
    pub sd_id: String,
    /// Treatment of non-UTF-8 message bytes.
    pub non_utf8: NonUtf8,
}

impl Default for SyslogFormat {
    fn default() -> Self {
        SyslogFormat {
            sd_id: DEFAULT_SD_ID.into(),
            non_utf8: NonUtf8::Raw,
        }
    }
}

/// Appends `value` as an RFC 5424 header field: printable US-ASCII only (others become `_`),
/// at most `max` characters, `-` (the nil value) when empty.
fn push_header_field(out: &mut Vec<u8>, value: &str, max: usize) {
    if value.is_empty() {
        out.push(b'-');
        return;
    }
    out.extend(
        value
            .bytes()
            .take(max)
            .map(|b| if (33..=126).contains(&b) { b } else { b'_' }),
    );
}

/// Appends an SD-PARAM (` name="value"`), escaping `"`, `\` and `]` as RFC 5424 requires.
fn push_param(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    for b in value.bytes() {
        if matches!(b, b'"' | b'\\' | b']') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

fn push_timestamp(out: &mut Vec<u8>, ts: jiff::Timestamp) {
    use std::io::Write as _;
    let dt = jiff::tz::TimeZone::UTC.to_datetime(ts);
    if !(0..=9999).contains(&dt.year()) {
        // Not expressible as an RFC 5424 TIMESTAMP: the NILVALUE says "unknown".
        out.push(b'-');
        return;
    }
    // RFC 5424 allows at most 6 fractional digits.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 1000
    );
}

/// The PROCID of a record: `[SOURCE_TYPE/INDEX]`, or `[SOURCE_TYPE]` without an index.
pub fn procid(record: &Record) -> String {
    match record.origin.instance {
        Some(i) => format!("[{}/{}]", record.origin.source_type, i),
        None => format!("[{}]", record.origin.source_type),
    }
}

/// Appends the RFC 5424 message for `record` (no framing).
pub fn format_message(record: &Record, format: &SyslogFormat, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let o = &record.origin;
    let pri = match record.stream {
        Some(crate::record::Stream::Stderr) => PRI_STDERR,
        _ => PRI,
    };
    let _ = write!(out, "<{pri}>1 ");
    push_timestamp(out, record.timestamp);
    out.push(b' ');
    push_header_field(out, &o.pod, 255);
    out.push(b' ');
    push_header_field(out, &o.source_id, 48);
    out.push(b' ');
    push_header_field(out, &procid(record), 128);
    out.extend_from_slice(b" - [");
    out.extend_from_slice(format.sd_id.as_bytes());
    push_param(out, "app_id", &o.source_id);
    push_param(out, "source_type", &o.source_type);
    push_param(out, "process_type", &o.process_type);
    push_param(out, "instance_id", &o.instance_id());
    push_param(out, "namespace", &o.namespace);
    push_param(out, "pod", &o.pod);
    push_param(out, "container", &o.container);
    let stream = match record.stream {
        Some(crate::record::Stream::Stdout) => "stdout",
        Some(crate::record::Stream::Stderr) => "stderr",
        None => "unknown",
    };
    push_param(out, "stream", stream);
    if record.partial {
        push_param(out, "partial", "true");
    }
    out.extend_from_slice(b"] ");
    match format.non_utf8 {
        NonUtf8::Raw => out.extend_from_slice(&record.message),
        NonUtf8::Lossy => {
            out.extend_from_slice(String::from_utf8_lossy(&record.message).as_bytes())
        }
    }
}

/// Appends the octet-counted frame (`LEN SP MSG`, RFC 6587) of `record`.
pub fn frame(record: &Record, format: &SyslogFormat, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let mut msg = Vec::with_capacity(256 + record.message.len());
    format_message(record, format, &mut msg);
    let _ = write!(out, "{} ", msg.len());
    out.extend_from_slice(&msg);
}

/// A connection to the receiver.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Tcp(t) => t,
            Conn::Tls(t) => t.get_ref().0,
        }
    }

    async fn write_all_flush(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(t) => {
                t.write_all(data).await?;
                t.flush().await
            }
            Conn::Tls(t) => {
                t.write_all(data).await?;
                t.flush().await
            }
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Tcp(t) => t.shutdown().await,
            Conn::Tls(t) => t.shutdown().await,
        };
    }

    /// Whether the receiver closed the connection. Syslog receivers never send data, so the
    /// kernel is asked directly (a non-blocking peek: end of stream or an error means closed);
    /// for TLS, bytes waiting (session tickets or a close_notify) go through the TLS layer.
    /// Checked before each write so that lines are not written into a connection the receiver
    /// already closed (TCP would accept them and they would be lost).
    async fn closed(&mut self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(self.tcp()).peek(&mut probe) {
            Ok(0) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
            Ok(_) => {}
        }
        // Data is waiting: let the runtime see the socket as readable, then read it.
        tokio::task::yield_now().await;
        let mut scratch = [0u8; 512];
        let read = match self {
            Conn::Tcp(t) => t.read(&mut scratch).now_or_never(),
            Conn::Tls(t) => t.read(&mut scratch).now_or_never(),
        };
        matches!(read, Some(Ok(0)) | Some(Err(_)))
    }
}

/// RFC 5424 over TCP or TLS with octet-counting framing.
pub struct SyslogSink {
    address: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    format: SyslogFormat,
    conn: Option<Conn>,
    buf: Vec<u8>,
}

impl SyslogSink {
    /// A sink for `options` (TLS files are read now).
    pub fn new(options: &SyslogOptions) -> Result<Self, LogsError> {
        validate_sd_id(&options.structured_data_id)?;
        let tls = match &options.tls {
            Some(tls) => {
                let config = tls_client_config(tls)?;
                let name = tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&options.address).to_owned());
                let server_name = ServerName::try_from(name.clone())
                    .map_err(|e| LogsError::Config(format!("TLS server name {name:?}: {e}")))?;
                Some((tokio_rustls::TlsConnector::from(config), server_name))
            }
            None => None,
        };
        Ok(SyslogSink {
            address: options.address.clone(),
            tls,
            format: SyslogFormat {
                sd_id: options.structured_data_id.clone(),
                non_utf8: options.non_utf8,
            },
            conn: None,
            buf: Vec::new(),
        })
    }

    async fn connect(&self) -> Result<Conn, LogsError> {
        let ctx = || format!("connecting to syslog {}", self.address);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.address))
            .await
            .map_err(|_| LogsError::Timeout(ctx()))?
            .map_err(|e| LogsError::io(ctx(), e))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Conn::Tcp(tcp)),
            Some((connector, name)) => {
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| {
                            LogsError::Timeout(format!("TLS handshake with {}", self.address))
                        })?
                        .map_err(|e| {
                            LogsError::io(format!("TLS handshake with {}", self.address), e)
                        })?;
                Ok(Conn::Tls(Box::new(tls)))
            }
        }
    }
}

#[async_trait]
impl Sink for SyslogSink {
    async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), LogsError> {
        if let Some(c) = self.conn.as_mut()
            && c.closed().await
        {
            tracing::debug!(address = %self.address, "syslog receiver closed the connection");
            self.conn = None;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => self.connect().await?,
        };
        self.buf.clear();
        for r in batch {
            frame(r, &self.format, &mut self.buf);
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, conn.write_all_flush(&self.buf)).await;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        match written {
            Ok(Ok(())) => {
                self.conn = Some(conn);
                Ok(())
            }
            Ok(Err(e)) => Err(LogsError::io(
                format!("writing to syslog {}", self.address),
                e,
            )),
            Err(_) => Err(LogsError::Timeout(format!(
                "writing to syslog {}",
                self.address
            ))),
        }
    }

    async fn reset(&mut self) {
        self.conn = None;
    }

    async fn close(&mut self) {
        if let Some(mut c) = self.conn.take() {
            c.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;

    fn record(msg: &[u8]) -> Record {
        let origin = Arc::new(Origin {
            source_id: "6f1c-guid".into(),
            instance: Some(3),
            process_type: "web".into(),
            source_type: "APP/PROC/WEB".into(),
            namespace: "eirini".into(),
            pod: "dora-3".into(),
            container: "opi".into(),
        });
        Record::new(
            origin,
            "2024-05-06T07:08:09.123456789Z".parse().unwrap(),
            msg.to_vec(),
        )
    }

    #[test]
    fn rfc5424_message_layout() {
        let mut out = Vec::new();
        format_message(&record(b"hello world"), &SyslogFormat::default(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<14>1 2024-05-06T07:08:09.123456Z dora-3 6f1c-guid [APP/PROC/WEB/3] - \
             [tags@47450 app_id=\"6f1c-guid\" source_type=\"APP/PROC/WEB\" process_type=\"web\" \
             instance_id=\"3\" namespace=\"eirini\" pod=\"dora-3\" container=\"opi\" stream=\"unknown\"] hello world"
        );
    }

    #[test]
    fn streams_set_the_severity_and_the_stream_parameter() {
        let mut r = record(b"x");
        let mut out = Vec::new();
        r.stream = Some(crate::record::Stream::Stderr);
        format_message(&r, &SyslogFormat::default(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("<11>1 "), "{s}");
        assert!(s.contains(r#" stream="stderr"]"#), "{s}");
        let mut out = Vec::new();
        r.stream = Some(crate::record::Stream::Stdout);
        format_message(&r, &SyslogFormat::default(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("<14>1 "), "{s}");
        assert!(s.contains(r#" stream="stdout"]"#), "{s}");
    }

    #[test]
    fn octet_counting_counts_bytes() {
        let r = record("héllo".as_bytes());
        let mut out = Vec::new();
        frame(&r, &SyslogFormat::default(), &mut out);
        let space = out.iter().position(|b| *b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
        assert_eq!(len, out.len() - space - 1);
        assert!(out.ends_with("héllo".as_bytes()));
    }

    #[test]
    fn sd_values_are_escaped_and_headers_sanitised() {
        let mut r = record(b"x");
        let mut o = (*r.origin).clone();
        o.container = "a\"b\\c]d".into();
        o.source_id = "has space and é".into();
        o.instance = None;
        r.origin = Arc::new(o);
        r.partial = true;
        let mut out = Vec::new();
        format_message(&r, &SyslogFormat::default(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains(r#"container="a\"b\\c\]d""#), "{s}");
        assert!(s.contains(" has_space_and___ [APP/PROC/WEB] "), "{s}");
        assert!(s.contains(r#"partial="true"]"#), "{s}");
        assert!(s.contains(r#"instance_id="""#), "{s}");
    }

    #[test]
    fn non_utf8_is_raw_or_lossy() {
        let r = record(b"caf\xe9 \xff");
        let mut raw = Vec::new();
        format_message(&r, &SyslogFormat::default(), &mut raw);
        assert!(raw.ends_with(b"] caf\xe9 \xff"));
        let mut lossy = Vec::new();
        let f = SyslogFormat {
            non_utf8: NonUtf8::Lossy,
            ..SyslogFormat::default()
        };
        format_message(&r, &f, &mut lossy);
        assert!(
            String::from_utf8(lossy)
                .unwrap()
                .ends_with("] caf\u{fffd} \u{fffd}")
        );
    }
}
