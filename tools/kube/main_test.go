package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// The test binary is also the launcher's executable: Start re-executes os.Executable()
// with a subcommand (etcd, kube-apiserver, ...), which TestMain dispatches.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && isSubcommand(os.Args[1]) {
		os.Exit(dispatch(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// testLog lets the launcher's progress lines reach t.Log from several goroutines.
type testLog struct {
	mu sync.Mutex
	t  *testing.T
}

func (w *testLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func startCluster(t *testing.T) (*Cluster, *kubernetes.Clientset) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Dir: t.TempDir(), EtcdNoFsync: true, Progress: &testLog{t: t}})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(c.Stop)
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c, cs
}

// waitFor watches a list until cond holds for an event's object (or for one listed at
// the start), within the deadline of ctx.
func waitFor[T any](ctx context.Context, t *testing.T, what string,
	list func(context.Context) ([]T, string, error),
	watchFrom func(context.Context, string) (watch.Interface, error),
	cond func(watch.EventType, *T) bool) *T {
	t.Helper()
	for {
		items, rv, err := list(ctx)
		if err != nil {
			t.Fatalf("%s: list: %v", what, err)
		}
		for i := range items {
			if cond(watch.Added, &items[i]) {
				return &items[i]
			}
		}
		w, err := watchFrom(ctx, rv)
		if err != nil {
			t.Fatalf("%s: watch: %v", what, err)
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Error {
				break // re-list
			}
			if obj, ok := any(ev.Object).(*T); ok && cond(ev.Type, obj) {
				w.Stop()
				return obj
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			t.Fatalf("%s: not seen before the deadline", what)
		}
	}
}

// waitDefaultServiceAccount watches until the service-account controller has made
// namespace's "default" (pods are refused until then).
func waitDefaultServiceAccount(ctx context.Context, t *testing.T, cs *kubernetes.Clientset, namespace string) {
	t.Helper()
	sas := cs.CoreV1().ServiceAccounts(namespace)
	waitFor(ctx, t, "service account default",
		func(ctx context.Context) ([]corev1.ServiceAccount, string, error) {
			l, err := sas.List(ctx, metav1.ListOptions{})
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.ResourceVersion, nil
		},
		func(ctx context.Context, rv string) (watch.Interface, error) {
			return sas.Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
		},
		func(_ watch.EventType, sa *corev1.ServiceAccount) bool { return sa.Name == "default" })
}

func TestCluster(t *testing.T) {
	_, cs := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	ns, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "sykli-test"}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("service account token", func(t *testing.T) {
		waitDefaultServiceAccount(ctx, t, cs, ns.Name)

		// A legacy token Secret: the token controller fills in token, ca.crt, namespace.
		secrets := cs.CoreV1().Secrets(ns.Name)
		_, err := secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "default-token",
				Annotations: map[string]string{corev1.ServiceAccountNameKey: "default"}},
			Type: corev1.SecretTypeServiceAccountToken,
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sel := fields.OneTermEqualSelector("metadata.name", "default-token").String()
		s := waitFor(ctx, t, "token in secret default-token",
			func(ctx context.Context) ([]corev1.Secret, string, error) {
				l, err := secrets.List(ctx, metav1.ListOptions{FieldSelector: sel})
				if err != nil {
					return nil, "", err
				}
				return l.Items, l.ResourceVersion, nil
			},
			func(ctx context.Context, rv string) (watch.Interface, error) {
				return secrets.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv})
			},
			func(_ watch.EventType, s *corev1.Secret) bool { return len(s.Data[corev1.ServiceAccountTokenKey]) > 0 })
		if len(s.Data[corev1.ServiceAccountRootCAKey]) == 0 {
			t.Errorf("the token secret has no ca.crt")
		}
	})

	t.Run("job pod and garbage collection", func(t *testing.T) {
		jobs := cs.BatchV1().Jobs(ns.Name)
		job, err := jobs.Create(ctx, &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Name: "hello"},
			Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "main", Image: "busybox", Command: []string{"true"}}},
			}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods := cs.CoreV1().Pods(ns.Name)
		sel := batchv1.JobNameLabel + "=hello"
		podList := func(ctx context.Context) ([]corev1.Pod, string, error) {
			l, err := pods.List(ctx, metav1.ListOptions{LabelSelector: sel})
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.ResourceVersion, nil
		}
		podWatch := func(ctx context.Context, rv string) (watch.Interface, error) {
			return pods.Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: rv})
		}
		// The job controller makes the Pod; the scheduler finds no node for it.
		pod := waitFor(ctx, t, "the job's pod, unschedulable", podList, podWatch,
			func(_ watch.EventType, p *corev1.Pod) bool {
				for _, c := range p.Status.Conditions {
					if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse &&
						c.Reason == corev1.PodReasonUnschedulable {
						return true
					}
				}
				return false
			})
		if pod.Status.Phase != corev1.PodPending || pod.Spec.NodeName != "" {
			t.Errorf("pod %s: phase %s, node %q; want Pending on no node", pod.Name, pod.Status.Phase, pod.Spec.NodeName)
		}
		owner := metav1.GetControllerOf(pod)
		if owner == nil || owner.UID != job.UID {
			t.Fatalf("pod %s is not controlled by job %s: %v", pod.Name, job.UID, pod.OwnerReferences)
		}

		bg := metav1.DeletePropagationBackground
		if err := jobs.Delete(ctx, "hello", metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil {
			t.Fatal(err)
		}
		// The garbage collector deletes the orphaned Pod (at once: it is on no node).
		err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true,
			func(ctx context.Context) (bool, error) {
				items, _, err := podList(ctx)
				return err == nil && len(items) == 0, err
			})
		if err != nil {
			t.Fatalf("the job's pod was not garbage-collected: %v", err)
		}
	})

	t.Run("pod security admission", func(t *testing.T) {
		restricted, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: "sykli-restricted", Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}},
			metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		privileged := func() *corev1.Pod {
			yes := true
			return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "privileged"}, Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "main", Image: "busybox",
					SecurityContext: &corev1.SecurityContext{Privileged: &yes}}}}}
		}
		// The same Pod is admitted where no policy is enforced: the refusal below is the
		// policy's, not --allow-privileged's.
		if _, err := cs.CoreV1().Pods(ns.Name).Create(ctx, privileged(), metav1.CreateOptions{}); err != nil {
			t.Fatalf("privileged pod in an unlabelled namespace: %v", err)
		}
		_, err = cs.CoreV1().Pods(restricted.Name).Create(ctx, privileged(), metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "violates PodSecurity") {
			t.Fatalf("privileged pod in a restricted namespace: got %v, want Forbidden: violates PodSecurity", err)
		}
		t.Logf("refused as expected: %v", err)
	})
}

