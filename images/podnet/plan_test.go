package main

import (
	"encoding/json"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name, cidr, ip string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if cidr != "" {
		n.Spec.PodCIDR = cidr
		n.Spec.PodCIDRs = []string{cidr}
	}
	if ip != "" {
		n.Status.Addresses = []v1.NodeAddress{
			{Type: v1.NodeHostName, Address: name},
			{Type: v1.NodeInternalIP, Address: ip},
		}
	}
	return n
}

func TestPlanRoutesOtherNodesAndSkipsIncompleteOnes(t *testing.T) {
	p := planFor("w1", []*v1.Node{
		node("cp", "192.168.0.0/24", "10.64.0.10"),
		node("w1", "192.168.1.0/24", "10.64.0.11"),
		node("w2", "192.168.2.0/24", "10.64.0.12"),
		node("new", "", "10.64.0.13"),        // no range yet
		node("noaddr", "192.168.4.0/24", ""), // no address yet
	})
	if p.own == nil || p.own.String() != "192.168.1.0/24" {
		t.Fatalf("own range: %v", p.own)
	}
	want := map[string]string{"192.168.0.0/24": "10.64.0.10", "192.168.2.0/24": "10.64.0.12"}
	if len(p.routes) != len(want) {
		t.Fatalf("routes %v, want %v", p.routes, want)
	}
	for dst, gw := range want {
		if p.routes[dst].String() != gw {
			t.Errorf("route %s via %v, want %s", dst, p.routes[dst], gw)
		}
	}
}

func TestPlanWithoutOwnRange(t *testing.T) {
	p := planFor("w9", []*v1.Node{node("w9", "", "10.64.0.19")})
	if p.own != nil || len(p.routes) != 0 {
		t.Fatalf("%+v", p)
	}
}

func TestCNIConfigUsesTheRangeAndMTU(t *testing.T) {
	p := planFor("cp", []*v1.Node{node("cp", "10.244.3.0/24", "10.64.0.10")})
	b, err := cniConfig(p.own, 1400)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		CNIVersion string `json:"cniVersion"`
		Plugins    []struct {
			Type string `json:"type"`
			MTU  int    `json:"mtu"`
			IPAM struct {
				Ranges [][]struct{ Subnet string } `json:"ranges"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.Plugins[0].Type != "bridge" || c.Plugins[0].MTU != 1400 || c.Plugins[0].IPAM.Ranges[0][0].Subnet != "10.244.3.0/24" {
		t.Fatalf("%s", b)
	}
	if c.Plugins[1].Type != "portmap" {
		t.Fatalf("%s", b)
	}
}
