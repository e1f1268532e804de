//! Field tables and field values (the `table` domain), with every value type RabbitMQ reads and
//! writes, following RabbitMQ's errata (`s` is a signed 16-bit, `l` a signed 64-bit, `x` bytes).

use crate::codec::{DecodeError, Field, LongStr, Reader, Result, ShortStr, Writer};

/// A field value. Variant names follow RabbitMQ's type names.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    LongStr(LongStr),
    Bytes(LongStr),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(FieldTable),
    Void,
}

impl FieldValue {
    /// The value as an integer, for arguments such as `x-message-ttl` that clients send with
    /// whatever integer type their language prefers.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v as i64,
            FieldValue::U8(v) => v as i64,
            FieldValue::I16(v) => v as i64,
            FieldValue::U16(v) => v as i64,
            FieldValue::I32(v) => v as i64,
            FieldValue::U32(v) => v as i64,
            FieldValue::I64(v) => v,
            FieldValue::Timestamp(v) => v as i64,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(s) | FieldValue::Bytes(s) => std::str::from_utf8(s.as_bytes()).ok(),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal(..) => "decimal",
            FieldValue::LongStr(_) => "longstr",
            FieldValue::Bytes(_) => "binary",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
        }
    }

    /// `==`, except that floats compare by their bits: unlike `==` this is an equivalence (a
    /// NaN is identical to itself), which [`FieldTable::same_entries`] relies on.
    pub fn identical(&self, other: &FieldValue) -> bool {
        match (self, other) {
            (FieldValue::F32(a), FieldValue::F32(b)) => a.to_bits() == b.to_bits(),
            (FieldValue::F64(a), FieldValue::F64(b)) => a.to_bits() == b.to_bits(),
            (FieldValue::Array(a), FieldValue::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.identical(y))
            }
            (FieldValue::Table(a), FieldValue::Table(b)) => {
                a.len() == b.len()
                    && a.0
                        .iter()
                        .zip(&b.0)
                        .all(|(x, y)| x.0 == y.0 && x.1.identical(&y.1))
            }
            _ => self == other,
        }
    }

    fn read_depth(r: &mut Reader, depth: u32) -> Result<Self> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let tag = r.u8()?;
        Ok(match tag {
            b't' => FieldValue::Bool(r.u8()? != 0),
            b'b' => FieldValue::I8(r.u8()? as i8),
            b'B' => FieldValue::U8(r.u8()?),
            b's' => FieldValue::I16(r.u16()? as i16),
            b'u' => FieldValue::U16(r.u16()?),
            b'I' => FieldValue::I32(r.u32()? as i32),
            b'i' => FieldValue::U32(r.u32()?),
            b'l' | b'L' => FieldValue::I64(r.u64()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(r.u32()?)),
            b'd' => FieldValue::F64(f64::from_bits(r.u64()?)),
            b'D' => FieldValue::Decimal(r.u8()?, r.u32()?),
            b'S' => FieldValue::LongStr(r.longstr()?),
            b'x' => FieldValue::Bytes(r.longstr()?),
            b'A' => {
                let len = r.u32()? as usize;
                let mut sub = Reader::new(r.bytes(len, "array")?);
                let mut items = Vec::new();
                while sub.remaining() > 0 {
                    items.push(FieldValue::read_depth(&mut sub, depth + 1)?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(r.u64()?),
            b'F' => FieldValue::Table(FieldTable::read_depth(r, depth + 1)?),
            b'V' => FieldValue::Void,
            other => return Err(DecodeError::UnknownFieldType(other)),
        })
    }

    fn write(&self, w: &mut Writer) {
        match self {
            FieldValue::Bool(v) => {
                w.u8(b't');
                w.u8(*v as u8)
            }
            FieldValue::I8(v) => {
                w.u8(b'b');
                w.u8(*v as u8)
            }
            FieldValue::U8(v) => {
                w.u8(b'B');
                w.u8(*v)
            }
            FieldValue::I16(v) => {
                w.u8(b's');
                w.u16(*v as u16)
            }
            FieldValue::U16(v) => {
                w.u8(b'u');
                w.u16(*v)
            }
            FieldValue::I32(v) => {
                w.u8(b'I');
                w.u32(*v as u32)
            }
            FieldValue::U32(v) => {
                w.u8(b'i');
                w.u32(*v)
            }
            FieldValue::I64(v) => {
                w.u8(b'l');
                w.u64(*v as u64)
            }
            FieldValue::F32(v) => {
                w.u8(b'f');
                w.u32(v.to_bits())
            }
            FieldValue::F64(v) => {
                w.u8(b'd');
                w.u64(v.to_bits())
            }
            FieldValue::Decimal(s, v) => {
                w.u8(b'D');
                w.u8(*s);
                w.u32(*v)
            }
            FieldValue::LongStr(s) => {
                w.u8(b'S');
                w.longstr(s.as_bytes())
            }
            FieldValue::Bytes(s) => {
                w.u8(b'x');
                w.longstr(s.as_bytes())
            }
            FieldValue::Array(items) => {
                w.u8(b'A');
                let at = w.buf.len();
                w.u32(0);
                for it in items {
                    it.write(w);
                }
                patch_len(w, at);
            }
            FieldValue::Timestamp(v) => {
                w.u8(b'T');
                w.u64(*v)
            }
            FieldValue::Table(t) => {
                w.u8(b'F');
                t.write(w)
            }
            FieldValue::Void => w.u8(b'V'),
        }
    }
}

const MAX_DEPTH: u32 = 64;

fn patch_len(w: &mut Writer, at: usize) {
    let len = (w.buf.len() - at - 4) as u32;
    w.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::LongStr(LongStr::from(s))
    }
}
impl From<String> for FieldValue {
    fn from(s: String) -> Self {
        FieldValue::LongStr(LongStr::from(s))
    }
}
impl From<bool> for FieldValue {
    fn from(b: bool) -> Self {
        FieldValue::Bool(b)
    }
}
impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}
impl From<FieldTable> for FieldValue {
    fn from(t: FieldTable) -> Self {
        FieldValue::Table(t)
    }
}