// TestUpCommand runs 'up' as a program: one JSON line on stdout, a working cluster, and
// exit 0 with every component gone once stdin closes.
func TestUpCommand(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command(exe, "up", "--dir", dir, "--etcd-unsafe-no-fsync")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})

	var first string
	select {
	case line, ok := <-lines:
		if !ok {
			t.Fatalf("up ended without a line on stdout: %v\nstderr:\n%s", cmd.Wait(), stderr.String())
		}
		first = line
	case <-time.After(5 * time.Minute):
		t.Fatalf("no JSON line within 5 minutes\nstderr:\n%s", stderr.String())
	}
	var got struct {
		Kubeconfig string   `json:"kubeconfig"`
		Server     string   `json:"server"`
		CA         string   `json:"ca"`
		Etcd       string   `json:"etcd"`
		Nodes      []string `json:"nodes"`
	}
	dec := json.NewDecoder(strings.NewReader(first))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("stdout line %q: %v", first, err)
	}
	if got.Kubeconfig != dir+"/kubeconfig" || got.CA != dir+"/pki/ca.crt" || !strings.HasPrefix(got.Server, "https://127.0.0.1:") ||
		!strings.HasPrefix(got.Etcd, "http://127.0.0.1:") || got.Nodes == nil || len(got.Nodes) != 0 {
		t.Fatalf("unexpected %+v", got)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", got.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != got.Server {
		t.Errorf("kubeconfig server %s, JSON says %s", cfg.Host, got.Server)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server version %s", v.GitVersion)

	// Close stdin: up stops everything and exits 0.
	extra := make(chan []string, 1)
	go func() {
		var more []string
		for l := range lines { // to EOF: Wait only after every read
			more = append(more, l)
		}
		extra <- more
		exited <- cmd.Wait()
	}()
	_ = stdin.Close()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("up after stdin closed: %v\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("up still running 90 s after stdin closed\nstderr:\n%s", stderr.String())
	}
	if more := <-extra; len(more) > 0 {
		t.Errorf("stdout had more than the JSON line: %q", more)
	}
	u, _ := url.Parse(got.Server)
	if conn, err := net.DialTimeout("tcp", u.Host, time.Second); err == nil {
		conn.Close()
		t.Errorf("the API server still listens at %s after up exited", u.Host)
	}
	if !strings.Contains(stderr.String(), "sykli-kube: stopped") {
		t.Errorf("stderr lacks the stop line:\n%s", stderr.String())
	}
}

// TestComponentFailureReported: a component that cannot start makes up exit non-zero
// at once, with the component's log tail on stderr.
func TestComponentFailureReported(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "up", "--dir", t.TempDir(), "--etcd-unsafe-no-fsync", "--timeout=60s",
		"--apiserver-arg=--no-such-flag")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Stdin = strings.NewReader("")
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatalf("up did not give up within 2 minutes\nstderr:\n%s", stderr.String())
	}
	if err == nil {
		t.Fatalf("up succeeded with a bad kube-apiserver flag\nstderr:\n%s", stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout: %q, want nothing", stdout.String())
	}
	for _, want := range []string{"kube-apiserver exited before it was healthy", "unknown flag: --no-such-flag"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}
