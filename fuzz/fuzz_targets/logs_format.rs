//! The logs extension's pure parts on arbitrary bytes: the bounded line splitter, the
//! `timestamps=true` prefix parser, the record identity taken from a pod, the RFC 5424 syslog
//! message with RFC 6587 octet-counting framing, the Loggregator envelope, checkpoint cursors
//! and the resume de-duplication.
//!
//! Asserts: no panic; the line splitter's pieces are at most `max` bytes, carry consistent
//! first/last flags and give back the input exactly; a split timestamp prefix is followed by a
//! space and the rest of the line; the frame's length prefix is the exact length of the message;
//! the message is well-formed RFC 5424 (printable header fields within their length limits,
//! SD-PARAM values that unescape to the record's fields) ending with the line's bytes unchanged
//! (or lossily decoded when so configured); cursors round-trip through their text form.

#![no_main]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use eirinix_logs::cursor::{Cursor, Dedup, split_timestamp};
use eirinix_logs::lines::{LineReader, Piece};
use eirinix_logs::syslog::{SyslogFormat, frame, procid, validate_sd_id};
use eirinix_logs::{NonUtf8, Origin, Record, Stream};
use futures::io::{AsyncBufRead, AsyncRead};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use libfuzzer_sys::fuzz_target;

/// The input, decoded from raw bytes so that seeds can be written by hand:
///
/// `MAX_LO MAX_HI FLAGS C0 C1 C2 C3` then, separated by 0x1E: pod name, namespace, container,
/// labels (`key=value` separated by 0x1F), SD-ID, checkpoint text, timestamp for lines without
/// a prefix (seconds since the epoch as decimal text) and, last, the log stream exactly as
/// `pods/log?timestamps=true` delivers it (all the remaining bytes).
#[derive(Debug)]
struct Input<'a> {
    /// Line limit of the splitter.
    max: u16,
    /// Bit 0: lossy syslog format; bits 1-2: stream kind.
    flags: u8,
    /// Sizes of the chunks the stream arrives in.
    chunks: [u8; 4],
    pod_name: String,
    namespace: String,
    container: String,
    labels: BTreeMap<String, String>,
    sd_id: String,
    cursor: String,
    fallback: String,
    stream: &'a [u8],
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let (head, rest) = data.split_at_checked(7)?;
        let mut fields = rest.splitn(8, |b| *b == 0x1E);
        let mut text = || String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
        let (pod_name, namespace, container, labels, sd_id, cursor, fallback) =
            (text(), text(), text(), text(), text(), text(), text());
        let labels = labels
            .split('\u{1F}')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(Input {
            max: u16::from_le_bytes([head[0], head[1]]),
            flags: head[2],
            chunks: [head[3], head[4], head[5], head[6]],
            pod_name,
            namespace,
            container,
            labels,
            sd_id,
            cursor,
            fallback,
            stream: fields.next().unwrap_or_default(),
        })
    }
}

/// A reader delivering `data` in chunks of the given sizes (cycled; 0 counts as 1).
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
}

impl Chunked<'_> {
    fn chunk(&self) -> usize {
        let size = self
            .sizes
            .get(self.turn % self.sizes.len().max(1))
            .copied()
            .unwrap_or(64);
        usize::from(size).max(1).min(self.data.len())
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = self.chunk().min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.turn += 1;
        Poll::Ready(Ok(n))
    }
}

impl AsyncBufRead for Chunked<'_> {
    fn poll_fill_buf(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        let n = this.chunk();
        Poll::Ready(Ok(&this.data[..n]))
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        self.data = &self.data[amt..];
        self.turn += 1;
    }
}

/// One piece of a line: starts a line, ends a line, was followed by a newline, its bytes.
struct Line {
    first: bool,
    last: bool,
    newline: bool,
    data: Vec<u8>,
}

