//! The inbound sniffer reads a client's first bytes before any authentication.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::proxy::sniff::{MAX_SNIFF_BYTES, Sniffed, sniff};

fuzz_target!(|data: &[u8]| {
    let verdict = sniff(data);
    // A full buffer is always decided.
    if data.len() >= MAX_SNIFF_BYTES {
        assert_ne!(verdict, Sniffed::NeedMore);
    }
});
