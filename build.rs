//! Link settings of weft's binaries (`weft`, `weft-proxy`); nothing is generated here.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // The binaries are position-independent executables: every pointer in their
        // read-only data (vtables, panic locations, static tables) is a relative relocation
        // the dynamic loader applies at start. As RELA entries (24 bytes each) those take
        // about 560 KB of the proxy's file, read at every start and then resident for the
        // process's life; packed as RELR (DT_RELR, glibc ≥ 2.36: Debian bookworm, the
        // Dockerfile's runtime image) they take 5 KB. Both linkers this builds with support it
        // (rust-lld, GNU ld ≥ 2.38). docs/proxy.md "Memory" has the measurement.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
