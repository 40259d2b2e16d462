// The upstream suite's own entry point, run from this module so its flags
// (--gateway-class, --supported-features, --report-output, ...) come from `make conformance`.
package conformance_test

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
