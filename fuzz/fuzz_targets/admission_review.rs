//! AdmissionReviews come from the API server but carry whatever a user wrote into a pod or a
//! MeshConfig: injection, validation and defaulting must answer every body without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::webhook::{InjectorSettings, MeshState};

fuzz_target!(|data: &[u8]| {
    let state = MeshState::default();
    let settings = InjectorSettings::default();
    let (status, body) = weft::webhook::review(data, |_| None, &state, &settings);
    assert!(status >= 200 && !body.is_empty());
    let _ = weft::webhook::validate::validate(data, &state, &settings);
    let _ = weft::webhook::defaulting::default_meshconfig(data, &state, &settings);
});
