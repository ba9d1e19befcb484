//! The byte level of the scanner: whitespace, strings, numbers, literals, and skipping a whole
//! value without typing it. Every step checks the JSON grammar as serde_json does.

use super::Unread;

/// Nesting deeper than this is left to serde_json (its limit is 128; a pod nests about 12 deep).
const DEPTH_LIMIT: u32 = 100;

/// Every byte of a word set to 1.
const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word.
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that ends a run of plain string bytes: a quote, a
/// backslash or a control character. Exact for the lowest flagged byte (higher flags may be
/// false, after a borrow), which is the only one read.
#[inline]
fn specials(word: u64) -> u64 {
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (zero(quote) | zero(backslash) | control) & HIGHS
}

/// The special bytes (see [`specials`]) of the 16 bytes of `block`, one bit each, lowest first.
/// SSE2 is part of every x86-64, so no runtime check is needed.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
fn block_specials(block: &[u8; 16]) -> u32 {
    // SAFETY: the only requirement is SSE2, which this build enables (the cfg above).
    unsafe { block_specials_sse2(block) }
}

/// [`block_specials`] itself: the intrinsics are safe only inside a function that enables SSE2.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
#[inline]
fn block_specials_sse2(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_xor_si128,
    };
    // SAFETY: `block` is 16 readable bytes, and the load is unaligned.
    let v = unsafe { _mm_loadu_si128(block.as_ptr().cast::<__m128i>()) };
    let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
    let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
    // Unsigned `< 0x20` as a signed compare, both sides shifted by 0x80.
    let flip = _mm_set1_epi8(i8::MIN);
    let control = _mm_cmplt_epi8(_mm_xor_si128(v, flip), _mm_set1_epi8((0x20u8 ^ 0x80) as i8));
    _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
}

/// The index of the first quote, backslash or control byte of `bytes` at or after `at`: sixteen
/// bytes a step, the tail in one block padded with spaces (strings are most of a pod's bytes).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[inline]
pub(crate) fn find_special(bytes: &[u8], mut at: usize) -> Option<usize> {
    while let Some(block) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
        let found = block_specials(block);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize);
        }
        at += 16;
    }
    // Fewer than 16 bytes left: a space is not special, so the padding finds nothing.
    let rest = bytes.get(at..)?;
    let mut block = [b' '; 16];
    block.get_mut(..rest.len())?.copy_from_slice(rest);
    let found = block_specials(&block);
    (found != 0).then(|| at + found.trailing_zeros() as usize)
}

/// Whether `bytes` hold no quote, backslash or control byte: a string written as it is. The
/// last block or word overlaps the one before it instead of being copied into a padded one
/// (the answer's and the patch's strings are short: the copy was most of their cost).
#[inline]
pub(crate) fn is_plain(bytes: &[u8]) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if let Some(last) = bytes.last_chunk::<16>() {
        let mut blocks = bytes.chunks_exact(16);
        return blocks.all(|b| {
            b.first_chunk::<16>()
                .is_some_and(|b| block_specials(b) == 0)
        }) && block_specials(last) == 0;
    }
    if let Some(last) = bytes.last_chunk::<8>() {
        let mut words = bytes.chunks_exact(8);
        let plain = |w: &[u8; 8]| specials(u64::from_le_bytes(*w)) == 0;
        return words.all(|w| w.first_chunk::<8>().is_some_and(plain)) && plain(last);
    }
    !bytes.iter().copied().any(is_special)
}

/// Whether `b` ends a run of plain string bytes: a quote, a backslash or a control byte.
#[inline]
fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// [`find_special`] without SSE2.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
#[inline]
pub(crate) fn find_special(bytes: &[u8], at: usize) -> Option<usize> {
    find_special_in_words(bytes, at)
}

/// [`find_special`] eight bytes a step, then byte by byte: the path without SSE2, built
/// everywhere so that its test runs on x86-64 too.
#[cfg_attr(
    all(target_arch = "x86_64", target_feature = "sse2", not(test)),
    allow(dead_code)
)]
#[inline]
fn find_special_in_words(bytes: &[u8], mut at: usize) -> Option<usize> {
    while let Some(word) = bytes.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let found = specials(u64::from_le_bytes(*word));
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = bytes.get(at..)?;
    let i = tail.iter().copied().position(is_special)?;
    Some(at + i)
}

