// Command cert-manager-controller runs cert-manager's OWN controllers (root module
// github.com/cert-manager/cert-manager, pinned by e2e/scripts/install-cert-manager.sh) for
// weft's e2e tests: the CA issuer's CertificateRequest signer, the default approver, and the
// Issuer/ClusterIssuer readiness controllers. Only this main is weft's: cert-manager's own main
// lives in the nested module .../cmd/controller, which the Go module proxy does not serve
// (404), so it cannot be required. It mirrors what that main does for these controllers:
// build the controller context, construct each named controller, start the informers, run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	// Each import registers its controller with controllerpkg (init functions), as
	// cert-manager's own main does through its controller list.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	// The CA issuer's setup (Issuer Ready when its Secret holds a CA key pair).
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
)

const approver = "certificaterequests-approver"

func main() {
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	namespace := flag.String("namespace", "", "namespace to watch (empty: all)")
	clusterResourceNamespace := flag.String("cluster-resource-namespace", "cert-manager",
		"where ClusterIssuers' Secrets live (cert-manager's --cluster-resource-namespace)")
	controllers := flag.String("controllers",
		"certificaterequests-issuer-ca,issuers,clusterissuers,"+approver,
		"controllers to run; leave out "+approver+" to approve or deny by hand (as with approver-policy)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   200,
		KubernetesAPIBurst: 400,
		Namespace:          *namespace,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: *clusterResourceNamespace,
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		os.Exit(1)
	}

	var running []controllerpkg.Interface
	for _, name := range strings.Split(*controllers, ",") {
		construct, ok := controllerpkg.Known()[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "cert-manager-controller: unknown controller %q\n", name)
			os.Exit(2)
		}
		iface, err := construct(factory)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cert-manager-controller: %s: %v\n", name, err)
			os.Exit(1)
		}
		running = append(running, iface)
	}

	// Informers start after every controller registered the ones it needs.
	base, err := factory.Build()
	if err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		os.Exit(1)
	}
	base.KubeSharedInformerFactory.Start(ctx.Done())
	base.SharedInformerFactory.Start(ctx.Done())
	fmt.Fprintf(os.Stderr, "cert-manager-controller: running %s\n", *controllers)

	var wg sync.WaitGroup
	for _, iface := range running {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// cert-manager's default --concurrent-workers.
			if err := iface.Run(5, ctx); err != nil {
				fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
				stop()
			}
		}()
	}
	wg.Wait()
}
