//! The CSR endpoint's body comes from any pod: decoding it, and signing whatever decodes,
//! must fail cleanly (the identity checks refuse what the token does not allow).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft::pki::MeshCa;

fn ca() -> &'static MeshCa {
    static CA: OnceLock<MeshCa> = OnceLock::new();
    CA.get_or_init(|| {
        MeshCa::generate_root("cluster.local", Duration::from_secs(86_400)).expect("root")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = weft::pki::decode_certificate_request(data) {
        let _ = ca().sign_workload_csr(
            &request.csr,
            "spiffe://cluster.local/ns/fuzz/sa/fuzz",
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        );
    }
});
