package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// defaultControllers are the kube-controller-manager controllers 'up' runs: what Jobs,
// namespaces, service accounts, garbage collection and volume claims need, plus the ones
// a workload or a later kubelet relies on (kube-root-ca.crt, role aggregation,
// ReplicaSets/Deployments, EndpointSlices, CSRs).
var defaultControllers = []string{
	"job-controller",
	"garbage-collector-controller",
	"namespace-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"ttl-after-finished-controller",
	"persistentvolume-binder-controller",
	"persistentvolume-protection-controller",
	"persistentvolumeclaim-protection-controller",
	"pod-garbage-collector-controller",
	"root-ca-certificate-publisher-controller",
	"clusterrole-aggregation-controller",
	"replicaset-controller",
	"deployment-controller",
	"cronjob-controller",
	"endpointslice-controller",
	// Lifts the not-ready taint the API server puts on a new Node once it is Ready, and
	// taints (then evicts from) a node whose lease runs out, as in a real cluster.
	"node-lifecycle-controller",
	// Deletes the pods of a node tainted NoExecute that do not tolerate it (a lost node's
	// unreachable taint), marking them DisruptionTarget/DeletionByTaintManager.
	"taint-eviction-controller",
	"certificatesigningrequest-signing-controller",
	"certificatesigningrequest-approving-controller",
	"certificatesigningrequest-cleaner-controller",
}

// Options configure a cluster. Dir is required; zero values elsewhere take the defaults.
type Options struct {
	Dir               string        // state: pki/, etcd/, logs/, kubeconfigs
	Timeout           time.Duration // bound on each component's start (default 120 s)
	Controllers       []string      // kube-controller-manager --controllers
	ServiceCIDR       string        // --service-cluster-ip-range
	EtcdNoFsync       bool          // etcd without fsync (throw-away clusters)
	Verbosity         int           // --v of the three Kubernetes components
	APIServerArgs     []string      // extra kube-apiserver flags, appended last
	ControllerMgrArgs []string      // extra kube-controller-manager flags
	SchedulerArgs     []string      // extra kube-scheduler flags
	Nodes             int           // how many nodes (sykli-kube node) to start
	NodeRunner        string        // the sykli-pod-runner binary the nodes run pods with
	NodeArgs          []string      // extra flags of every node
	NodeTaints        []string      // INDEX:KEY[=VALUE]:EFFECT, a taint of node INDEX
	NodeLabels        []string      // INDEX:KEY=VALUE, a label of node INDEX
	Executable        string        // the binary with the subcommands (default: this one)
	Progress          io.Writer     // progress lines (default: stderr)
}

// Cluster is a running control plane.
type Cluster struct {
	Kubeconfig string   `json:"kubeconfig"` // admin kubeconfig (user sykli-admin, group system:masters)
	Server     string   `json:"server"`     // https://127.0.0.1:PORT
	CA         string   `json:"ca"`         // PEM of the CA that signed the API server's certificate
	Etcd       string   `json:"etcd"`       // etcd's client URL (a test may compact it)
	NodeNames  []string `json:"nodes"`      // the nodes, Ready

	opts   Options
	procs  []*proc
	failed chan error
	once   sync.Once
}

// proc is one component's subprocess.
type proc struct {
	name    string
	cmd     *exec.Cmd
	stdin   io.WriteCloser // closing it tells the child to stop
	logFile string
	done    chan struct{}
	err     error // set before done is closed
	stopped bool  // we asked it to stop
	mu      sync.Mutex
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes how p ended, with the tail of its log.
func (p *proc) exitError(what string) error {
	return fmt.Errorf("%s %s (%v); last lines of %s:\n%s", p.name, what, p.err, p.logFile, tail(p.logFile, 40))
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "  (no log: " + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	for i := range lines {
		lines[i] = "  | " + lines[i]
	}
	return strings.Join(lines, "\n")
}

// ownedNames are the entries of DIR that 'up' makes, and removes again before a start.
var ownedNames = []string{".sykli-kube", "pki", "etcd", "logs", "kubeconfig", "controller-manager.kubeconfig",
	"scheduler.kubeconfig", "cluster.json", "nodes"}

func prepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		if _, err := os.Stat(filepath.Join(dir, ".sykli-kube")); err != nil {
			return fmt.Errorf("%s is not empty and was not made by sykli-kube (no .sykli-kube in it): give an empty or new directory", dir)
		}
		for _, n := range ownedNames {
			if err := os.RemoveAll(filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, ".sykli-kube"),
		[]byte("made by sykli-kube up; every 'up' with this directory starts a fresh cluster in it\n"), 0o644)
}

