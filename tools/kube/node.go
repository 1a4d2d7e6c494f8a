package main

// `sykli-kube node`: one Kubernetes node on virtual-kubelet's node library. It registers
// its Node (labels, taints, capacity), keeps its lease, runs the pods the scheduler binds
// to it through the project's bubblewrap pod runner (provider.go), and serves what the
// API server proxies to a kubelet: container logs and exec (kubelet.go).

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	vknode "github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// NodeOptions configure one node.
type NodeOptions struct {
	Name       string
	Kubeconfig string // the node's identity: system:node:NAME in system:nodes
	Listen     string // the kubelet port, 127.0.0.1:PORT
	CertFile   string // its serving certificate (127.0.0.1)
	KeyFile    string
	ClientCA   string // verifies the API server's client certificate
	Dir        string // pods' work dirs and fixtures
	Runner     string // the sykli-pod-runner binary
	Labels     map[string]string
	Taints     []corev1.Taint
	Capacity   corev1.ResourceList
	RunnerArgs []string      // passed to every run and exec (--shell, --image-file, --image-entrypoint)
	DenyImages []string      // glob patterns of images whose pull fails
	Backoff    time.Duration // first image-pull back-off (doubles, up to 5 × it)
	Retry      time.Duration // how often a pod waiting for a Secret, ConfigMap or claim looks again
}

const nodeUsage = `Usage: sykli-kube node --name NAME --kubeconfig FILE --listen 127.0.0.1:PORT
  --cert FILE --key FILE --client-ca FILE --dir DIR --runner PATH [flags]

Runs one node (virtual-kubelet's node library) whose pods run through sykli-pod-runner,
until SIGTERM/SIGINT (or, started by 'up', until its standard input closes).

Flags:
`

func nodeMain(args []string) int {
	fs := flag.NewFlagSet("sykli-kube node", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), nodeUsage)
		fs.PrintDefaults()
	}
	var o NodeOptions
	var labels, taints, capacity stringList
	fs.StringVar(&o.Name, "name", "", "the Node's name (required)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig of the node's identity (required)")
	fs.StringVar(&o.Listen, "listen", "", "the kubelet address, 127.0.0.1:PORT (required)")
	fs.StringVar(&o.CertFile, "cert", "", "the kubelet serving certificate (required)")
	fs.StringVar(&o.KeyFile, "key", "", "its key (required)")
	fs.StringVar(&o.ClientCA, "client-ca", "", "CA of the API server's client certificate (required)")
	fs.StringVar(&o.Dir, "dir", "", "the node's directory: one work dir per pod (required)")
	fs.StringVar(&o.Runner, "runner", "", "the sykli-pod-runner binary (required)")
	fs.Var(&labels, "label", "a node label KEY=VALUE (repeatable)")
	fs.Var(&taints, "taint", "a taint KEY[=VALUE]:EFFECT (repeatable)")
	fs.Var(&capacity, "capacity", "capacity and allocatable RESOURCE=QUANTITY (repeatable; default cpu=4, memory=8Gi, pods=110, ephemeral-storage=100Gi)")
	fs.Var((*stringList)(&o.RunnerArgs), "runner-arg", "an argument given to every sykli-pod-runner run and exec, e.g. --runner-arg=--shell=busybox (repeatable)")
	fs.Var((*stringList)(&o.DenyImages), "deny-image", "a glob of images whose pull fails with ErrImagePull (repeatable)")
	fs.DurationVar(&o.Backoff, "image-pull-backoff", 2*time.Second, "the first image-pull back-off (the kubelet's is 10 s)")
	verbosity := fs.Int("v", 0, "log verbosity (klog)")
	fs.DurationVar(&o.Retry, "retry", time.Second, "how often a pod waiting for a Secret, ConfigMap or claim looks again")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	var klogFlags flag.FlagSet
	klog.InitFlags(&klogFlags)
	_ = klogFlags.Set("v", strconv.Itoa(*verbosity))
	var err error
	if o.Labels, err = parseLabels(labels); err == nil {
		if o.Taints, err = parseTaints(taints); err == nil {
			o.Capacity, err = parseCapacity(capacity)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sykli-kube node: %v\n", err)
		return 2
	}
	for flagName, v := range map[string]string{"name": o.Name, "kubeconfig": o.Kubeconfig, "listen": o.Listen,
		"cert": o.CertFile, "key": o.KeyFile, "client-ca": o.ClientCA, "dir": o.Dir, "runner": o.Runner} {
		if v == "" {
			fmt.Fprintf(os.Stderr, "sykli-kube node: --%s is required\n", flagName)
			fs.Usage()
			return 2
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := signalled()
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "sykli-kube node %s: %s: stopping\n", o.Name, s)
		cancel()
	}()
	if err := RunNode(ctx, o); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(os.Stderr, "sykli-kube node %s: %v\n", o.Name, err)
		return 1
	}
	return 0
}

func parseLabels(list []string) (map[string]string, error) {
	out := map[string]string{}
	for _, l := range list {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q is not KEY=VALUE", l)
		}
		out[k] = v
	}
	return out, nil
}

