package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"time"

	etcdversion "go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/embed"
)

// kubernetesVersion is k8s.io/kubernetes' version in go.mod.
const kubernetesVersion = "v1.37.2"

func etcdVersion() string { return etcdversion.Version }

// etcdMain runs a single-member etcd (go.etcd.io/etcd/server/v3/embed) in this process
// until SIGTERM/SIGINT. It logs to stderr.
func etcdMain(args []string) int {
	fs := flag.NewFlagSet("sykli-kube etcd", flag.ContinueOnError)
	dataDir := fs.String("data-dir", "", "the member's data directory (required)")
	clientURL := fs.String("listen-client-url", "http://127.0.0.1:2379", "where clients (the API server) connect; also serves /health")
	peerURL := fs.String("listen-peer-url", "http://127.0.0.1:2380", "the peer URL (a single member: nothing connects to it)")
	noFsync := fs.Bool("unsafe-no-fsync", false, "do not fsync the WAL and the database: faster, for throw-away test clusters only")
	readyTimeout := fs.Duration("ready-timeout", 60*time.Second, "give up when the member is not ready within this time")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "sykli-kube etcd: --data-dir is required")
		return 2
	}
	curl, err := url.Parse(*clientURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sykli-kube etcd: --listen-client-url: %v\n", err)
		return 2
	}
	purl, err := url.Parse(*peerURL)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sykli-kube etcd: --listen-peer-url: %v\n", err)
		return 2
	}

	cfg := embed.NewConfig()
	cfg.Name = "sykli-kube"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = *noFsync
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{"stderr"}
	cfg.LogLevel = "warn"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sykli-kube etcd: start: %v\n", err)
		return 1
	}
	sig := signalled()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintf(os.Stderr, "sykli-kube etcd: ready, serving clients on %s\n", curl)
	case <-time.After(*readyTimeout):
		fmt.Fprintf(os.Stderr, "sykli-kube etcd: not ready after %s\n", *readyTimeout)
		e.Close()
		return 1
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "sykli-kube etcd: %s before ready: stopping\n", s)
		e.Close()
		return 0
	}
	select {
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "sykli-kube etcd: %v\n", err)
		e.Close()
		return 1
	case s := <-sig:
		fmt.Fprintf(os.Stderr, "sykli-kube etcd: %s: stopping\n", s)
		e.Close()
		return 0
	}
}
