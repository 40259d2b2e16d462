//go:build tools

// Pins the package the build script builds, so go.mod/go.sum record its dependencies.
package tools

import _ "sigs.k8s.io/gateway-api/conformance/echo-basic"
