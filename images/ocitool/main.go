// Command ocitool writes a single-layer container image as an archive that
// `ctr images import` (and `docker load`) reads, from files on this
// machine, without a registry or a container engine:
//
//	ocitool -o pause.tar -ref registry.k8s.io/pause:3.10.1 \
//	  -entrypoint /pause -file /pause=/var/cache/paddock/node-bin/pause
//
// -file DEST=SRC copies SRC to DEST (mode kept), -link DEST=TARGET makes a
// symlink; both repeat. Layers are reproducible: fixed owners and times,
// entries sorted.
package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type pairs []string

func (p *pairs) String() string     { return strings.Join(*p, ",") }
func (p *pairs) Set(v string) error { *p = append(*p, v); return nil }

func split(kind, v string) (string, string, error) {
	dest, src, ok := strings.Cut(v, "=")
	if !ok || !strings.HasPrefix(dest, "/") || src == "" {
		return "", "", fmt.Errorf("-%s %q: want /DEST=SOURCE", kind, v)
	}
	return strings.TrimPrefix(path.Clean(dest), "/"), src, nil
}

// layer is the tar of the files and links, with their parent directories.
func layer(files, links pairs) ([]byte, error) {
	type entry struct {
		hdr  tar.Header
		body []byte
	}
	entries := map[string]entry{}
	epoch := time.Unix(0, 0)
	dirs := func(p string) {
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			entries[d+"/"] = entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch}}
		}
	}
	for _, f := range files {
		dest, src, err := split("file", f)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, err
		}
		body, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		if _, dup := entries[dest]; dup {
			return nil, fmt.Errorf("/%s is given twice", dest)
		}
		dirs(dest)
		entries[dest] = entry{tar.Header{Typeflag: tar.TypeReg, Name: dest, Mode: int64(st.Mode().Perm()), Size: int64(len(body)), ModTime: epoch}, body}
	}
	for _, l := range links {
		dest, target, err := split("link", l)
		if err != nil {
			return nil, err
		}
		if _, dup := entries[dest]; dup {
			return nil, fmt.Errorf("/%s is given twice", dest)
		}
		dirs(dest)
		entries[dest] = entry{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: dest, Linkname: target, Mode: 0o777, ModTime: epoch}}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	w := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		e.hdr.Format = tar.FormatPAX
		if err := w.WriteHeader(&e.hdr); err != nil {
			return nil, err
		}
		if _, err := w.Write(e.body); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func run() error {
	var files, links pairs
	out := flag.String("o", "", "the archive to write")
	ref := flag.String("ref", "", "the image's name and tag, as kubelet and kubeadm ask for it")
	entrypoint := flag.String("entrypoint", "", "entrypoint, a JSON list or one path")
	env := flag.String("path", "/usr/local/bin:/usr/bin:/bin", "PATH inside the image")
	flag.Var(&files, "file", "/DEST=SOURCE (repeats)")
	flag.Var(&links, "link", "/DEST=TARGET symlink (repeats)")
	flag.Parse()
	if *out == "" || *ref == "" {
		return fmt.Errorf("-o and -ref are required")
	}
	tag, err := name.NewTag(*ref)
	if err != nil {
		return fmt.Errorf("-ref %q: %w", *ref, err)
	}
	raw, err := layer(files, links)
	if err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return err
	}
	cfg := v1.Config{Env: []string{"PATH=" + *env}}
	if e := *entrypoint; e != "" {
		if strings.HasPrefix(e, "[") {
			if err := json.Unmarshal([]byte(e), &cfg.Entrypoint); err != nil {
				return fmt.Errorf("-entrypoint: %w", err)
			}
		} else {
			cfg.Entrypoint = []string{e}
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Config = "amd64", "linux", cfg
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	tmp := *out + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		return err
	}
	return os.Rename(tmp, *out)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ocitool:", err)
		os.Exit(1)
	}
}
