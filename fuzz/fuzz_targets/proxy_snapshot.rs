//! Config snapshots arrive over the network from the operator; a bad one must be an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = weft::snapshot::decode_snapshot(data) {
        // Whatever decodes also indexes and routes without panicking.
        let index = weft::snapshot::SnapshotIndex::new(snapshot);
        let _ = index.route("198.18.0.1:80".parse().expect("literal address"));
    }
});
