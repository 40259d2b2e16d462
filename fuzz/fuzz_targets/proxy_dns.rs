//! The proxy's DNS server reads every query of the app (and anything else sent to 15053) before
//! deciding to answer, forward or drop it: it must never panic, and an answer always carries
//! the query's ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::proxy::dns::{Reply, reply};
use weft::route::egress::{ExternalService, Location, Resolution};

fuzz_target!(|data: &[u8]| {
    let table = [ExternalService {
        host: "api.payments-partner.com".into(),
        namespace: "payments".into(),
        source: "payments/seed".into(),
        addresses: vec!["198.18.0.1/32".parse().unwrap()],
        allocated: Some(std::net::Ipv4Addr::new(198, 19, 240, 7)),
        ports: Vec::new(),
        resolution: Resolution::Dns,
        location: Location::MeshExternal,
    }];
    if let Reply::Answer(bytes) = reply(&table, data) {
        assert!(bytes.len() >= 12 && data.len() >= 2 && bytes[..2] == data[..2]);
    }
});
