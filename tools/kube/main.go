// sykli-kube: a local Kubernetes control plane in one binary, for sykli's tests.
//
// `sykli-kube up --dir DIR` starts etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler on 127.0.0.1, each as a subprocess of this same binary (its
// subcommands below), and prints one JSON line once the cluster is ready.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format, as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as in the upstream mains
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric, as in the upstream mains
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	_ "time/tzdata" // CronJob time zones, as in the upstream mains
)

const usage = `sykli-kube: a local Kubernetes control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler; Kubernetes v1.37.2) in one binary.

Usage:
  sykli-kube up --dir DIR [flags]     start a cluster; see 'sykli-kube up --help'
  sykli-kube version                  print the versions built in

Subcommands that 'up' runs itself (one process each, with the same binary):
  sykli-kube etcd [flags]                      embedded etcd (see 'sykli-kube etcd --help')
  sykli-kube kube-apiserver [upstream flags]
  sykli-kube kube-controller-manager [upstream flags]
  sykli-kube kube-scheduler [upstream flags]
  sykli-kube node [flags]                      one node (virtual-kubelet) running pods in bubblewrap
`

// childEnv marks a subprocess started by 'up': it stops when its standard input (a pipe
// from 'up') closes, so that no component outlives the launcher, however it ends.
const childEnv = "SYKLI_KUBE_CHILD"

var components = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

// isSubcommand tells whether args[0] names one of this binary's subcommands.
func isSubcommand(name string) bool {
	switch name {
	case "up", "etcd", "node", "version", "help", "-h", "--help":
		return true
	}
	_, ok := components[name]
	return ok
}

// dispatch runs the subcommand args[0] and returns the process exit code.
func dispatch(args []string) int {
	if os.Getenv(childEnv) == "1" {
		stopWhenStdinCloses()
	}
	name, rest := args[0], args[1:]
	switch name {
	case "up":
		return upMain(rest)
	case "etcd":
		return etcdMain(rest)
	case "node":
		return nodeMain(rest)
	case "version":
		fmt.Printf("sykli-kube: kubernetes %s, etcd %s\n", kubernetesVersion, etcdVersion())
		return 0
	case "help", "-h", "--help":
		fmt.Print(usage)
		return 0
	}
	cmd := components[name]()
	cmd.SetArgs(rest)
	return cli.Run(cmd)
}

// stopWhenStdinCloses asks this process to stop (SIGTERM, which every component
// handles by shutting down) when its standard input reaches EOF, and forces the exit if
// the graceful stop takes longer than 20 s.
func stopWhenStdinCloses() {
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		fmt.Fprintln(os.Stderr, "sykli-kube: standard input closed (the launcher is gone): stopping")
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
		time.Sleep(20 * time.Second)
		os.Exit(3)
	}()
}

func main() {
	if len(os.Args) < 2 || !isSubcommand(os.Args[1]) {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	os.Exit(dispatch(os.Args[1:]))
}

// signalled returns a channel that receives SIGTERM and SIGINT.
func signalled() chan os.Signal {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	return ch
}
