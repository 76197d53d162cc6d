// Command kube is every Kubernetes component a Paddock node runs, in one
// binary built from the upstream k8s.io/kubernetes module at a pinned
// version: kube-apiserver, kube-controller-manager, kube-scheduler,
// kubelet, kube-proxy, kubeadm and kubectl. It runs as the component its
// name says (argv[0], reached through symlinks), or as the one named by its
// first argument (`kube kubelet --version`).
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	_ "time/tzdata" // CronJob time zones

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeadm "k8s.io/kubernetes/cmd/kubeadm/app"
	kubeadmerrors "k8s.io/kubernetes/cmd/kubeadm/app/util/errors"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// What each component does in its upstream main.
var components = map[string]func() int{
	"kube-apiserver":          func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int { return cli.Run(controllermanager.NewControllerManagerCommand()) },
	"kube-scheduler":          func() int { return cli.Run(scheduler.NewSchedulerCommand()) },
	"kube-proxy":              func() int { return cli.Run(proxy.NewProxyCommand()) },
	"kubelet":                 func() int { return cli.Run(kubelet.NewKubeletCommand(context.Background())) },
	"kubeadm": func() int {
		kubeadmerrors.HandleError(kubeadm.Run())
		return 0
	},
	"kubectl": func() int {
		logs.GlogSetter(kubectl.GetLogVerbosity(os.Args)) // nolint:errcheck
		if err := cli.RunNoErrOutput(kubectl.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
}

// waitEnv names a URL a component waits for before it starts: until a GET
// of it answers 200. Paddock sets it on the controller manager of an
// emulated control plane: once it holds its leader lease the controller
// manager gives the API server 10 s to be healthy and exits otherwise, and
// the restarted one then waits out its own lost lease (minutes there).
const waitEnv = "PADDOCK_WAIT_FOR"

// waitFor polls url every 5 s until it answers 200. The certificate is
// not checked, as the kubelet's HTTPS probes do not check it: this is a
// health probe of a local server, it sends nothing.
func waitFor(url string) {
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, // nolint:gosec
	}
	start := time.Now()
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				fmt.Fprintf(os.Stderr, "kube: %s answered 200 after %s\n", url, time.Since(start).Round(time.Second))
				return
			}
			err = fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		fmt.Fprintf(os.Stderr, "kube: waiting for %s (%s): %v\n", url, waitEnv, err)
		time.Sleep(5 * time.Second)
	}
}

func main() {
	name := filepath.Base(os.Args[0])
	if _, ok := components[name]; !ok && len(os.Args) > 1 {
		// `kube <component> args...`: run it as if called by that name.
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	run, ok := components[name]
	if !ok {
		names := make([]string, 0, len(components))
		for n := range components {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "kube: run as one of %v (by symlink, or as the first argument)\n", names)
		os.Exit(2)
	}
	if url := os.Getenv(waitEnv); url != "" {
		waitFor(url)
	}
	os.Exit(run())
}
