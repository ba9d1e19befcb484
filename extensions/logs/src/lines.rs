//! Reads a log stream line by line with a bounded line buffer: lines longer than the limit come
//! out as several pieces (split at a UTF-8 character boundary when there is one nearby), so a
//! follower never holds more than `max` bytes of a line.

use futures::io::{AsyncBufRead, AsyncBufReadExt as _};

/// What [`LineReader::next_piece`] produced; the bytes are in [`LineReader::data`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A line, or a piece of one. `first`: it starts a line; `last`: the line ends with it.
    Data {
        /// Starts a line (carries the timestamp prefix).
        first: bool,
        /// Ends the line (a newline followed).
        last: bool,
    },
    /// The stream ended inside a line: these bytes had no newline yet.
    Incomplete {
        /// Starts a line.
        first: bool,
    },
}

/// A bounded line splitter over an `AsyncBufRead`.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Bytes of `buf` handed out by the previous piece (dropped on the next call).
    emitted: usize,
    max: usize,
    /// The next piece continues a line.
    continuing: bool,
    done: bool,
}

/// Line buffers grown past this are shrunk back after the line.
const KEEP_CAPACITY: usize = 4 * 1024;

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// Split `inner` into lines of at most `max` bytes (at least 8).
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            emitted: 0,
            max: max.max(8),
            continuing: false,
            done: false,
        }
    }

    /// The bytes of the last piece (without the newline).
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.emitted]
    }

    /// The next piece, or `None` at the end of the stream. Cancel-safe: nothing is lost when the
    /// future is dropped before completion.
    pub async fn next_piece(&mut self) -> std::io::Result<Option<Piece>> {
        if self.emitted > 0 {
            self.buf.drain(..self.emitted);
            self.emitted = 0;
            if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY && !self.continuing {
                self.buf.shrink_to(256);
            }
        }
        loop {
            if self.done {
                return Ok(None);
            }
            if self.buf.len() > self.max {
                return Ok(Some(self.split()));
            }
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                self.done = true;
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.emitted = self.buf.len();
                let first = !self.continuing;
                self.continuing = false;
                return Ok(Some(Piece::Incomplete { first }));
            }
            let room = self.max - self.buf.len();
            let window = &avail[..avail.len().min(room + 1)];
            if let Some(i) = window.iter().position(|b| *b == b'\n') {
                self.buf.extend_from_slice(&avail[..i]);
                self.inner.consume_unpin(i + 1);
                self.emitted = self.buf.len();
                let first = !self.continuing;
                self.continuing = false;
                return Ok(Some(Piece::Data { first, last: true }));
            }
            // One byte past the limit, so that the split can see where the next character starts.
            let take = avail.len().min(room + 1);
            self.buf.extend_from_slice(&avail[..take]);
            self.inner.consume_unpin(take);
        }
    }

    /// Emit the first `max` bytes (backed off to a character boundary) as a non-final piece.
    fn split(&mut self) -> Piece {
        let mut cut = self.max;
        // Do not cut a UTF-8 sequence: back off over up to 3 continuation bytes.
        let floor = cut.saturating_sub(3);
        let mut at = cut;
        let continuation = |b: Option<&u8>| b.is_some_and(|b| (b & 0xC0) == 0x80);
        while at > floor && continuation(self.buf.get(at)) {
            at -= 1;
        }
        if at > 0 && !continuation(self.buf.get(at)) {
            cut = at;
        }
        self.emitted = cut;
        let first = !self.continuing;
        self.continuing = true;
        Piece::Data { first, last: false }
    }

    /// Bytes currently held (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its input in fixed-size chunks.
    fn chunked(data: &[u8], chunk: usize) -> impl AsyncBufRead + Unpin {
        let chunks: Vec<std::io::Result<Vec<u8>>> =
            data.chunks(chunk).map(|c| Ok(c.to_vec())).collect();
        futures::TryStreamExt::into_async_read(futures::stream::iter(chunks))
    }

    async fn collect(data: &[u8], chunk: usize, max: usize) -> Vec<(Vec<u8>, Piece)> {
        let mut r = LineReader::new(chunked(data, chunk), max);
        let mut out = Vec::new();
        while let Some(p) = r.next_piece().await.unwrap() {
            out.push((r.data().to_vec(), p));
        }
        out
    }

    fn data(first: bool, last: bool) -> Piece {
        Piece::Data { first, last }
    }

    #[tokio::test]
    async fn lines_across_chunk_boundaries() {
        for chunk in [1, 2, 3, 7, 100] {
            let out = collect(b"ab\n\ncdef\ngh", chunk, 64).await;
            assert_eq!(
                out,
                vec![
                    (b"ab".to_vec(), data(true, true)),
                    (b"".to_vec(), data(true, true)),
                    (b"cdef".to_vec(), data(true, true)),
                    (b"gh".to_vec(), Piece::Incomplete { first: true }),
                ],
                "chunk {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn long_lines_are_split_into_pieces() {
        // Exactly max bytes: one piece. max+1: two pieces.
        let out = collect(b"12345678\n123456789\nx\n", 4, 8).await;
        assert_eq!(
            out,
            vec![
                (b"12345678".to_vec(), data(true, true)),
                (b"12345678".to_vec(), data(true, false)),
                (b"9".to_vec(), data(false, true)),
                (b"x".to_vec(), data(true, true)),
            ]
        );
        // A long line cut by the end of the stream.
        let out = collect(b"abcdefghij", 3, 8).await;
        assert_eq!(
            out,
            vec![
                (b"abcdefgh".to_vec(), data(true, false)),
                (b"ij".to_vec(), Piece::Incomplete { first: false }),
            ]
        );
    }

    #[tokio::test]
    async fn splits_do_not_cut_characters() {
        // "aaaaaaaé" is 7 + 2 bytes; with max 8 the cut backs off before 'é'.
        let line = "aaaaaaaéb\n".as_bytes();
        let out = collect(line, 100, 8).await;
        assert_eq!(out[0].0, b"aaaaaaa");
        assert_eq!(out[1].0, "éb".as_bytes());
        // Non-UTF-8 bytes are cut anywhere.
        let out = collect(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\n", 100, 8).await;
        assert_eq!(out[0].0.len(), 8);
        assert_eq!(out[1].0.len(), 1);
    }

    #[tokio::test]
    async fn memory_stays_bounded() {
        let big = vec![b'x'; 1 << 20];
        let mut r = LineReader::new(chunked(&big, 64 * 1024), 1024);
        let mut total = 0;
        while r.next_piece().await.unwrap().is_some() {
            total += r.data().len();
            assert!(r.capacity() <= 4096, "capacity {}", r.capacity());
        }
        assert_eq!(total, 1 << 20);
    }
}
