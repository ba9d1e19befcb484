//! RELP sink: RFC 5424 messages over the Reliable Event Logging Protocol (rsyslog's `imrelp`),
//! over TCP or TLS. Unlike plain TCP syslog, every message is acknowledged by the receiver, and
//! only acknowledged messages count as delivered: a receiver that crashes loses nothing, the
//! unacknowledged messages are sent again on the next connection (at least once).
//!
//! The client side of the protocol (librelp's `doc/relp.md`): frames `TXNR SP COMMAND SP DATALEN
//! [SP DATA] LF`; a session starts with `open` (offers `relp_version`, `relp_software`,
//! `commands=syslog`), each message is a `syslog` command, the server answers every command with
//! `rsp` carrying the same TXNR and `200 OK` (or an error), in order; `close` ends the session;
//! the server may send the hint `0 serverclose 0` before it closes. Up to [`WINDOW`] messages are
//! sent before their acknowledgements are read.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::destination::Sink;
use crate::error::LogsError;
use crate::options::{SyslogOptions, validate_sd_id};
use crate::record::Record;
use crate::syslog::{SyslogFormat, format_message};
use crate::tls::{host_of, tls_client_config};

/// Messages sent before their acknowledgements are awaited (librelp's default window). A
/// receiver that crashes may have stored up to this many messages whose acknowledgement never
/// arrived: they are sent again (the duplicate window).
pub const WINDOW: usize = 128;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a write, or for the acknowledgements of a window.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response accepted (responses are a status line, or the offers of `open`).
const MAX_RESPONSE: usize = 64 * 1024;
/// Transaction numbers count from 1 to this, then start at 1 again.
const MAX_TXNR: u32 = 999_999_999;

/// Any byte stream the session runs over (TCP or TLS).
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync> Io for T {}

/// An open RELP session.
struct Session {
    io: BufReader<Box<dyn Io>>,
    /// The TCP socket under `io` (a duplicate descriptor), for socket options.
    socket: Option<std::os::fd::OwnedFd>,
    txnr: u32,
}

/// One frame received from the server.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    txnr: u32,
    command: String,
    data: Vec<u8>,
}

fn protocol(address: &str, what: impl std::fmt::Display) -> LogsError {
    LogsError::Protocol(format!("RELP {address}: {what}"))
}

