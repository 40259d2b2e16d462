//! The HTTP observer frames whatever bytes apps send through the proxy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::proxy::http_observe::HttpObserver;

fuzz_target!(|data: &[u8]| {
    // First byte: where to split the input into request and response bytes.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = (split as usize * rest.len()) / 256;
    let (request, response) = rest.split_at(cut);
    let now = tokio::time::Instant::now();
    let mut observer = HttpObserver::new(Box::new(|_| {}));
    for piece in request.chunks(7) {
        observer.on_request(piece, now);
    }
    for piece in response.chunks(5) {
        observer.on_response(piece, now);
    }
    observer.on_response_end(now);
});
