// Wrapper module: builds ghostunnel, the mTLS tunnel peer of `make bench` (its main package is
// the module root). go.sum includes ghostunnel's own go.sum: the checksum database reachable
// here has no entry for its pseudo-versioned go-landlock dependency, so the hashes come from
// ghostunnel's release instead.
module weft.dev/e2e/bench/tools/ghostunnel

go 1.25.0

require github.com/ghostunnel/ghostunnel v1.8.4