/// Copy the bytes of `bytes` from `at` up to the next special byte (see [`specials`]) onto
/// `out`; that byte's index. Blocks are copied whole and the excess cut off: a fixed-size copy,
/// not a call to `memcpy` per run (`VCAP_SERVICES` escapes a quote every few bytes).
#[inline]
fn copy_run(bytes: &[u8], mut at: usize, out: &mut Vec<u8>) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    while let Some(block) = bytes.get(at..).and_then(<[u8]>::first_chunk::<16>) {
        let found = block_specials(block);
        let run = if found == 0 {
            16
        } else {
            found.trailing_zeros() as usize
        };
        out.extend_from_slice(block);
        out.truncate(out.len() - (16 - run));
        at += run;
        if found != 0 {
            return Some(at);
        }
    }
    let end = find_special(bytes, at)?;
    out.extend_from_slice(bytes.get(at..end)?);
    Some(end)
}

/// The byte a two-character escape `\<b>` stands for; `None` for `\u` and invalid escapes.
#[inline]
fn short_escape(b: u8) -> Option<u8> {
    Some(match b {
        b'"' => b'"',
        b'\\' => b'\\',
        b'/' => b'/',
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        _ => return None,
    })
}

/// Bytes the scratch buffer holds before its first escaped string is unescaped.
const SCRATCH_START: usize = 1024;

/// A string read from the input: borrowed when it has no escapes, else unescaped into the
/// scanner's scratch buffer.
#[derive(Clone, Copy)]
pub(super) enum Text<'de, 's> {
    /// A slice of the input.
    Borrowed(&'de str),
    /// Unescaped into the scratch buffer.
    Copied(&'s str),
}

/// A JSON integer as serde_json reads it (a fraction, an exponent, `-0` or an overflow are left
/// to serde_json, which reads them as floats).
pub(super) enum Integer {
    /// Not negative.
    Unsigned(u64),
    /// Negative.
    Signed(i64),
}

/// Where a list or map stands between its items.
pub(super) struct Items {
    first: bool,
    done: bool,
}

impl Items {
    /// Before the first item, the opening bracket consumed.
    pub(super) fn new() -> Self {
        Self {
            first: true,
            done: false,
        }
    }

    /// Whether another item follows (the comma before it consumed), or the closing `close`
    /// (consumed once: asked again after the end, still no item, and nothing read; serde's
    /// derive asks again for every defaulted field of a struct read from a list).
    pub(super) fn next(&mut self, reader: &mut Reader<'_>, close: u8) -> Result<bool, Unread> {
        if self.done {
            return Ok(false);
        }
        let b = reader.peek()?;
        if b == close {
            reader.bump();
            self.done = true;
            return Ok(false);
        }
        if self.first {
            self.first = false;
            return Ok(true);
        }
        if b != b',' {
            return Err(Unread);
        }
        reader.bump();
        Ok(true)
    }

    /// Whether the closing bracket was consumed.
    pub(super) fn ended(&self) -> bool {
        self.done
    }
}

/// A cursor over a body already checked to be UTF-8.
pub(super) struct Reader<'de> {
    text: &'de str,
    pos: usize,
    depth: u32,
}

impl<'de> Reader<'de> {
    /// A cursor at the start of `text`.
    pub(super) fn new(text: &'de str) -> Self {
        Self {
            text,
            pos: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'de [u8] {
        self.text.as_bytes()
    }

    /// The next byte that is not whitespace, not consumed.
    #[inline]
    pub(super) fn peek(&mut self) -> Result<u8, Unread> {
        let bytes = self.bytes();
        while let Some(&b) = bytes.get(self.pos) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Ok(b);
            }
            self.pos += 1;
        }
        Err(Unread)
    }

    /// Consume the byte `peek` returned.
    #[inline]
    pub(super) fn bump(&mut self) {
        self.pos += 1;
    }

    /// Consume `b` after optional whitespace.
    #[inline]
    pub(super) fn expect(&mut self, b: u8) -> Result<(), Unread> {
        if self.peek()? != b {
            return Err(Unread);
        }
        self.bump();
        Ok(())
    }

    /// Whether only whitespace is left.
    pub(super) fn at_end(&mut self) -> bool {
        self.peek().is_err()
    }

    /// One level deeper into an object or array, refused past the depth limit.
    pub(super) fn enter(&mut self) -> Result<(), Unread> {
        self.depth += 1;
        if self.depth > DEPTH_LIMIT {
            return Err(Unread);
        }
        Ok(())
    }

