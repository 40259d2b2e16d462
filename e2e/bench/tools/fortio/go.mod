// Wrapper module: builds fortio, the load generator of `make bench` (its main package is the
// module root). v1.66.x is the newest line whose dependencies the module proxy here serves
// (v1.69+ needs grol.io/grol, which it refuses).
module weft.dev/e2e/bench/tools/fortio

go 1.25.0

require fortio.org/fortio v1.66.5