// freePorts reserves n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// firstIP returns the first usable address of a CIDR: the kubernetes service's IP.
func firstIP(cidr string) (net.IP, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, err
	}
	ip := n.IP.To4()
	if ip == nil {
		ip = append(net.IP{}, n.IP...)
	} else {
		ip = append(net.IP{}, ip...)
	}
	ip[len(ip)-1]++
	return ip, nil
}

func writeKubeconfig(path, server string, ca *keyPair, user string, client *keyPair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["sykli-kube"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: ca.CertPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: client.CertPEM, ClientKeyData: client.KeyPEM}
	cfg.Contexts["sykli-kube"] = &clientcmdapi.Context{Cluster: "sykli-kube", AuthInfo: user, Namespace: "default"}
	cfg.CurrentContext = "sykli-kube"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// Start brings up etcd, kube-apiserver, kube-controller-manager and kube-scheduler and
// returns once all are healthy. On any failure it stops what it started and returns an
// error that carries the failing component's log tail.
func Start(ctx context.Context, o Options) (c *Cluster, err error) {
	if o.Dir == "" {
		return nil, errors.New("no --dir")
	}
	if o.Dir, err = filepath.Abs(o.Dir); err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = 120 * time.Second
	}
	if len(o.Controllers) == 0 {
		o.Controllers = defaultControllers
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = "10.96.0.0/12"
	}
	if o.Executable == "" {
		if o.Executable, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	if o.Progress == nil {
		o.Progress = os.Stderr
	}
	serviceIP, err := firstIP(o.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("--service-cluster-ip-range: %w", err)
	}
	if err := prepareDir(o.Dir); err != nil {
		return nil, err
	}
	p, err := makePKI(filepath.Join(o.Dir, "pki"), serviceIP)
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	if o.Nodes > 0 && o.NodeRunner == "" {
		return nil, errors.New("--nodes needs --node-runner (the sykli-pod-runner binary: cargo build -p sykli_testkit --bin sykli-pod-runner)")
	}
	ports, err := freePorts(5 + o.Nodes)
	if err != nil {
		return nil, err
	}
	etcdPort, etcdPeerPort, apiPort, cmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]

	c = &Cluster{
		Kubeconfig: filepath.Join(o.Dir, "kubeconfig"),
		Server:     "https://127.0.0.1:" + strconv.Itoa(apiPort),
		CA:         p.CA.CertFile,
		Etcd:       "http://127.0.0.1:" + strconv.Itoa(etcdPort),
		NodeNames:  []string{},
		opts:       o,
		failed:     make(chan error, 8),
	}
	defer func() {
		if err != nil {
			c.Stop()
			c = nil
		}
	}()
	cmKubeconfig := filepath.Join(o.Dir, "controller-manager.kubeconfig")
	schedKubeconfig := filepath.Join(o.Dir, "scheduler.kubeconfig")
	for _, k := range []struct {
		path, user string
		kp         *keyPair
	}{
		{c.Kubeconfig, adminUser, p.Admin},
		{cmKubeconfig, "system:kube-controller-manager", p.ControllerMgr},
		{schedKubeconfig, "system:kube-scheduler", p.Scheduler},
	} {
		if err := writeKubeconfig(k.path, c.Server, p.CA, k.user, k.kp); err != nil {
			return c, err
		}
	}
	v := "--v=" + strconv.Itoa(o.Verbosity)

	// etcd
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	etcdArgs := []string{"--data-dir=" + filepath.Join(o.Dir, "etcd"), "--listen-client-url=" + etcdURL,
		"--listen-peer-url=http://127.0.0.1:" + strconv.Itoa(etcdPeerPort), "--ready-timeout=" + o.Timeout.String()}
	if o.EtcdNoFsync {
		etcdArgs = append(etcdArgs, "--unsafe-no-fsync")
	}
	etcd, err := c.spawn("etcd", etcdArgs)
	if err != nil {
		return c, err
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if err := c.waitHealthy(ctx, etcd, plain, etcdURL+"/health", func(b []byte) bool {
		return strings.Contains(string(b), `"health":"true"`)
	}); err != nil {
		return c, err
	}

	// kube-apiserver
	apiArgs := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--tls-cert-file=" + p.APIServer.CertFile,
		"--tls-private-key-file=" + p.APIServer.KeyFile,
		"--client-ca-file=" + p.CA.CertFile,
		"--kubelet-client-certificate=" + p.KubeletClient.CertFile,
		"--kubelet-client-key=" + p.KubeletClient.KeyFile,
		// As kubeadm does: a node's name need not resolve, its InternalIP does.
		"--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
		// The request-header (front-proxy) CA: what the controller manager's and the
		// scheduler's delegated authentication read, and what an aggregated API needs.
		"--requestheader-client-ca-file=" + p.FrontProxyCA.CertFile,
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.FrontProxyClient.CertFile,
		"--proxy-client-key-file=" + p.FrontProxyClient.KeyFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.SAPubFile,
		"--service-account-signing-key-file=" + p.SAKeyFile,
		"--service-cluster-ip-range=" + o.ServiceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction,PodSecurity",
		"--allow-privileged=true",
		// The only endpoint would be 127.0.0.1, which Endpoints may not hold.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(o.Dir, "pki", "apiserver-generated"),
		"--profiling=false",
		v,
	}
	api, err := c.spawn("kube-apiserver", append(apiArgs, o.APIServerArgs...))
	if err != nil {
		return c, err
	}
	caPool := x509.NewCertPool()
	caPool.AddCert(p.CA.Cert)
	adminTLS, err := tls.X509KeyPair(p.Admin.CertPEM, p.Admin.KeyPEM)
	if err != nil {
		return c, err
	}
	secure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: caPool, Certificates: []tls.Certificate{adminTLS}, MinVersion: tls.VersionTLS12}}}
	if err := c.waitHealthy(ctx, api, secure, c.Server+"/readyz", okBody); err != nil {
		return c, err
	}

	// kube-controller-manager and kube-scheduler, side by side
	cmArgs := []string{
		"--kubeconfig=" + cmKubeconfig,
		"--authentication-kubeconfig=" + cmKubeconfig,
		"--authorization-kubeconfig=" + cmKubeconfig,
		"--client-ca-file=" + p.CA.CertFile,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(cmPort),
		"--tls-cert-file=" + p.ControllerMgrTLS.CertFile,
		"--tls-private-key-file=" + p.ControllerMgrTLS.KeyFile,
		"--controllers=" + strings.Join(o.Controllers, ","),
		"--use-service-account-credentials=true",
		"--root-ca-file=" + p.CA.CertFile,
		"--service-account-private-key-file=" + p.SAKeyFile,
		"--cluster-signing-cert-file=" + p.CA.CertFile,
		"--cluster-signing-key-file=" + p.CA.KeyFile,
		"--cluster-name=sykli-kube",
		"--leader-elect=false",
		"--profiling=false",
		v,
	}
	cm, err := c.spawn("kube-controller-manager", append(cmArgs, o.ControllerMgrArgs...))
	if err != nil {
		return c, err
	}
	schedArgs := []string{
		"--kubeconfig=" + schedKubeconfig,
		"--authentication-kubeconfig=" + schedKubeconfig,
		"--authorization-kubeconfig=" + schedKubeconfig,
		"--client-ca-file=" + p.CA.CertFile,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(schedPort),
		"--tls-cert-file=" + p.SchedulerTLS.CertFile,
		"--tls-private-key-file=" + p.SchedulerTLS.KeyFile,
		"--leader-elect=false",
		"--profiling=false",
		v,
	}
	sched, err := c.spawn("kube-scheduler", append(schedArgs, o.SchedulerArgs...))
	if err != nil {
		return c, err
	}
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: caPool, MinVersion: tls.VersionTLS12}}}
	errs := make(chan error, 2)
	go func() {
		errs <- c.waitHealthy(ctx, cm, anon, "https://127.0.0.1:"+strconv.Itoa(cmPort)+"/healthz", okBody)
	}()
	go func() {
		errs <- c.waitHealthy(ctx, sched, anon, "https://127.0.0.1:"+strconv.Itoa(schedPort)+"/healthz", okBody)
	}()
	for range 2 {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return c, err
	}

	// The service-account controller makes default/default: until it exists, every Pod
	// in "default" is refused, so a cluster is not ready before it.
	if runs(o.Controllers, "serviceaccount-controller") {
		if err := c.waitDefaultServiceAccount(ctx, cm); err != nil {
			return c, err
		}
	}

	if o.Nodes > 0 {
		if err := c.startNodes(ctx, p, ports[5:]); err != nil {
			return c, err
		}
	}

	b, _ := json.Marshal(c)
	_ = os.WriteFile(filepath.Join(o.Dir, "cluster.json"), append(b, '\n'), 0o644)
	fmt.Fprintf(o.Progress, "sykli-kube: cluster ready at %s (logs in %s)\n", c.Server, filepath.Join(o.Dir, "logs"))
	for _, pr := range c.procs {
		go func(pr *proc) {
			<-pr.done
			pr.mu.Lock()
			stopped := pr.stopped
			pr.mu.Unlock()
			if !stopped {
				c.failed <- pr.exitError("exited")
			}
		}(pr)
	}
	return c, nil
}

