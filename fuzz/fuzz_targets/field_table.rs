//! Arbitrary bytes as a field table and as content-header properties: whatever decodes must
//! re-encode to something that decodes to the same value, and `peek_delivery_mode` (the publish
//! hot path) must agree with the full decoder whenever the full decoder succeeds.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren_protocol::codec::{Field, Reader, Writer};
use warren_protocol::properties::peek_delivery_mode;
use warren_protocol::{BasicProperties, FieldTable, FieldValue};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    check_table(bytes.clone());
    check_properties(bytes);
});

fn encode_table(t: &FieldTable) -> Bytes {
    let mut b = BytesMut::new();
    t.write(&mut Writer::new(&mut b));
    b.freeze()
}

fn check_table(bytes: Bytes) {
    let mut r = Reader::new(bytes.clone());
    let Ok(t) = <FieldTable as Field>::read(&mut r) else {
        return;
    };
    // A table is its 4-byte length and exactly that many bytes.
    let used = bytes.len() - r.remaining();
    assert_eq!(
        used,
        4 + u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize
    );
    let once = encode_table(&t);
    let mut r2 = Reader::new(once.clone());
    let back = <FieldTable as Field>::read(&mut r2).expect("an encoded table decodes");
    assert_eq!(r2.remaining(), 0);
    // Encodings compare NaN floats by their bits; values compare with `==`, or by their Debug
    // text where a NaN (never equal to itself) makes `==` false.
    assert_eq!(
        encode_table(&back),
        once,
        "encode(decode(encode(t))) != encode(t)"
    );
    if back != t {
        assert_eq!(
            format!("{back:?}"),
            format!("{t:?}"),
            "decode(encode(t)) != t"
        );
    }
    for (k, v) in t.iter() {
        assert!(k.len() <= 255);
        visit(v);
        assert!(t.get(k).is_some());
    }
    // `same_entries` decides whether a redeclared exchange or a binding's arguments match: it
    // must hold between a table and its round trip (NaNs included: floats compare by bits),
    // and be symmetric.
    assert!(
        t.same_entries(&back),
        "same_entries(t, decode(encode(t))) is false"
    );
    // A second table from the bytes after the first, to compare with.
    if let Ok(u) = <FieldTable as Field>::read(&mut r) {
        assert_eq!(
            t.same_entries(&u),
            u.same_entries(&t),
            "same_entries is not symmetric"
        );
    }
}

/// Exercises the accessors the broker uses on arguments and headers.
fn visit(v: &FieldValue) {
    let _ = (v.as_i64(), v.as_str(), v.as_bool(), v.type_name());
    match v {
        FieldValue::Array(items) => items.iter().for_each(visit),
        FieldValue::Table(t) => t.iter().for_each(|(_, v)| visit(v)),
        _ => {}
    }
}

fn check_properties(raw: Bytes) {
    let peeked = peek_delivery_mode(&raw);
    let Ok(p) = BasicProperties::decode(raw) else {
        return;
    };
    assert_eq!(
        peeked, p.delivery_mode,
        "peek_delivery_mode disagrees with decode"
    );
    let once = p.to_bytes();
    let back = BasicProperties::decode(once.clone()).expect("encoded properties decode");
    assert_eq!(
        back.to_bytes(),
        once,
        "encode(decode(encode(p))) != encode(p)"
    );
    if back != p {
        assert_eq!(
            format!("{back:?}"),
            format!("{p:?}"),
            "decode(encode(p)) != p"
        );
    }
    assert_eq!(
        peek_delivery_mode(&once),
        p.delivery_mode,
        "peek on re-encoded properties"
    );
}
