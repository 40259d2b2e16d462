//go:build tools

// Pins the packages the build script builds, so go.mod/go.sum record their dependencies.
package tools

import (
	_ "istio.io/istio/pkg/test/echo/cmd/client"
	_ "istio.io/istio/pkg/test/echo/cmd/server"
)
