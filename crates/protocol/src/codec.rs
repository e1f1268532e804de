//! Primitive AMQP 0-9-1 field codecs: the [`Reader`] and [`Writer`] every method, table and
//! property goes through, including the packing of consecutive `bit` fields into one octet.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Why a frame payload could not be decoded. The server turns these into 502 SYNTAX_ERROR
/// or 501 FRAME_ERROR closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unexpected end of data while reading {0}")]
    Truncated(&'static str),
    #[error("invalid UTF-8 in short string")]
    InvalidUtf8,
    #[error("unknown field value type {0:#04x}")]
    UnknownFieldType(u8),
    #[error("unknown method {0}.{1}")]
    UnknownMethod(u16, u16),
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    #[error("frame end octet is {0:#04x}, expected 0xce")]
    BadFrameEnd(u8),
    #[error("frame of {size} bytes exceeds the negotiated frame_max {max}")]
    FrameTooLarge { size: u32, max: u32 },
    #[error("short string longer than 255 bytes")]
    ShortStrTooLong,
    #[error("field table nested too deeply")]
    TooDeep,
    #[error("{0} bytes after the last field")]
    TrailingBytes(usize),
}

pub type Result<T> = std::result::Result<T, DecodeError>;

/// An AMQP `shortstr`: at most 255 bytes of UTF-8, held as a cheap-to-clone `Bytes` slice
/// (usually of the read buffer, so decoding a publish allocates nothing).
#[derive(Clone, Default)]
pub struct ShortStr(Bytes);

impl ShortStr {
    pub const fn from_static(s: &'static str) -> Self {
        ShortStr(Bytes::from_static(s.as_bytes()))
    }
    /// Wraps validated bytes; errors if they are not UTF-8 or longer than 255 bytes.
    pub fn from_bytes(b: Bytes) -> Result<Self> {
        if b.len() > 255 {
            return Err(DecodeError::ShortStrTooLong);
        }
        std::str::from_utf8(&b).map_err(|_| DecodeError::InvalidUtf8)?;
        Ok(ShortStr(b))
    }
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validates UTF-8 (from_bytes, From<&str>, From<String>).
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}
impl Borrow<str> for ShortStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
impl Hash for ShortStr {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}
/// Byte equality that never calls `memcmp` for empty slices. An empty `Bytes` points at
/// address 0x1, and glibc's AVX-512 `memcmp` reads its argument with a masked load: with
/// nothing to compare, every lane is masked, yet a load from the unmapped page 0 still takes
/// a microcode assist of hundreds of cycles. Comparing the default exchange's empty name cost
/// about a tenth of the broker's CPU on the publish path (see docs/benchmarks.md, 2026-12-06).
#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

impl PartialEq for ShortStr {
    #[inline]
    fn eq(&self, o: &Self) -> bool {
        bytes_eq(&self.0, &o.0)
    }
}
impl Eq for ShortStr {}
impl PartialOrd for ShortStr {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ShortStr {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.cmp(&o.0)
    }
}
impl PartialEq<str> for ShortStr {
    #[inline]
    fn eq(&self, o: &str) -> bool {
        bytes_eq(&self.0, o.as_bytes())
    }
}
impl PartialEq<&str> for ShortStr {
    #[inline]
    fn eq(&self, o: &&str) -> bool {
        bytes_eq(&self.0, o.as_bytes())
    }
}
impl From<&str> for ShortStr {
    fn from(s: &str) -> Self {
        // Longer names are rejected by the decoder; locally made ones are truncated at a char
        // boundary so the invariant (<= 255 bytes) holds.
        let mut end = s.len().min(255);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        ShortStr(Bytes::copy_from_slice(&s.as_bytes()[..end]))
    }
}
impl From<String> for ShortStr {
    fn from(s: String) -> Self {
        if s.len() <= 255 {
            ShortStr(Bytes::from(s.into_bytes()))
        } else {
            ShortStr::from(s.as_str())
        }
    }
}
impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An AMQP `longstr`: arbitrary bytes with a 32-bit length.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LongStr(pub Bytes);