// runs tells whether a --controllers list enables the named controller.
func runs(list []string, name string) bool {
	short := strings.TrimSuffix(name, "-controller")
	enabled := false
	for _, c := range list {
		switch c {
		case "*":
			enabled = true
		case name, short:
			enabled = true
		case "-" + name, "-" + short:
			return false
		}
	}
	return enabled
}

func okBody(b []byte) bool { return strings.TrimSpace(string(b)) == "ok" }

// spawn starts "Executable name args..." (or "Executable subcommand args..." when one is
// given) with its output in DIR/logs/name.log.
func (c *Cluster) spawn(name string, args []string, subcommand ...string) (*proc, error) {
	logFile := filepath.Join(c.opts.Dir, "logs", name+".log")
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sub := name
	if len(subcommand) > 0 {
		sub = subcommand[0]
	}
	cmd := exec.Command(c.opts.Executable, append([]string{sub}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), childEnv+"=1")
	// Its own process group (a ^C to the launcher's terminal reaches only the launcher,
	// which stops the components in order), and SIGTERM if the launcher's thread dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "sykli-kube: starting %s %s\n", sub, strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	pr := &proc{name: name, cmd: cmd, stdin: stdin, logFile: logFile, done: make(chan struct{})}
	go func() {
		pr.err = cmd.Wait()
		close(pr.done)
	}()
	c.procs = append(c.procs, pr)
	fmt.Fprintf(c.opts.Progress, "sykli-kube: started %s (pid %d, log %s)\n", name, cmd.Process.Pid, logFile)
	return pr, nil
}

