package main

import (
	"encoding/json"
	"net"

	v1 "k8s.io/api/core/v1"
)

// plan is what this node should have: its own pod range (nil until the
// controller manager assigns one) and a route per other Node's pod range.
type plan struct {
	own    *net.IPNet
	routes map[string]net.IP
}

// planFor reads the Nodes: a Node contributes a route when it has an IPv4
// pod range and an InternalIP. A Node being deleted keeps its route until
// its object is gone: its pods may still be draining.
func planFor(self string, nodes []*v1.Node) plan {
	p := plan{routes: map[string]net.IP{}}
	for _, n := range nodes {
		cidr := podCIDR(n)
		if cidr == nil {
			continue
		}
		if n.Name == self {
			p.own = cidr
			continue
		}
		if ip := internalIP(n); ip != nil {
			p.routes[cidr.String()] = ip
		}
	}
	return p
}

func podCIDR(n *v1.Node) *net.IPNet {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if _, net, err := net.ParseCIDR(c); err == nil && net.IP.To4() != nil {
			return net
		}
	}
	return nil
}

func internalIP(n *v1.Node) net.IP {
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeInternalIP {
			if ip := net.ParseIP(a.Address).To4(); ip != nil {
				return ip
			}
		}
	}
	return nil
}

// cniConfig is the node's CNI network: a bridge whose address is the
// range's first, host-local addresses from the range, and port mappings
// (hostPort). Masquerading is left to the cluster-wide rule, so pod-to-pod
// traffic between nodes keeps its source address.
func cniConfig(own *net.IPNet, mtu int) ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "paddock",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      "cni0",
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"mtu":         mtu,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": own.String()}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}