impl LongStr {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}
impl From<&str> for LongStr {
    fn from(s: &str) -> Self {
        LongStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<String> for LongStr {
    fn from(s: String) -> Self {
        LongStr(Bytes::from(s.into_bytes()))
    }
}
impl fmt::Debug for LongStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// Reads fields from a frame payload. Consecutive `bit` fields share octets, as the spec says.
pub struct Reader {
    buf: Bytes,
    bits: u8,
    bit_pos: u8,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Reader {
            buf,
            bits: 0,
            bit_pos: 8,
        }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn need(&self, n: usize, what: &'static str) -> Result<()> {
        if self.buf.len() < n {
            Err(DecodeError::Truncated(what))
        } else {
            Ok(())
        }
    }
    pub fn u8(&mut self) -> Result<u8> {
        self.bit_pos = 8;
        self.need(1, "octet")?;
        Ok(self.buf.get_u8())
    }
    pub fn u16(&mut self) -> Result<u16> {
        self.bit_pos = 8;
        self.need(2, "short")?;
        Ok(self.buf.get_u16())
    }
    pub fn u32(&mut self) -> Result<u32> {
        self.bit_pos = 8;
        self.need(4, "long")?;
        Ok(self.buf.get_u32())
    }
    pub fn u64(&mut self) -> Result<u64> {
        self.bit_pos = 8;
        self.need(8, "longlong")?;
        Ok(self.buf.get_u64())
    }
    pub fn bit(&mut self) -> Result<bool> {
        if self.bit_pos >= 8 {
            self.need(1, "bit")?;
            self.bits = self.buf.get_u8();
            self.bit_pos = 0;
        }
        let v = self.bits & (1 << self.bit_pos) != 0;
        self.bit_pos += 1;
        Ok(v)
    }
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        self.bit_pos = 8;
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }
    pub fn shortstr(&mut self) -> Result<ShortStr> {
        let n = self.u8()? as usize;
        let b = self.bytes(n, "shortstr")?;
        std::str::from_utf8(&b).map_err(|_| DecodeError::InvalidUtf8)?;
        Ok(ShortStr(b))
    }
    pub fn longstr(&mut self) -> Result<LongStr> {
        let n = self.u32()? as usize;
        Ok(LongStr(self.bytes(n, "longstr")?))
    }
    pub fn rest(&mut self) -> Bytes {
        self.bit_pos = 8;
        self.buf.split_off(0)
    }
}

/// Writes fields into a buffer, packing consecutive `bit` fields.
pub struct Writer<'a> {
    pub buf: &'a mut BytesMut,
    bit_at: Option<(usize, u8)>,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Writer { buf, bit_at: None }
    }
    pub fn u8(&mut self, v: u8) {
        self.bit_at = None;
        self.buf.put_u8(v)
    }
    pub fn u16(&mut self, v: u16) {
        self.bit_at = None;
        self.buf.put_u16(v)
    }
    pub fn u32(&mut self, v: u32) {
        self.bit_at = None;
        self.buf.put_u32(v)
    }
    pub fn u64(&mut self, v: u64) {
        self.bit_at = None;
        self.buf.put_u64(v)
    }
    pub fn bit(&mut self, v: bool) {
        match self.bit_at {
            Some((idx, pos)) if pos < 8 => {
                if v {
                    self.buf[idx] |= 1 << pos;
                }
                self.bit_at = Some((idx, pos + 1));
            }
            _ => {
                let idx = self.buf.len();
                self.buf.put_u8(v as u8);
                self.bit_at = Some((idx, 1));
            }
        }
    }
    pub fn raw(&mut self, b: &[u8]) {
        self.bit_at = None;
        self.buf.extend_from_slice(b)
    }
    pub fn shortstr(&mut self, s: &str) {
        let b = s.as_bytes();
        let n = b.len().min(255);
        self.u8(n as u8);
        self.raw(&b[..n]);
    }
    pub fn longstr(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.raw(b);
    }
}

/// A field type that can appear in a method: decoded by [`Reader`], encoded by [`Writer`].
pub trait Field: Sized {
    fn read(r: &mut Reader) -> Result<Self>;
    fn write(&self, w: &mut Writer);
}

impl Field for u8 {
    fn read(r: &mut Reader) -> Result<Self> {
        r.u8()
    }
    fn write(&self, w: &mut Writer) {
        w.u8(*self)
    }
}
impl Field for u16 {
    fn read(r: &mut Reader) -> Result<Self> {
        r.u16()
    }
    fn write(&self, w: &mut Writer) {
        w.u16(*self)
    }
}
impl Field for u32 {
    fn read(r: &mut Reader) -> Result<Self> {
        r.u32()
    }
    fn write(&self, w: &mut Writer) {
        w.u32(*self)
    }
}
impl Field for u64 {
    fn read(r: &mut Reader) -> Result<Self> {
        r.u64()
    }
    fn write(&self, w: &mut Writer) {
        w.u64(*self)
    }
}
impl Field for bool {
    fn read(r: &mut Reader) -> Result<Self> {
        r.bit()
    }
    fn write(&self, w: &mut Writer) {
        w.bit(*self)
    }
}
impl Field for ShortStr {
    fn read(r: &mut Reader) -> Result<Self> {
        r.shortstr()
    }
    fn write(&self, w: &mut Writer) {
        w.shortstr(self.as_str())
    }
}
impl Field for LongStr {
    fn read(r: &mut Reader) -> Result<Self> {
        r.longstr()
    }
    fn write(&self, w: &mut Writer) {
        w.longstr(&self.0)
    }
}
