//! Checking encoded values without decoding them: a cursor over a byte slice that steps over
//! fields with the grammar the decoders use, so validating a published message's properties
//! allocates nothing and touches no reference count.

use crate::codec::{DecodeError, Result, ShortStr};
use crate::table::FieldTable;

/// Field tables nested deeper than this are refused (as when decoding).
const MAX_DEPTH: u32 = 64;

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1, "octet")?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        let b = self.take(2, "short")?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4, "long")?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn shortstr(&mut self) -> Result<()> {
        let n = self.u8()? as usize;
        let b = self.take(n, "shortstr")?;
        std::str::from_utf8(b).map_err(|_| DecodeError::InvalidUtf8)?;
        Ok(())
    }

    fn longstr(&mut self) -> Result<()> {
        let n = self.u32()? as usize;
        self.take(n, "longstr").map(drop)
    }

    fn table(&mut self, depth: u32) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let n = self.u32()? as usize;
        let mut sub = Cursor::new(self.take(n, "table")?);
        while sub.remaining() > 0 {
            sub.shortstr()?;
            sub.value(depth)?;
        }
        Ok(())
    }

    fn value(&mut self, depth: u32) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let skip = match self.u8()? {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' => return self.longstr(),
            b'A' => {
                let n = self.u32()? as usize;
                let mut sub = Cursor::new(self.take(n, "array")?);
                while sub.remaining() > 0 {
                    sub.value(depth + 1)?;
                }
                return Ok(());
            }
            b'F' => return self.table(depth + 1),
            other => return Err(DecodeError::UnknownFieldType(other)),
        };
        self.take(skip, "field value").map(drop)
    }
}

/// A property's type, stepped over by a [`Cursor`].
pub(crate) trait Skip {
    fn skip(c: &mut Cursor<'_>) -> Result<()>;
}

impl Skip for u8 {
    fn skip(c: &mut Cursor<'_>) -> Result<()> {
        c.u8().map(drop)
    }
}

impl Skip for u64 {
    fn skip(c: &mut Cursor<'_>) -> Result<()> {
        c.take(8, "longlong").map(drop)
    }
}

impl Skip for ShortStr {
    fn skip(c: &mut Cursor<'_>) -> Result<()> {
        c.shortstr()
    }
}

impl Skip for FieldTable {
    fn skip(c: &mut Cursor<'_>) -> Result<()> {
        c.table(0)
    }
}
