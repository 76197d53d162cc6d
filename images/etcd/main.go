// Command etcd is upstream etcd's server at the version kubeadm expects
// for the node image's Kubernetes, built from the go.etcd.io/etcd/server/v3
// module: the same main as upstream's server/main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