    /// One level back out.
    pub(super) fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Consume the literal `word` (its first byte already peeked).
    pub(super) fn literal(&mut self, word: &[u8]) -> Result<(), Unread> {
        let end = self.pos + word.len();
        if self.bytes().get(self.pos..end) != Some(word) {
            return Err(Unread);
        }
        self.pos = end;
        Ok(())
    }

    /// The closing quote of a string without escapes that ends within the 16 bytes at the
    /// cursor (most keys and values of a pod): one block test, inlined where strings are read.
    /// Else (`Err`) how many bytes at the cursor that test found plain: the general path starts
    /// after them instead of testing them again.
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    #[inline(always)]
    fn short_plain_end(&self) -> Result<usize, usize> {
        let Some(block) = self
            .bytes()
            .get(self.pos..)
            .and_then(<[u8]>::first_chunk::<16>)
        else {
            return Err(0);
        };
        let found = block_specials(block);
        if found == 0 {
            return Err(16);
        }
        let first = found.trailing_zeros() as usize;
        if block[first] == b'"' {
            Ok(self.pos + first)
        } else {
            Err(first)
        }
    }

    /// Elsewhere every string takes the general path.
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    #[inline(always)]
    fn short_plain_end(&self) -> Result<usize, usize> {
        Err(0)
    }