/// A field table: an ordered list of (name, value). Order is kept so that what a client
/// declared is what it reads back; lookups are linear, which beats hashing for the handful of
/// entries tables hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }
    pub fn insert(&mut self, key: impl Into<ShortStr>, value: impl Into<FieldValue>) {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.0.push((key, value));
        }
    }
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let i = self.0.iter().position(|(k, _)| k.as_str() == key)?;
        Some(self.0.remove(i).1)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    /// Equality that ignores entry order, as RabbitMQ compares declared arguments: the same
    /// (name, value) entries, each as often in one table as in the other. Counting matters when
    /// a peer repeats a name: looking each entry up by name alone made a table with two values
    /// for one name unequal to itself, and `{a: 1, a: 1}` equal to `{a: 1, b: 2}`. Floats
    /// compare by their bits, so a NaN argument matches itself and the counts stay consistent.
    pub fn same_entries(&self, other: &FieldTable) -> bool {
        let same = |x: &(ShortStr, FieldValue), y: &(ShortStr, FieldValue)| {
            x.0 == y.0 && x.1.identical(&y.1)
        };
        if self.len() != other.len() {
            return false;
        }
        if self.0.iter().zip(&other.0).all(|(x, y)| same(x, y)) {
            return true;
        }
        let count =
            |t: &FieldTable, e: &(ShortStr, FieldValue)| t.0.iter().filter(|x| same(x, e)).count();
        self.0.iter().all(|e| count(self, e) == count(other, e))
    }

    fn read_depth(r: &mut Reader, depth: u32) -> Result<Self> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let len = r.u32()? as usize;
        let mut sub = Reader::new(r.bytes(len, "table")?);
        let mut entries = Vec::new();
        while sub.remaining() > 0 {
            let k = sub.shortstr()?;
            let v = FieldValue::read_depth(&mut sub, depth)?;
            entries.push((k, v));
        }
        Ok(FieldTable(entries))
    }

    pub fn write(&self, w: &mut Writer) {
        let at = w.buf.len();
        w.u32(0);
        for (k, v) in &self.0 {
            w.shortstr(k);
            v.write(w);
        }
        patch_len(w, at);
    }
}