/// Reads a number of at most 9 digits ended by a space or (when `lf_ends`) a newline; returns it
/// and the byte that ended it.
async fn read_number<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    lf_ends: bool,
) -> std::io::Result<Option<(u32, u8)>> {
    let mut n: u32 = 0;
    for i in 0..10 {
        let b = r.read_u8().await?;
        match b {
            b'0'..=b'9' if i < 9 => n = n * 10 + u32::from(b - b'0'),
            b' ' if i > 0 => return Ok(Some((n, b))),
            b'\n' if i > 0 && lf_ends => return Ok(Some((n, b))),
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Reads one frame (`TXNR SP COMMAND SP DATALEN [SP DATA] LF`); `None` when it is malformed.
async fn read_frame<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<Frame>> {
    let Some((txnr, _)) = read_number(r, false).await? else {
        return Ok(None);
    };
    let mut command = String::new();
    loop {
        let b = r.read_u8().await?;
        match b {
            b' ' if !command.is_empty() => break,
            b'a'..=b'z' | b'A'..=b'Z' if command.len() < 32 => command.push(char::from(b)),
            _ => return Ok(None),
        }
    }
    let Some((len, end)) = read_number(r, true).await? else {
        return Ok(None);
    };
    let len = len as usize;
    if len > MAX_RESPONSE {
        return Ok(None);
    }
    let mut data = vec![0; len];
    if end == b' ' {
        r.read_exact(&mut data).await?;
        if r.read_u8().await? != b'\n' {
            return Ok(None);
        }
    } else if len > 0 {
        return Ok(None);
    }
    Ok(Some(Frame {
        txnr,
        command,
        data,
    }))
}

/// Appends the frame `TXNR SP COMMAND SP DATALEN [SP DATA] LF`.
fn push_frame(out: &mut Vec<u8>, txnr: u32, command: &str, data: &[u8]) {
    use std::io::Write as _;
    let _ = write!(out, "{txnr} {command} {}", data.len());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// Whether a `rsp` data part says OK (`200`, then a space, a newline or nothing).
fn is_ok(data: &[u8]) -> bool {
    data.starts_with(b"200") && matches!(data.get(3), None | Some(b' ' | b'\n'))
}

impl Session {
    fn next_txnr(&mut self) -> u32 {
        let t = self.txnr;
        self.txnr = if t >= MAX_TXNR { 1 } else { t + 1 };
        t
    }

    /// Whether the server closed the session (end of stream, an error, or a `serverclose` hint
    /// waiting to be read), checked without waiting before new messages are sent on it.
    fn closed(&mut self) -> bool {
        match self.io.fill_buf().now_or_never() {
            None => false,
            Some(Ok(data)) => data.is_empty() || data.starts_with(b"0 "),
            Some(Err(_)) => true,
        }
    }

    async fn write(&mut self, address: &str, data: &[u8]) -> Result<(), LogsError> {
        let io = self.io.get_mut();
        let written = tokio::time::timeout(IO_TIMEOUT, async {
            io.write_all(data).await?;
            io.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LogsError::io(format!("writing to RELP {address}"), e)),
            Err(_) => Err(LogsError::Timeout(format!("writing to RELP {address}"))),
        }
    }

    /// The response to `txnr` (responses come in the order of the commands).
    async fn response(&mut self, address: &str, txnr: u32) -> Result<Vec<u8>, LogsError> {
        if self.io.buffer().is_empty()
            && let Some(socket) = &self.socket
        {
            // Acknowledge the server's segments at once: librelp writes each response as it
            // goes (Nagle on), and a delayed ACK here would hold the rest of a window's
            // responses back for 40 ms (measured: 43 ms per window of 128 without this, 1-2 ms
            // with it).
            let _ = socket2::SockRef::from(socket).set_tcp_quickack(true);
        }
        let frame = tokio::time::timeout(IO_TIMEOUT, read_frame(&mut self.io))
            .await
            .map_err(|_| LogsError::Timeout(format!("acknowledgement from RELP {address}")))?
            .map_err(|e| LogsError::io(format!("reading from RELP {address}"), e))?
            .ok_or_else(|| protocol(address, "malformed frame"))?;
        if frame.txnr == 0 && frame.command == "serverclose" {
            return Err(protocol(address, "the server closed the session"));
        }
        if frame.command != "rsp" || frame.txnr != txnr {
            return Err(protocol(
                address,
                format!(
                    "expected the response to {txnr}, got {} {}",
                    frame.txnr, frame.command
                ),
            ));
        }
        Ok(frame.data)
    }
}

/// RFC 5424 messages over RELP (TCP or TLS), each acknowledged by the receiver.
pub struct RelpSink {
    address: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    format: SyslogFormat,
    session: Option<Session>,
    /// Messages of the last batch the server acknowledged before a failure.
    confirmed: usize,
    buf: Vec<u8>,
    msg: Vec<u8>,
}

impl RelpSink {
    /// A sink for `options` (the syslog options: address, TLS, structured data; TLS files are
    /// read now).
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
        Ok(RelpSink {
            address: options.address.clone(),
            tls,
            format: SyslogFormat {
                sd_id: options.structured_data_id.clone(),
                non_utf8: options.non_utf8,
            },
            session: None,
            confirmed: 0,
            buf: Vec::new(),
            msg: Vec::new(),
        })
    }

    async fn connect(&self) -> Result<Session, LogsError> {
        let address = &self.address;
        let ctx = || format!("connecting to RELP {address}");
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| LogsError::Timeout(ctx()))?
            .map_err(|e| LogsError::io(ctx(), e))?;
        let _ = tcp.set_nodelay(true);
        let socket = std::os::fd::AsFd::as_fd(&tcp).try_clone_to_owned().ok();
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => {
                let handshake = || format!("TLS handshake with RELP {address}");
                let tls =
                    tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp))
                        .await
                        .map_err(|_| LogsError::Timeout(handshake()))?
                        .map_err(|e| LogsError::io(handshake(), e))?;
                Box::new(tls)
            }
        };
        let mut session = Session {
            io: BufReader::new(io),
            socket,
            txnr: 1,
        };
        let offers = format!(
            "relp_version=0\nrelp_software=eirinix-logs,{},{}\ncommands=syslog",
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_REPOSITORY")
        );
        let mut open = Vec::new();
        let txnr = session.next_txnr();
        push_frame(&mut open, txnr, "open", offers.as_bytes());
        session.write(address, &open).await?;
        let rsp = session.response(address, txnr).await?;
        if !is_ok(&rsp) {
            return Err(protocol(
                address,
                format!(
                    "session refused: {}",
                    String::from_utf8_lossy(&rsp[..rsp.len().min(200)])
                ),
            ));
        }
        let text = String::from_utf8_lossy(&rsp);
        let syslog = text.lines().any(|l| {
            l.strip_prefix("commands=")
                .is_some_and(|c| c.split(',').any(|c| c.trim() == "syslog"))
        });
        if !syslog {
            return Err(protocol(address, "the server does not accept syslog"));
        }
        Ok(session)
    }

    /// Send `batch` on `session`, a window at a time; `self.confirmed` counts what was
    /// acknowledged.
    async fn send_on(
        &mut self,
        session: &mut Session,
        batch: &[Arc<Record>],
    ) -> Result<(), LogsError> {
        for window in batch.chunks(WINDOW) {
            self.buf.clear();
            let mut txnrs = Vec::with_capacity(window.len());
            for r in window {
                self.msg.clear();
                format_message(r, &self.format, &mut self.msg);
                let txnr = session.next_txnr();
                push_frame(&mut self.buf, txnr, "syslog", &self.msg);
                txnrs.push(txnr);
            }
            session.write(&self.address, &self.buf).await?;
            for txnr in txnrs {
                let rsp = session.response(&self.address, txnr).await?;
                if !is_ok(&rsp) {
                    return Err(protocol(
                        &self.address,
                        format!(
                            "message refused: {}",
                            String::from_utf8_lossy(&rsp[..rsp.len().min(200)])
                        ),
                    ));
                }
                self.confirmed += 1;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for RelpSink {
    async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), LogsError> {
        self.confirmed = 0;
        if let Some(s) = self.session.as_mut()
            && s.closed()
        {
            tracing::debug!(address = %self.address, "RELP server closed the session");
            self.session = None;
        }
        let mut session = match self.session.take() {
            Some(s) => s,
            None => self.connect().await?,
        };
        let sent = self.send_on(&mut session, batch).await;
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
        if sent.is_ok() {
            self.session = Some(session);
        }
        sent
    }

    fn confirmed_before_failure(&mut self) -> usize {
        std::mem::take(&mut self.confirmed)
    }

    async fn reset(&mut self) {
        self.session = None;
    }

    async fn close(&mut self) {
        let Some(mut s) = self.session.take() else {
            return;
        };
        let mut close = Vec::new();
        let txnr = s.next_txnr();
        push_frame(&mut close, txnr, "close", b"");
        if s.write(&self.address, &close).await.is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(2), s.response(&self.address, txnr)).await;
        }
        let _ = s.io.get_mut().shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Vec<Option<Frame>> {
        let mut r = BufReader::new(bytes);
        let mut out = Vec::new();
        while !r.fill_buf().await.unwrap().is_empty() {
            match read_frame(&mut r).await {
                Ok(f) => {
                    let stop = f.is_none();
                    out.push(f);
                    if stop {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        out
    }

    #[tokio::test]
    async fn frames_are_written_and_read_as_librelp_does() {
        let mut out = Vec::new();
        push_frame(&mut out, 1, "open", b"relp_version=0\ncommands=syslog");
        push_frame(&mut out, 2, "syslog", b"<14>1 - - - - - - hi\nthere");
        push_frame(&mut out, 3, "close", b"");
        assert_eq!(
            out,
            b"1 open 30 relp_version=0\ncommands=syslog\n2 syslog 26 <14>1 - - - - - - hi\nthere\n3 close 0\n"
        );
        // What librelp 1.11 answers (captured from rsyslog's imrelp).
        let server = b"1 rsp 93 200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog\n2 rsp 6 200 OK\n3 rsp 0\n0 serverclose 0\n";
        let frames = parse(server).await;
        assert_eq!(frames.len(), 4);
        let f = frames[0].as_ref().unwrap();
        assert_eq!((f.txnr, f.command.as_str()), (1, "rsp"));
        assert!(is_ok(&f.data));
        assert!(String::from_utf8_lossy(&f.data).contains("\ncommands=syslog"));
        assert_eq!(
            frames[1],
            Some(Frame {
                txnr: 2,
                command: "rsp".into(),
                data: b"200 OK".to_vec()
            })
        );
        assert_eq!(frames[2].as_ref().unwrap().data, b"");
        assert_eq!(frames[3].as_ref().unwrap().command, "serverclose");
        assert!(is_ok(b"200"));
        assert!(!is_ok(b"500 error"));
        assert!(!is_ok(b"2000"));
    }

    #[tokio::test]
    async fn malformed_frames_are_refused() {
        for bad in [
            &b"x rsp 6 200 OK\n"[..],
            b"1 r5p 6 200 OK\n",
            b"1 rsp 6 200 OKx",
            b"1234567890 rsp 0\n",
            b"1 rsp 99999999 x\n",
            b"1 rsp 3\n",
            b" 1 rsp 0\n",
        ] {
            let frames = parse(bad).await;
            assert!(
                frames.last().is_none_or(Option::is_none),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn transaction_numbers_wrap_to_one() {
        let mut s = Session {
            io: BufReader::new(Box::new(tokio::io::duplex(8).0) as Box<dyn Io>),
            socket: None,
            txnr: MAX_TXNR - 1,
        };
        assert_eq!(s.next_txnr(), MAX_TXNR - 1);
        assert_eq!(s.next_txnr(), MAX_TXNR);
        assert_eq!(s.next_txnr(), 1);
    }
}