    /// The string whose opening quote was just consumed, up to and past its closing quote.
    /// A short plain string is read inline (issue 20: the call was most of its cost,
    /// BENCHMARKS §23); the rest out of line.
    #[inline]
    pub(super) fn string<'s>(&mut self, scratch: &'s mut Vec<u8>) -> Result<Text<'de, 's>, Unread> {
        match self.short_plain_end() {
            Ok(end) => {
                let start = self.pos;
                self.pos = end + 1;
                self.text.get(start..end).map(Text::Borrowed).ok_or(Unread)
            }
            Err(plain) => self.long_string(plain, scratch),
        }
    }

    /// [`Self::string`] past its first 16 bytes, or with escapes; its first `plain` bytes are
    /// known to be plain.
    #[inline(never)]
    fn long_string<'s>(
        &mut self,
        plain: usize,
        scratch: &'s mut Vec<u8>,
    ) -> Result<Text<'de, 's>, Unread> {
        let start = self.pos;
        let bytes = self.bytes();
        let at = find_special(bytes, start + plain).ok_or(Unread)?;
        if bytes[at] == b'"' {
            self.pos = at + 1;
            return self.text.get(start..at).map(Text::Borrowed).ok_or(Unread);
        }
        scratch.clear();
        // Escaped strings of a pod are mostly small JSON documents (`VCAP_SERVICES`): room for
        // one up front instead of doubling from nothing (the scratch is new for each body).
        scratch.reserve(SCRATCH_START);
        scratch.extend_from_slice(&bytes[start..at]);
        self.pos = at;
        self.unescape(scratch)?;
        std::str::from_utf8(scratch)
            .map(Text::Copied)
            .map_err(|_| Unread)
    }

    /// The rest of a string with escapes, from the special byte at the cursor, unescaped onto
    /// `out`.
    fn unescape(&mut self, out: &mut Vec<u8>) -> Result<(), Unread> {
        let bytes = self.bytes();
        loop {
            match bytes.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    if let Some(c) = bytes.get(self.pos + 1).and_then(|&b| short_escape(b)) {
                        self.pos += 2;
                        out.push(c);
                    } else {
                        self.pos += 1;
                        let c = self.escape()?;
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
                _ => return Err(Unread),
            }
            self.pos = copy_run(bytes, self.pos, out).ok_or(Unread)?;
        }
    }

    /// Skip the string whose opening quote was just consumed, checking it as [`Self::string`]:
    /// a short plain string inline, the rest out of line.
    #[inline]
    pub(super) fn skip_string(&mut self) -> Result<(), Unread> {
        match self.short_plain_end() {
            Ok(end) => {
                self.pos = end + 1;
                Ok(())
            }
            Err(plain) => self.skip_long_string(plain),
        }
    }

    /// [`Self::skip_string`] past its first 16 bytes, or with escapes; its first `plain` bytes
    /// are known to be plain.
    #[inline(never)]
    fn skip_long_string(&mut self, plain: usize) -> Result<(), Unread> {
        self.pos += plain;
        loop {
            let at = find_special(self.bytes(), self.pos).ok_or(Unread)?;
            self.pos = at + 1;
            match self.bytes()[at] {
                b'"' => return Ok(()),
                b'\\' => {
                    if self
                        .bytes()
                        .get(self.pos)
                        .and_then(|&b| short_escape(b))
                        .is_some()
                    {
                        self.pos += 1;
                    } else {
                        self.escape()?;
                    }
                }
                _ => return Err(Unread),
            }
        }
    }

    /// The character of the escape whose backslash was just consumed. A lone surrogate is left
    /// to serde_json.
    fn escape(&mut self) -> Result<char, Unread> {
        let b = *self.bytes().get(self.pos).ok_or(Unread)?;
        self.pos += 1;
        if b != b'u' {
            return short_escape(b).map(char::from).ok_or(Unread);
        }
        let unit = self.hex4()?;
        let code = match unit {
            0xD800..=0xDBFF => {
                self.literal(b"\\u")?;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(Unread);
                }
                0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
            }
            _ => unit,
        };
        char::from_u32(code).ok_or(Unread)
    }

    /// Four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Result<u32, Unread> {
        let digits = self.bytes().get(self.pos..self.pos + 4).ok_or(Unread)?;
        let mut unit = 0;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(Unread),
            };
            unit = unit * 16 + u32::from(v);
        }
        self.pos += 4;
        Ok(unit)
    }

    /// The digits at the cursor, consumed; their count.
    fn digits(&mut self) -> usize {
        let start = self.pos;
        let bytes = self.bytes();
        while bytes.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// The integer at the cursor (its first byte peeked): JSON's grammar, read as serde_json
    /// reads it; anything serde_json would read as a float is refused.
    pub(super) fn integer(&mut self) -> Result<Integer, Unread> {
        let negative = self.bytes().get(self.pos) == Some(&b'-');
        if negative {
            self.pos += 1;
        }
        let start = self.pos;
        let count = self.digits();
        let digits = &self.bytes()[start..self.pos];
        let plain = match digits {
            [] => false,
            [b'0', _, ..] => false,
            _ => !matches!(self.bytes().get(self.pos), Some(b'.' | b'e' | b'E')),
        };
        if !plain || count > 20 {
            return Err(Unread);
        }
        let magnitude = digits
            .iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .ok_or(Unread)?;
        if !negative {
            return Ok(Integer::Unsigned(magnitude));
        }
        match i64::try_from(magnitude) {
            Ok(m) if m > 0 => Ok(Integer::Signed(-m)),
            _ => Err(Unread),
        }
    }

    /// Skip the number at the cursor (its first byte peeked), checking JSON's grammar.
    fn skip_number(&mut self) -> Result<(), Unread> {
        if self.bytes().get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.bytes().get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Unread),
        }
        if self.bytes().get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Unread);
            }
        }
        if matches!(self.bytes().get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.bytes().get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Unread);
            }
        }
        Ok(())
    }

    /// Skip the value at the cursor, checked as serde_json checks it, nothing typed.
    pub(super) fn skip_value(&mut self) -> Result<(), Unread> {
        match self.peek()? {
            b'"' => {
                self.bump();
                self.skip_string()
            }
            b'{' => {
                self.bump();
                self.enter()?;
                let mut items = Items::new();
                while items.next(self, b'}')? {
                    self.expect(b'"')?;
                    self.skip_string()?;
                    self.expect(b':')?;
                    self.skip_value()?;
                }
                self.leave();
                Ok(())
            }
            b'[' => {
                self.bump();
                self.enter()?;
                let mut items = Items::new();
                while items.next(self, b']')? {
                    self.skip_value()?;
                }
                self.leave();
                Ok(())
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => Err(Unread),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_special_byte_of_a_word_is_found_wherever_it_is() {
        for len in 0..40 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    // A second special byte later must not hide the first.
                    if at + 1 < len {
                        bytes[at + 1] = b'"';
                    }
                    assert_eq!(find_special(&bytes, 0), Some(at), "{bytes:?}");
                    assert_eq!(find_special_in_words(&bytes, 0), Some(at), "{bytes:?}");
                    // Alone too: no later special byte to find it by.
                    let mut alone = vec![b'a'; len];
                    alone[at] = special;
                    assert!(!is_plain(&alone), "{alone:?}");
                }
            }
            let plain: Vec<u8> = (0..len)
                .map(|i| [b' ', b'~', 0x7f, 0xc3, 0x21][i % 5])
                .collect();
            assert_eq!(find_special(&plain, 0), None, "{plain:?}");
            assert_eq!(find_special_in_words(&plain, 0), None, "{plain:?}");
            assert!(is_plain(&plain), "{plain:?}");
        }
    }
}