// waitHealthy polls url until ok(body) with a 200, within the start timeout; it fails at
// once when the process exits.
func (c *Cluster) waitHealthy(ctx context.Context, pr *proc, client *http.Client, url string, ok func([]byte) bool) error {
	deadline := time.Now().Add(c.opts.Timeout)
	last := "no answer yet"
	for {
		if pr.exited() {
			return pr.exitError("exited before it was healthy")
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && ok(body) {
				fmt.Fprintf(c.opts.Progress, "sykli-kube: %s healthy (%s)\n", pr.name, url)
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, lastLines(string(body), 6))
		} else {
			last = err.Error()
		}
		if err := c.pause(ctx, pr, deadline, 200*time.Millisecond); err != nil {
			return fmt.Errorf("%s not healthy at %s: %w; last answer: %s; last lines of %s:\n%s",
				pr.name, url, err, last, pr.logFile, tail(pr.logFile, 40))
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}

// pause waits d, or returns an error when the deadline passes, ctx ends or pr exits.
func (c *Cluster) pause(ctx context.Context, pr *proc, deadline time.Time, d time.Duration) error {
	if time.Now().After(deadline) {
		return fmt.Errorf("gave up after %s", c.opts.Timeout)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-pr.done:
		return nil // the next round reports the exit
	}
}

func (c *Cluster) waitDefaultServiceAccount(ctx context.Context, cm *proc) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(c.opts.Timeout)
	for {
		if cm.exited() {
			return cm.exitError("exited before it made the default service account")
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cs.CoreV1().ServiceAccounts("default").Get(rctx, "default", metav1.GetOptions{})
		cancel()
		if err == nil {
			fmt.Fprintln(c.opts.Progress, "sykli-kube: service account default/default exists")
			return nil
		}
		if !apierrors.IsNotFound(err) {
			fmt.Fprintf(c.opts.Progress, "sykli-kube: waiting for default/default: %v\n", err)
		}
		if perr := c.pause(ctx, cm, deadline, 200*time.Millisecond); perr != nil {
			return fmt.Errorf("service account default/default never appeared (%v; last: %v); last lines of %s:\n%s",
				perr, err, cm.logFile, tail(cm.logFile, 40))
		}
	}
}

// Failed receives an error when a component exits while the cluster runs.
func (c *Cluster) Failed() <-chan error { return c.failed }

// Stop stops every component, the last started first: SIGTERM, then SIGKILL after 20 s.
// It is safe to call more than once.
func (c *Cluster) Stop() {
	c.once.Do(func() {
		for i := len(c.procs) - 1; i >= 0; i-- {
			pr := c.procs[i]
			pr.mu.Lock()
			pr.stopped = true
			pr.mu.Unlock()
			if !pr.exited() {
				_ = pr.cmd.Process.Signal(syscall.SIGTERM)
				select {
				case <-pr.done:
				case <-time.After(20 * time.Second):
					fmt.Fprintf(c.opts.Progress, "sykli-kube: %s did not stop within 20 s: killing it\n", pr.name)
					_ = pr.cmd.Process.Kill()
					<-pr.done
				}
			}
			_ = pr.stdin.Close()
		}
	})
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

const upUsage = `Usage: sykli-kube up --dir DIR [flags]

Starts a Kubernetes control plane on 127.0.0.1 with random free ports: etcd, then
kube-apiserver, then kube-controller-manager and kube-scheduler (each a subprocess of
this binary), and waits until each is healthy (API server /readyz, the others' /healthz,
and the service account default/default). Then it prints exactly one JSON line to stdout:

  {"kubeconfig":"DIR/kubeconfig","server":"https://127.0.0.1:PORT","ca":"DIR/pki/ca.crt"}

and runs until its standard input closes (or SIGTERM/SIGINT), when it stops everything
and exits 0. It exits 1 when a component fails to start (or dies later), after printing
that component's log tail to stderr and stopping the others.

Output: stdout carries only the JSON line. The launcher's progress and errors go to
stderr; each component logs to DIR/logs/{etcd,kube-apiserver,kube-controller-manager,
kube-scheduler}.log. DIR also gets pki/ (CA, certificates, service-account keys),
etcd/ (data), kubeconfig (admin: user sykli-admin in group system:masters),
controller-manager.kubeconfig, scheduler.kubeconfig and cluster.json (the JSON line).
A DIR that 'up' made before is wiped of those and used afresh; any other non-empty
DIR is refused.

Flags:
`

func upMain(args []string) int {
	fs := flag.NewFlagSet("sykli-kube up", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), upUsage)
		fs.PrintDefaults()
	}
	var o Options
	var controllers string
	var ignoreStdin bool
	fs.StringVar(&o.Dir, "dir", "", "the cluster's directory (required): state, kubeconfigs, logs")
	fs.DurationVar(&o.Timeout, "timeout", 120*time.Second, "bound on each component's start; past it 'up' fails")
	fs.StringVar(&controllers, "controllers", strings.Join(defaultControllers, ","),
		"kube-controller-manager --controllers (comma-separated; '*' for upstream's default set)")
	fs.StringVar(&o.ServiceCIDR, "service-cluster-ip-range", "10.96.0.0/12",
		"the Service IP range (only allocated, never routed: there is no node or proxy)")
	fs.BoolVar(&o.EtcdNoFsync, "etcd-unsafe-no-fsync", false, "run etcd without fsync: faster, for throw-away test clusters")
	fs.IntVar(&o.Verbosity, "v", 0, "log verbosity (--v) of the Kubernetes components")
	fs.Var((*stringList)(&o.APIServerArgs), "apiserver-arg", "an extra kube-apiserver flag, e.g. --apiserver-arg=--v=4 (repeatable; last wins)")
	fs.Var((*stringList)(&o.ControllerMgrArgs), "controller-manager-arg", "an extra kube-controller-manager flag (repeatable)")
	fs.Var((*stringList)(&o.SchedulerArgs), "scheduler-arg", "an extra kube-scheduler flag (repeatable)")
	fs.IntVar(&o.Nodes, "nodes", 0, "how many nodes to start (sykli-kube node: virtual-kubelet running pods through --node-runner)")
	fs.StringVar(&o.NodeRunner, "node-runner", os.Getenv("SYKLI_POD_RUNNER"), "the sykli-pod-runner binary (default $SYKLI_POD_RUNNER)")
	fs.Var((*stringList)(&o.NodeArgs), "node-arg", "an extra flag of every node, e.g. --node-arg=--deny-image=registry.invalid/* (repeatable)")
	fs.Var((*stringList)(&o.NodeTaints), "node-taint", "a taint of one node: INDEX:KEY[=VALUE]:EFFECT (repeatable)")
	fs.Var((*stringList)(&o.NodeLabels), "node-label", "a label of one node: INDEX:KEY=VALUE (repeatable)")
	fs.BoolVar(&ignoreStdin, "ignore-stdin", false, "do not stop when stdin closes (stop on SIGTERM/SIGINT only), e.g. when started with </dev/null")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if o.Dir == "" || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "sykli-kube up: --dir DIR is required, and takes no arguments")
		fs.Usage()
		return 2
	}
	for _, s := range strings.Split(controllers, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.Controllers = append(o.Controllers, s)
		}
	}

	sig := signalled()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "sykli-kube: %s: stopping\n", s)
		cancel()
	}()

	c, err := Start(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "sykli-kube up: %v\n", err)
		return 1
	}
	defer c.Stop()
	b, _ := json.Marshal(c)
	if _, err := fmt.Fprintf(os.Stdout, "%s\n", b); err != nil {
		fmt.Fprintf(os.Stderr, "sykli-kube up: stdout: %v\n", err)
		return 1
	}

	stdinClosed := make(chan struct{})
	if !ignoreStdin {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(stdinClosed)
		}()
	}
	select {
	case <-stdinClosed:
		fmt.Fprintln(os.Stderr, "sykli-kube: standard input closed: stopping")
	case <-ctx.Done():
	case err := <-c.Failed():
		fmt.Fprintf(os.Stderr, "sykli-kube: %v\n", err)
		c.Stop()
		return 1
	}
	c.Stop()
	fmt.Fprintln(os.Stderr, "sykli-kube: stopped")
	return 0
}
