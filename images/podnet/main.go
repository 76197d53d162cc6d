// Command paddock-podnet is the pod network of a Paddock workload cluster.
// Every node of a cluster sits on the cluster's own overlay, one L2
// segment, so pods need no second encapsulation: each node bridges its
// pods (CNI bridge + host-local on the pod range the controller manager
// gave its Node) and routes every other node's pod range to that node's
// address — what flannel's host-gw backend does.
//
// It runs on each node as a systemd service with the kubelet's own
// credentials, watches the Nodes, and on every change (and every 30s)
// makes the node match them: it writes the CNI configuration once the
// node has a pod range, replaces the routes it owns (marked with its own
// route protocol) and deletes those of Nodes that are gone, and keeps one
// masquerade rule for traffic leaving the cluster's pod range. Each pass
// reads the world and is idempotent: killed at any line, the next start
// finishes the job.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// routeProtocol marks the routes paddock-podnet owns, so that it deletes
// only its own.
const routeProtocol = netlink.RouteProtocol(74)

type config struct {
	node        string
	clusterCIDR *net.IPNet
	mtu         int
	iface       string
	cniConf     string
	kubeconfig  string
}

func parseFlags() (config, error) {
	var c config
	host, _ := os.Hostname()
	cidr := flag.String("cluster-cidr", "", "the cluster's pod range (Cluster spec.network.podCIDR)")
	flag.StringVar(&c.node, "node", host, "this node's Node name")
	flag.IntVar(&c.mtu, "mtu", 1450, "the overlay's MTU, given to the pods' interfaces")
	flag.StringVar(&c.iface, "interface", "eth0", "the interface on the overlay")
	flag.StringVar(&c.cniConf, "cni-conf", "/etc/cni/net.d/10-paddock.conflist", "where the CNI configuration goes")
	flag.StringVar(&c.kubeconfig, "kubeconfig", "/etc/kubernetes/kubelet.conf", "credentials to read Nodes with")
	flag.Parse()
	_, n, err := net.ParseCIDR(*cidr)
	if err != nil || n.IP.To4() == nil {
		return c, fmt.Errorf("--cluster-cidr %q: want an IPv4 range such as 192.168.0.0/16", *cidr)
	}
	if c.mtu < 576 || c.mtu > 9000 {
		return c, fmt.Errorf("--mtu %d: want 576 to 9000", c.mtu)
	}
	c.clusterCIDR = n
	return c, nil
}

func main() {
	log.SetFlags(0)
	cfg, err := parseFlags()
	if err != nil {
		log.Fatalf("paddock-podnet: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Fatalf("paddock-podnet: %v", err)
	}
}

func run(ctx context.Context, cfg config) error {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("%s: %w", cfg.kubeconfig, err)
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	nodes := factory.Core().V1().Nodes()
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced) {
		return ctx.Err()
	}
	log.Printf("paddock-podnet: node %s, pods %s, MTU %d, on %s", cfg.node, cfg.clusterCIDR, cfg.mtu, cfg.iface)
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		if err := syncOnce(cfg, nodes.Lister()); err != nil {
			log.Printf("paddock-podnet: %v (retrying)", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-tick.C:
		}
	}
}

// syncOnce makes this node's CNI configuration, routes and masquerade rule
// match the Nodes.
func syncOnce(cfg config, lister corelisters.NodeLister) error {
	list, err := lister.List(labels.Everything())
	if err != nil {
		return err
	}
	plan := planFor(cfg.node, list)
	if plan.own != nil {
		conf, err := cniConfig(plan.own, cfg.mtu)
		if err != nil {
			return err
		}
		if wrote, err := writeIfChanged(cfg.cniConf, conf); err != nil {
			return err
		} else if wrote {
			log.Printf("paddock-podnet: pods of this node are on %s (%s)", plan.own, cfg.cniConf)
		}
	}
	if err := syncRoutes(cfg.iface, plan.routes); err != nil {
		return err
	}
	return ensureMasquerade(cfg.clusterCIDR)
}

func writeIfChanged(path string, body []byte) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && string(old) == string(body) {
		return false, nil
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, body, 0o644); err != nil {
		return false, err
	}
	return true, os.Rename(tmp, path)
}

func syncRoutes(iface string, want map[string]net.IP) error {
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", iface, err)
	}
	have, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range have {
		if r.Dst == nil {
			continue
		}
		if gw, ok := want[r.Dst.String()]; ok && gw.Equal(r.Gw) && r.LinkIndex == link.Attrs().Index {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil {
			return fmt.Errorf("deleting route %s via %s: %w", r.Dst, r.Gw, err)
		}
		log.Printf("paddock-podnet: route %s via %s removed", r.Dst, r.Gw)
	}
	for dst, gw := range want {
		_, n, err := net.ParseCIDR(dst)
		if err != nil {
			continue
		}
		r := netlink.Route{Dst: n, Gw: gw, LinkIndex: link.Attrs().Index, Protocol: routeProtocol}
		if err := netlink.RouteReplace(&r); err != nil {
			return fmt.Errorf("route %s via %s: %w", dst, gw, err)
		}
	}
	return nil
}

// ensureMasquerade keeps one rule: pods' traffic to anything outside the
// cluster's pod range leaves with the node's address; pod-to-pod traffic
// keeps its source.
func ensureMasquerade(cluster *net.IPNet) error {
	rule := []string{"POSTROUTING", "-s", cluster.String(), "!", "-d", cluster.String(),
		"-m", "comment", "--comment", "paddock-podnet", "-j", "MASQUERADE"}
	if exec.Command("iptables", append([]string{"-w", "-t", "nat", "-C"}, rule...)...).Run() == nil {
		return nil
	}
	add := append([]string{"-w", "-t", "nat", "-A"}, rule...)
	if out, err := exec.Command("iptables", add...).CombinedOutput(); err != nil {
		return fmt.Errorf("iptables %v: %v: %s", add, err, out)
	}
	return nil
}
