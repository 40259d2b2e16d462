//! The config stream's bytes come from the network: the line framer must stay bounded and
//! every line it yields must decode or fail cleanly. The first byte picks the chunk size, so
//! lines split across reads at every position are exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::snapshot::stream::LineDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut lines = LineDecoder::new(64 * 1024);
    for piece in rest.chunks(chunk) {
        match lines.push(piece) {
            Ok(complete) => {
                for line in complete {
                    assert!(!line.is_empty() && line.len() <= 64 * 1024);
                    let _ = weft::snapshot::decode_snapshot(&line);
                }
            }
            Err(_) => return,
        }
        assert!(lines.pending() <= 64 * 1024);
    }
});
