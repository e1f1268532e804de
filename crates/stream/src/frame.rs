//! The stream protocol's framing and primitive types (PROTOCOL.adoc, "Types" and "Frame
//! Structure"): a frame is a u32 size and then the command's key, version and content, all
//! big-endian; strings are an i16 length and UTF-8, bytes an i32 length, arrays an i32
//! count. [`Decoder`] reads a frame's content, [`FrameBuf`] writes frames. No sockets here.

use bytes::{BufMut, Bytes, BytesMut};

/// A frame's content ended early or held something malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame truncated reading {0}")]
    Truncated(&'static str),
    #[error("invalid UTF-8 in {0}")]
    Utf8(&'static str),
    #[error("negative length for {0}")]
    Negative(&'static str),
}

/// Reads primitive values from a frame's content.
pub struct Decoder {
    buf: Bytes,
}

impl Decoder {
    pub fn new(buf: Bytes) -> Self {
        Decoder { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The next `n` bytes.
    pub fn take_bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.take(n, what)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        Ok(self.buf.split_to(n))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, what)?;
        Ok(b[..].try_into().expect("N bytes"))
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// A string; null (length -1) reads as empty.
    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let n = self.u16(what)? as i16;
        if n < 0 {
            return Ok(String::new());
        }
        let b = self.take(n as usize, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8(what))
    }

    /// Bytes; null (length -1) reads as empty.
    pub fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u32(what)? as i32;
        if n < 0 {
            return Ok(Bytes::new());
        }
        self.take(n as usize, what)
    }

    /// An array's count (never more than the bytes left could hold, so a hostile count
    /// cannot make a large allocation).
    pub fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as i32;
        if n < 0 {
            return Err(DecodeError::Negative(what));
        }
        Ok((n as usize).min(self.buf.len()))
    }

    /// A `[Key Value]` map of strings.
    pub fn string_map(&mut self, what: &'static str) -> Result<Vec<(String, String)>, DecodeError> {
        let n = self.count(what)?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            out.push((self.string(what)?, self.string(what)?));
        }
        Ok(out)
    }

    /// The rest of the content.
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }
}

/// Splits the next whole frame (without its size) off `buf`, if it holds one. `Err` with
/// the announced size when it is above `max` (0: no limit).
pub fn next_frame(buf: &mut BytesMut, max: u32) -> Result<Option<Bytes>, u32> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
    if max != 0 && size > max {
        return Err(size);
    }
    if buf.len() < 4 + size as usize {
        buf.reserve(4 + size as usize - buf.len());
        return Ok(None);
    }
    let _ = buf.split_to(4);
    Ok(Some(buf.split_to(size as usize).freeze()))
}

/// Frames being written: each starts with its size, filled in when it is finished.
#[derive(Default)]
pub struct FrameBuf {
    pub buf: BytesMut,
}

impl FrameBuf {
    /// Writes one frame: `key`, `version`, then what `content` puts.
    pub fn frame(&mut self, key: u16, version: u16, content: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.buf.put_u32(0);
        self.buf.put_u16(key);
        self.buf.put_u16(version);
        content(self);
        let size = (self.buf.len() - start - 4) as u32;
        self.buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
    }
    pub fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.put_u64(v);
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.put_i64(v);
    }
    /// A string (at most 32767 bytes: longer ones are cut at a character boundary).
    pub fn string(&mut self, s: &str) {
        let mut end = s.len().min(i16::MAX as usize);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.buf.put_u16(end as u16);
        self.buf.put_slice(&s.as_bytes()[..end]);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.buf.put_u32(b.len() as u32);
        self.buf.put_slice(b);
    }
    pub fn string_map<'a>(&mut self, entries: impl ExactSizeIterator<Item = (&'a str, &'a str)>) {
        self.buf.put_u32(entries.len() as u32);
        for (k, v) in entries {
            self.string(k);
            self.string(v);
        }
    }
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.put_slice(b);
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_limited() {
        let mut w = FrameBuf::default();
        w.frame(0x17, 1, |_| {});
        w.frame(0x11, 1, |w| {
            w.u32(7);
            w.string("héllo");
        });
        let mut buf = w.buf.clone();
        let f = next_frame(&mut buf, 0).unwrap().unwrap();
        assert_eq!(&f[..], &[0, 0x17, 0, 1]);
        let f = next_frame(&mut buf, 0).unwrap().unwrap();
        let mut d = Decoder::new(f);
        assert_eq!((d.u16("k").unwrap(), d.u16("v").unwrap()), (0x11, 1));
        assert_eq!(d.u32("c").unwrap(), 7);
        assert_eq!(d.string("s").unwrap(), "héllo");
        assert_eq!(d.u8("x"), Err(DecodeError::Truncated("x")));
        assert!(next_frame(&mut buf, 0).unwrap().is_none());
        let mut big = BytesMut::from(&[0u8, 1, 0, 0][..]);
        assert_eq!(next_frame(&mut big, 1000), Err(65536));
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        let mut d = Decoder::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]));
        assert_eq!(d.count("a").unwrap(), 0);
        let mut d = Decoder::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xfe]));
        assert!(d.count("a").is_err());
    }
}
