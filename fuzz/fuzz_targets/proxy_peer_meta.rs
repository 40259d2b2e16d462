//! The peer-metadata frame is the first thing the inbound side reads inside an mTLS stream:
//! from an authenticated peer, but from any version or build of one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::proxy::peer_meta::{MAX_META_BYTES, Parsed, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        // A frame never claims more bytes than it was given, nor more than the limit allows.
        Parsed::Frame(meta, used) => {
            assert!(used <= data.len() && used <= 6 + MAX_META_BYTES);
            // What it accepted survives its own encoding.
            if let Some(m) = meta {
                let again = m.encode();
                assert_eq!(parse(&again), Parsed::Frame(Some(m), again.len()));
            }
        }
        Parsed::NeedMore => assert!(data.len() < 6 + MAX_META_BYTES),
        Parsed::Absent => {}
    }
});