/// Splits `stream` into pieces, checking the splitter's contract.
fn pieces(input: &Input) -> Vec<Line> {
    let max = usize::from(input.max);
    let reader = Chunked {
        data: input.stream,
        sizes: &input.chunks[..],
        turn: 0,
    };
    let mut lines = LineReader::new(reader, max);
    let limit = max.max(8);
    let mut out: Vec<Line> = Vec::new();
    futures::executor::block_on(async {
        while let Some(piece) = lines
            .next_piece()
            .await
            .expect("in-memory reads cannot fail")
        {
            let data = lines.data().to_vec();
            assert!(
                data.len() <= limit,
                "piece of {} bytes over the limit {limit}",
                data.len()
            );
            let expected_first = out.last().is_none_or(|l| l.last);
            let line = match piece {
                Piece::Data { first, last } => Line {
                    first,
                    last,
                    newline: last,
                    data,
                },
                Piece::Incomplete { first } => {
                    assert!(!data.is_empty(), "empty incomplete line");
                    Line {
                        first,
                        last: true,
                        newline: false,
                        data,
                    }
                }
            };
            assert_eq!(line.first, expected_first, "first flag inconsistent");
            assert!(
                out.last().is_none_or(|l| l.newline || !l.last),
                "piece after the incomplete end"
            );
            if !line.last {
                assert!(!line.data.is_empty(), "empty non-final piece");
            }
            out.push(line);
        }
    });
    // The pieces give the stream back exactly.
    let mut rebuilt = Vec::with_capacity(input.stream.len());
    for l in &out {
        rebuilt.extend_from_slice(&l.data);
        if l.newline {
            rebuilt.push(b'\n');
        }
    }
    assert_eq!(rebuilt, input.stream, "line splitter lost or added bytes");
    out
}

/// Parses an RFC 5424 SD-ELEMENT's params (` name="value"`... up to `]`), unescaping values.
fn params(mut s: &[u8]) -> (Vec<(String, Vec<u8>)>, &[u8]) {
    let mut out = Vec::new();
    while let Some(rest) = s.strip_prefix(b" ") {
        let eq = rest
            .iter()
            .position(|b| *b == b'=')
            .expect("param without =");
        let name = String::from_utf8(rest[..eq].to_vec()).expect("param name");
        let mut i = eq + 1;
        assert_eq!(rest.get(i), Some(&b'"'), "param value not quoted");
        i += 1;
        let mut value = Vec::new();
        loop {
            match rest.get(i) {
                Some(b'\\') => {
                    let next = *rest.get(i + 1).expect("dangling escape");
                    // RFC 5424: `\` escapes only `"`, `\` and `]`; the formatter escapes those.
                    assert!(matches!(next, b'"' | b'\\' | b']'), "bad escape");
                    value.push(next);
                    i += 2;
                }
                Some(b'"') => break,
                Some(b']') => panic!("unescaped ] in a param value"),
                Some(b) => {
                    value.push(*b);
                    i += 1;
                }
                None => panic!("unterminated param value"),
            }
        }
        out.push((name, value));
        s = &rest[i + 1..];
    }
    (out, s)
}

fn header_field<'a>(msg: &mut &'a [u8], max: usize, what: &str) -> &'a [u8] {
    let sp = msg
        .iter()
        .position(|b| *b == b' ')
        .unwrap_or_else(|| panic!("no space after {what}"));
    let field = &msg[..sp];
    assert!(
        !field.is_empty() && field.len() <= max,
        "{what} of {} bytes",
        field.len()
    );
    assert!(
        field.iter().all(|b| (33..=126).contains(b)),
        "{what} not printable ASCII: {field:?}"
    );
    *msg = &msg[sp + 1..];
    field
}