impl Field for FieldTable {
    fn read(r: &mut Reader) -> Result<Self> {
        FieldTable::read_depth(r, 0)
    }
    fn write(&self, w: &mut Writer) {
        FieldTable::write(self, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};

    #[test]
    fn every_type_round_trips() {
        let mut inner = FieldTable::new();
        inner.insert("n", FieldValue::I32(-5));
        let mut t = FieldTable::new();
        let vals = vec![
            FieldValue::Bool(true),
            FieldValue::I8(-1),
            FieldValue::U8(200),
            FieldValue::I16(-300),
            FieldValue::U16(60000),
            FieldValue::I32(-70000),
            FieldValue::U32(4_000_000_000),
            FieldValue::I64(-1 << 40),
            FieldValue::F32(1.5),
            FieldValue::F64(-2.25),
            FieldValue::Decimal(2, 12345),
            FieldValue::from("hello"),
            FieldValue::Bytes(LongStr::from("\u{1}\u{2}")),
            FieldValue::Array(vec![FieldValue::I32(1), FieldValue::from("x")]),
            FieldValue::Timestamp(1_700_000_000),
            FieldValue::Table(inner),
            FieldValue::Void,
        ];
        for (i, v) in vals.into_iter().enumerate() {
            t.insert(format!("k{i}"), v);
        }
        let mut buf = BytesMut::new();
        t.write(&mut Writer::new(&mut buf));
        let back = FieldTable::read(&mut Reader::new(buf.freeze())).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn same_entries_counts_repeated_names() {
        // Found by fuzz/field_table: {a: true, a: false} was not the same as itself.
        let raw = [0, 0, 0, 8, 1, b'a', b't', 1, 1, b'a', b't', 0];
        let t = FieldTable::read(&mut Reader::new(Bytes::copy_from_slice(&raw))).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.same_entries(&t.clone()));
        // And {a: 1, a: 1} was the same as {a: 1, b: 2}, but not the other way round.
        let mut twice = FieldTable::new();
        twice.0.push(("a".into(), FieldValue::I32(1)));
        twice.0.push(("a".into(), FieldValue::I32(1)));
        let mut other = FieldTable::new();
        other.insert("a", FieldValue::I32(1));
        other.insert("b", FieldValue::I32(2));
        assert!(!twice.same_entries(&other));
        assert!(!other.same_entries(&twice));
        // A NaN entry used to count as absent from both tables, so {a: NaN} was the same as
        // {b: void} but not the other way round; found by fuzz/field_table.
        let read =
            |raw: &[u8]| FieldTable::read(&mut Reader::new(Bytes::copy_from_slice(raw))).unwrap();
        let nan = read(&[0, 0, 0, 7, 1, b'a', b'f', 0x7f, 0xc0, 0, 0]);
        let void = read(&[0, 0, 0, 3, 1, b'b', b'V']);
        assert!(!nan.same_entries(&void) && !void.same_entries(&nan));
        assert!(nan.same_entries(&nan.clone()));
        // Order still does not matter.
        let mut swapped = FieldTable::new();
        swapped.insert("b", FieldValue::I32(2));
        swapped.insert("a", FieldValue::I32(1));
        assert!(other.same_entries(&swapped) && swapped.same_entries(&other));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        // 10,000 nested arrays: each level is 'A' + u32 length.
        let depth = 10_000usize;
        let mut body = Vec::new();
        for i in 0..depth {
            body.push(b'A');
            let remaining = (depth - i - 1) * 5;
            body.extend_from_slice(&(remaining as u32).to_be_bytes());
        }
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((body.len() + 2) as u32).to_be_bytes());
        buf.extend_from_slice(&[1, b'k']);
        buf.extend_from_slice(&body);
        let r = FieldTable::read(&mut Reader::new(buf.freeze()));
        assert_eq!(r, Err(DecodeError::TooDeep));
    }
}