func parseTaints(list []string) ([]corev1.Taint, error) {
	var out []corev1.Taint
	for _, t := range list {
		kv, effect, ok := strings.Cut(t, ":")
		k, v, _ := strings.Cut(kv, "=")
		e := corev1.TaintEffect(effect)
		if !ok || k == "" || (e != corev1.TaintEffectNoSchedule && e != corev1.TaintEffectPreferNoSchedule && e != corev1.TaintEffectNoExecute) {
			return nil, fmt.Errorf("--taint %q is not KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute", t)
		}
		out = append(out, corev1.Taint{Key: k, Value: v, Effect: e})
	}
	return out, nil
}

func parseCapacity(list []string) (corev1.ResourceList, error) {
	out := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("4"),
		corev1.ResourceMemory:           resource.MustParse("8Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	for _, c := range list {
		k, v, ok := strings.Cut(c, "=")
		q, err := resource.ParseQuantity(v)
		if !ok || k == "" || err != nil {
			return nil, fmt.Errorf("--capacity %q is not RESOURCE=QUANTITY", c)
		}
		out[corev1.ResourceName(k)] = q
	}
	return out, nil
}

// nodeObject is the Node the node registers: what a kubelet reports, within what the
// NodeRestriction admission plugin lets a node set on itself.
func nodeObject(o NodeOptions, port int) corev1.Node {
	labels := map[string]string{
		"kubernetes.io/hostname": o.Name,
		"kubernetes.io/os":       runtime.GOOS,
		"kubernetes.io/arch":     runtime.GOARCH,
		"type":                   "virtual-kubelet",
	}
	for k, v := range o.Labels {
		labels[k] = v
	}
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: o.Name, Labels: labels},
		Spec:       corev1.NodeSpec{Taints: o.Taints},
		Status: corev1.NodeStatus{
			Phase:       corev1.NodePending,
			Capacity:    o.Capacity,
			Allocatable: o.Capacity,
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
				{Type: corev1.NodeHostName, Address: o.Name},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(port)}},
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion:          kubernetesVersion,
				OperatingSystem:         runtime.GOOS,
				Architecture:            runtime.GOARCH,
				ContainerRuntimeVersion: "sykli-pod-runner://bubblewrap",
			},
			Conditions: []corev1.NodeCondition{
				{Type: corev1.NodeReady},
				{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory"},
				{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure"},
				{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID"},
			},
		},
	}
}

// RunNode runs a node until ctx ends.
func RunNode(ctx context.Context, o NodeOptions) error {
	if _, err := os.Stat(o.Runner); err != nil {
		return fmt.Errorf("--runner: %w (build it: cargo build -p sykli_testkit --bin sykli-pod-runner)", err)
	}
	host, portText, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || host == "" {
		return fmt.Errorf("--listen %q is not HOST:PORT", o.Listen)
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, "pods"), 0o700); err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	if err != nil {
		return err
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(o.ClientCA)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("--client-ca %s holds no PEM certificate", o.ClientCA)
	}
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return err
	}

	broadcaster := record.NewBroadcaster()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: o.Name})

	mux := http.NewServeMux()
	var prov *provider
	n, err := nodeutil.NewNode(o.Name, func(pc nodeutil.ProviderConfig) (nodeutil.Provider, vknode.NodeProvider, error) {
		prov = newProvider(o, client, recorder)
		return prov, nil, nil
	},
		func(c *nodeutil.NodeConfig) error {
			c.Client = client
			c.NodeSpec = nodeObject(o, port)
			c.HTTPListenAddr = o.Listen
			c.EventRecorder = recorder
			c.SkipDownwardAPIResolution = true // the pod runner resolves env and the downward API
			c.NumWorkers = 4
			c.InformerResyncPeriod = 0
			c.StreamIdleTimeout = 4 * time.Hour // the kubelet's default
			c.StreamCreationTimeout = 30 * time.Second
			c.Handler = apiServerOnly(mux)
			c.TLSConfig = &tls.Config{
				Certificates: []tls.Certificate{cert},
				ClientCAs:    pool,
				ClientAuth:   tls.RequireAndVerifyClientCert,
				MinVersion:   tls.VersionTLS12,
			}
			return nil
		},
		nodeutil.AttachProviderRoutes(mux),
	)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		prov.stopAll()
	}()
	klog.InfoS("node starting", "node", o.Name, "listen", o.Listen)
	err = n.Run(ctx)
	prov.stopAll()
	return err
}

// apiServerOnly serves only clients whose verified certificate is the API server's
// kubelet client (group system:masters): the kubelet API runs commands in pods.
func apiServerOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "Unauthorized", http.StatusUnauthorized)
			return
		}
		subject := r.TLS.VerifiedChains[0][0].Subject
		for _, o := range subject.Organization {
			if o == "system:masters" {
				h.ServeHTTP(w, r)
				return
			}
		}
		http.Error(w, fmt.Sprintf("Forbidden (user=%s)", subject.CommonName), http.StatusForbidden)
	})
}