fn check_frame(record: &Record, format: &SyslogFormat) {
    let mut out = b"previous frame".to_vec();
    let start = out.len();
    frame(record, format, &mut out);
    let framed = &out[start..];
    let sp = framed
        .iter()
        .position(|b| *b == b' ')
        .expect("no length prefix");
    let len: usize = std::str::from_utf8(&framed[..sp])
        .unwrap()
        .parse()
        .expect("length prefix");
    assert!(framed[0] != b'0', "length with a leading zero");
    let mut msg = &framed[sp + 1..];
    assert_eq!(len, msg.len(), "octet count does not match the message");

    // Severity error for stderr, informational for stdout and unknown (as Cloud Foundry).
    let pri: &[u8] = match record.stream {
        Some(Stream::Stderr) => b"<11>1 ",
        _ => b"<14>1 ",
    };
    msg = msg.strip_prefix(pri).expect("PRI and VERSION");
    let ts = header_field(&mut msg, 32, "TIMESTAMP");
    let dt = jiff::tz::TimeZone::UTC.to_datetime(record.timestamp);
    if !(0..=9999).contains(&dt.year()) {
        assert_eq!(
            ts, b"-",
            "TIMESTAMP of a year outside 0000-9999 is not the NILVALUE"
        );
    } else {
        // RFC 5424 TIMESTAMP: YYYY-MM-DDTHH:MM:SS.ffffffZ, the record's time cut to microseconds.
        let text = std::str::from_utf8(ts).unwrap();
        assert_eq!(text.len(), 27, "TIMESTAMP {text}");
        let parsed: Timestamp = text.parse().expect("TIMESTAMP parses");
        let p = jiff::tz::TimeZone::UTC.to_datetime(parsed);
        assert_eq!(p.date(), dt.date(), "TIMESTAMP date is not the record's");
        assert_eq!(
            (p.hour(), p.minute(), p.second(), p.subsec_nanosecond()),
            (
                dt.hour(),
                dt.minute(),
                dt.second(),
                dt.subsec_nanosecond() / 1000 * 1000
            ),
            "TIMESTAMP time is not the record's"
        );
    }
    let o = &record.origin;
    let host = header_field(&mut msg, 255, "HOSTNAME");
    let app = header_field(&mut msg, 48, "APP-NAME");
    let proc_ = header_field(&mut msg, 128, "PROCID");
    let printable = |s: &str, max: usize| -> Vec<u8> {
        if s.is_empty() {
            return b"-".to_vec();
        }
        s.bytes()
            .take(max)
            .map(|b| if (33..=126).contains(&b) { b } else { b'_' })
            .collect()
    };
    assert_eq!(host, printable(&o.pod, 255).as_slice());
    assert_eq!(app, printable(&o.source_id, 48).as_slice());
    assert_eq!(proc_, printable(&procid(record), 128).as_slice());
    msg = msg.strip_prefix(b"- [").expect("MSGID and SD start");
    msg = msg.strip_prefix(format.sd_id.as_bytes()).expect("SD-ID");
    let (params, rest) = params(msg);
    let got: BTreeMap<String, Vec<u8>> = params.into_iter().collect();
    let stream = match record.stream {
        Some(Stream::Stdout) => "stdout",
        Some(Stream::Stderr) => "stderr",
        None => "unknown",
    };
    let mut want: BTreeMap<String, Vec<u8>> = [
        ("app_id", o.source_id.clone()),
        ("source_type", o.source_type.clone()),
        ("process_type", o.process_type.clone()),
        ("instance_id", o.instance_id()),
        ("namespace", o.namespace.clone()),
        ("pod", o.pod.clone()),
        ("container", o.container.clone()),
        ("stream", stream.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_bytes()))
    .collect();
    if record.partial {
        want.insert("partial".into(), b"true".to_vec());
    }
    assert_eq!(got, want, "SD-PARAMs");
    let body = rest.strip_prefix(b"] ").expect("SD end");
    match format.non_utf8 {
        NonUtf8::Raw => assert_eq!(body, &record.message[..], "MSG altered"),
        NonUtf8::Lossy => assert_eq!(body, String::from_utf8_lossy(&record.message).as_bytes()),
    }
}

fn check_cursor(c: Cursor) {
    if c.n > 0 {
        assert_eq!(
            Cursor::decode(&c.encode()),
            Some(c),
            "cursor does not round-trip"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let lines = pieces(&input);
    let labels = input.labels.clone();
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(input.pod_name.clone()),
            namespace: Some(input.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    let origin = Arc::new(Origin::from_pod(&pod, &input.container));
    let format = SyslogFormat {
        sd_id: if validate_sd_id(&input.sd_id).is_ok() {
            input.sd_id.clone()
        } else {
            SyslogFormat::default().sd_id
        },
        non_utf8: if input.flags & 1 == 1 {
            NonUtf8::Lossy
        } else {
            NonUtf8::Raw
        },
    };
    let fallback = input
        .fallback
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        // Production's fallback is the current time: a cursor is only ever made from a time
        // `split_timestamp` accepted or from now.
        .filter(|t| (0..=9999).contains(&jiff::tz::TimeZone::UTC.to_datetime(*t).year()))
        .unwrap_or(Timestamp::UNIX_EPOCH);

    if let Some(c) = Cursor::decode(&input.cursor) {
        check_cursor(c);
    }
    let mut dedup = Dedup::new(Cursor::decode(&input.cursor));
    dedup.begin();
    let _ = dedup.since();

    for Line {
        first, last, data, ..
    } in lines
    {
        let (ts, message) = match first.then(|| split_timestamp(&data)).flatten() {
            Some((ts, rest)) => {
                assert!(rest.len() < data.len());
                assert_eq!(
                    data[data.len() - rest.len() - 1],
                    b' ',
                    "prefix not ended by a space"
                );
                (ts, rest.to_vec())
            }
            None => (fallback, data.clone()),
        };
        if let Some(n) = dedup.admit(ts) {
            check_cursor(Cursor { ts, n, instance: 0 });
        }
        let mut record = Record::new(origin.clone(), ts, message);
        record.partial = !last;
        record.stream = match (input.flags >> 1) % 3 {
            0 => None,
            1 => Some(Stream::Stdout),
            _ => Some(Stream::Stderr),
        };
        check_frame(&record, &format);
        let envelope = eirinix_logs::loggregator::envelope(&record);
        assert_eq!(envelope.source_id, origin.source_id);
    }
});
