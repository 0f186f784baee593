// libcni-caller: a CNI runtime in miniature, built on the reference library
// (github.com/containernetworking/cni/libcni) the way containerd, CRI-O and podman use it.
//
//	libcni-caller add|check|del -conflist FILE -container ID -netns PATH [-ifname eth0]
//	    [-args 'K=V;K2=V2'] [-cap '{"portMappings":[...]}'] [-path DIR:DIR] [-cache-dir DIR]
//
// ADD prints the chain's final result as JSON on stdout; CHECK and DEL print nothing.
// Failures print {"code": N, "msg": "..."} on stdout and exit 1 (code 0 when the error
// did not come from a plugin). Results are cached in -cache-dir, as libcni does, so
// CHECK and DEL receive the ADD result as prevResult.
//
// Built offline against Debian's golang-github-appc-cni-dev:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o libcni-caller .
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	code := uint(0)
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		code = cniErr.Code
	}
	out, _ := json.Marshal(map[string]interface{}{"code": code, "msg": err.Error()})
	fmt.Println(string(out))
	os.Exit(1)
}

func parseArgs(text string) ([][2]string, error) {
	var pairs [][2]string
	if text == "" {
		return pairs, nil
	}
	for _, item := range strings.Split(text, ";") {
		kv := strings.SplitN(item, "=", 2)
		if len(kv) != 2 || kv[0] == "" {
			return nil, fmt.Errorf("bad -args item %q: want KEY=VALUE", item)
		}
		pairs = append(pairs, [2]string{kv[0], kv[1]})
	}
	return pairs, nil
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: libcni-caller add|check|del -conflist FILE -container ID -netns PATH ...")
		os.Exit(2)
	}
	command := strings.ToLower(os.Args[1])
	fs := flag.NewFlagSet("libcni-caller "+command, flag.ExitOnError)
	conflist := fs.String("conflist", "", "network configuration list file")
	container := fs.String("container", "", "container ID")
	netns := fs.String("netns", "", "path of the container's network namespace")
	ifname := fs.String("ifname", "eth0", "interface name inside the container")
	cniArgs := fs.String("args", "", "CNI_ARGS, as K=V;K=V")
	capArgs := fs.String("cap", "", "capability args as a JSON object, e.g. {\"portMappings\":[...]}")
	path := fs.String("path", "/opt/cni/bin", "plugin directories, colon separated")
	cacheDir := fs.String("cache-dir", "", "libcni's result cache (default: next to the conflist)")
	timeout := fs.Duration("timeout", 120*time.Second, "give up after this long")
	if err := fs.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	if *conflist == "" || *container == "" {
		fmt.Fprintln(os.Stderr, "-conflist and -container are required")
		os.Exit(2)
	}

	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail(err)
	}
	pairs, err := parseArgs(*cniArgs)
	if err != nil {
		fail(err)
	}
	caps := map[string]interface{}{}
	if *capArgs != "" {
		if err := json.Unmarshal([]byte(*capArgs), &caps); err != nil {
			fail(fmt.Errorf("bad -cap JSON: %w", err))
		}
	}
	cache := *cacheDir
	if cache == "" {
		cache = filepath.Join(filepath.Dir(*conflist), "cache")
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    *container,
		NetNS:          *netns,
		IfName:         *ifname,
		Args:           pairs,
		CapabilityArgs: caps,
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(*path), cache, nil)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	switch command {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := result.PrintTo(os.Stdout); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q: want add, check or del\n", command)
		os.Exit(2)
	}
}
