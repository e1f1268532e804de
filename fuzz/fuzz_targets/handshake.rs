//! The handshake's decoders on arbitrary bytes: the protocol header check, the methods a
//! client sends before connection.open-ok (start-ok, tune-ok, open), and the SASL responses
//! (PLAIN, AMQPLAIN) — decoding never panics, and what decodes re-encodes to itself.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren_protocol::constants::PROTOCOL_HEADER;
use warren_protocol::sasl::parse_response;
use warren_protocol::Method;

fuzz_target!(|data: &[u8]| {
    // The header check the server does on the first 8 bytes.
    let _ = data.len() >= 8 && &data[..8] == PROTOCOL_HEADER;
    // A method payload as it would arrive on channel 0.
    if let Ok(m) = Method::decode(Bytes::copy_from_slice(data)) {
        if let Method::ConnectionStartOk(s) = &m {
            let _ = parse_response(&s.mechanism, s.response.as_bytes());
        }
        let mut out = BytesMut::new();
        m.encode(&mut out);
        // Round trip (floats in tables may be NaN, so compare encodings).
        let again = Method::decode(out.clone().freeze()).expect("re-decodes");
        let mut out2 = BytesMut::new();
        again.encode(&mut out2);
        assert_eq!(out, out2);
    }
    // Raw SASL responses.
    for mech in ["PLAIN", "AMQPLAIN"] {
        if let Ok((user, pass)) = parse_response(mech, data) {
            assert!(user.len() + pass.len() <= data.len() * 4 + 8);
        }
    }
});
