package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"
)

// podRunner finds the sykli-pod-runner binary: $SYKLI_POD_RUNNER, else the cargo target
// dir's debug build (scripts/test builds it before go test).
func podRunner(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("SYKLI_POD_RUNNER")}
	if d := os.Getenv("CARGO_TARGET_DIR"); d != "" {
		candidates = append(candidates, filepath.Join(d, "debug", "sykli-pod-runner"))
	}
	if h, err := os.UserHomeDir(); err == nil {
		candidates = append(candidates, filepath.Join(h, ".cache", "sykli", "cargo-target", "debug", "sykli-pod-runner"))
	}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			return c
		}
	}
	t.Fatalf("no sykli-pod-runner (looked at %q): build it with cargo build -p sykli_testkit --bin sykli-pod-runner, or set SYKLI_POD_RUNNER", candidates)
	return ""
}

type nodeCluster struct {
	c      *Cluster
	cs     *kubernetes.Clientset
	config *rest.Config
	ns     string
}

func startNodeCluster(t *testing.T) *nodeCluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{Dir: t.TempDir(), EtcdNoFsync: true, Progress: &testLog{t: t},
		Nodes: 2, NodeRunner: podRunner(t),
		NodeTaints: []string{"1:dedicated=gpu:NoSchedule"},
		NodeLabels: []string{"1:example.com/pool=gpu"},
		NodeArgs:   []string{"--deny-image=registry.invalid/*", "--image-pull-backoff=300ms", "--retry=200ms"}})
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
	ns := "node-test"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	n := &nodeCluster{c: c, cs: cs, config: cfg, ns: ns}
	// Pods need the namespace's default service account (the service-account controller).
	waitDefaultServiceAccount(ctx, t, cs, ns)
	return n
}

// waitPod watches pod name until cond holds.
func (n *nodeCluster) waitPod(ctx context.Context, t *testing.T, name, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	pods := n.cs.CoreV1().Pods(n.ns)
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	return waitFor(ctx, t, "pod "+name+": "+what,
		func(ctx context.Context) ([]corev1.Pod, string, error) {
			l, err := pods.List(ctx, metav1.ListOptions{FieldSelector: sel})
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.ResourceVersion, nil
		},
		func(ctx context.Context, rv string) (watch.Interface, error) {
			return pods.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv})
		},
		func(ev watch.EventType, p *corev1.Pod) bool { return ev != watch.Deleted && cond(p) })
}

func (n *nodeCluster) createPod(ctx context.Context, t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	if pod.Spec.RestartPolicy == "" {
		pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	}
	p, err := n.cs.CoreV1().Pods(n.ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s: %v", pod.Name, err)
	}
	return p
}

func done(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

func waitingReason(p *corev1.Pod, container string) string {
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if s.Name == container && s.State.Waiting != nil {
			return s.State.Waiting.Reason
		}
	}
	return ""
}

func status(p *corev1.Pod, container string) *corev1.ContainerStatus {
	for _, s := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if s.Name == container {
			return &s
		}
	}
	return nil
}

func sh(name, script string) corev1.Container {
	return corev1.Container{Name: name, Image: "busybox", Command: []string{"sh", "-c", script}}
}

// exec runs a command in a container through the API server's pods/exec, as kubectl exec.
func (n *nodeCluster) exec(ctx context.Context, pod, container string, cmd []string, stdin string) (string, string, error) {
	return n.execWith(ctx, pod, container, cmd, stdin, false)
}

func (n *nodeCluster) execWith(ctx context.Context, pod, container string, cmd []string, stdin string, tty bool) (string, string, error) {
	req := n.cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(n.ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdin: stdin != "", Stdout: true,
			Stderr: !tty, TTY: tty}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(n.config, "POST", req.URL())
	if err != nil {
		return "", "", err
	}
	var out, errOut bytes.Buffer
	opts := remotecommand.StreamOptions{Stdout: &out, Tty: tty}
	if !tty {
		opts.Stderr = &errOut
	}
	if stdin != "" {
		opts.Stdin = strings.NewReader(stdin)
	}
	err = ex.StreamWithContext(ctx, opts)
	return out.String(), errOut.String(), err
}

func TestNode(t *testing.T) {
	n := startNodeCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pods := n.cs.CoreV1().Pods(n.ns)

	t.Run("nodes registered with labels, taints, capacity and leases", func(t *testing.T) {
		if len(n.c.NodeNames) != 2 {
			t.Fatalf("nodes %v, want 2", n.c.NodeNames)
		}
		for i, name := range n.c.NodeNames {
			node, err := n.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if node.Labels["kubernetes.io/hostname"] != name || node.Labels["sykli.dev/node-index"] != []string{"0", "1"}[i] {
				t.Errorf("node %s labels %v", name, node.Labels)
			}
			if q := node.Status.Allocatable[corev1.ResourceCPU]; q.Cmp(resource.MustParse("4")) != 0 {
				t.Errorf("node %s allocatable cpu %s, want 4", name, q.String())
			}
			if node.Status.DaemonEndpoints.KubeletEndpoint.Port == 0 {
				t.Errorf("node %s has no kubelet port", name)
			}
			lease, err := n.cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("lease of %s: %v", name, err)
			}
			if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != name || lease.Spec.RenewTime == nil {
				t.Errorf("lease of %s: %+v", name, lease.Spec)
			}
		}
		gpu, _ := n.cs.CoreV1().Nodes().Get(ctx, n.c.NodeNames[1], metav1.GetOptions{})
		if len(gpu.Spec.Taints) != 1 || gpu.Spec.Taints[0].Key != "dedicated" || gpu.Labels["example.com/pool"] != "gpu" {
			t.Errorf("node 1: taints %v labels %v", gpu.Spec.Taints, gpu.Labels)
		}
	})

	t.Run("a job runs: init then main, env from a secret, a config map volume, status, logs", func(t *testing.T) {
		if _, err := n.cs.CoreV1().Secrets(n.ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds"},
			Data: map[string][]byte{"token": []byte("s3cr3t")}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := n.cs.CoreV1().ConfigMaps(n.ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "settings"},
			Data: map[string]string{"mode": "fast"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		init := sh("prepare", `echo prepared > /work/ready; echo init-ran`)
		main := sh("main", `cat /work/ready; cat /cfg/mode; echo; [ "$TOKEN" = s3cr3t ] && echo token-ok; echo bye > /dev/termination-log`)
		main.Env = []corev1.EnvVar{{Name: "TOKEN", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "token"}}}}
		mounts := []corev1.VolumeMount{{Name: "work", MountPath: "/work"}}
		init.VolumeMounts = mounts
		main.VolumeMounts = append(mounts, corev1.VolumeMount{Name: "cfg", MountPath: "/cfg"})
		jobs := n.cs.BatchV1().Jobs(n.ns)
		backoff := int32(0)
		_, err := jobs.Create(ctx, &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "hello"},
			Spec: batchv1.JobSpec{BackoffLimit: &backoff, Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy:  corev1.RestartPolicyNever,
				InitContainers: []corev1.Container{init},
				Containers:     []corev1.Container{main},
				Volumes: []corev1.Volume{
					{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: "settings"}}}},
				}}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sel := batchv1.JobNameLabel + "=hello"
		var podName string
		for podName == "" {
			l, err := pods.List(ctx, metav1.ListOptions{LabelSelector: sel})
			if err != nil {
				t.Fatal(err)
			}
			if len(l.Items) > 0 {
				podName = l.Items[0].Name
				break
			}
			w, err := pods.Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: l.ResourceVersion})
			if err != nil {
				t.Fatal(err)
			}
			for ev := range w.ResultChan() {
				if p, ok := ev.Object.(*corev1.Pod); ok {
					podName = p.Name
					break
				}
			}
			w.Stop()
		}
		pod := n.waitPod(ctx, t, podName, "Succeeded", done)
		if pod.Status.Phase != corev1.PodSucceeded {
			t.Fatalf("phase %s: %+v", pod.Status.Phase, pod.Status)
		}
		if pod.Spec.NodeName != n.c.NodeNames[0] {
			t.Errorf("ran on %s; the other node is tainted", pod.Spec.NodeName)
		}
		is := status(pod, "prepare")
		ms := status(pod, "main")
		if is == nil || is.State.Terminated == nil || is.State.Terminated.Reason != "Completed" || is.State.Terminated.ExitCode != 0 {
			t.Errorf("init status %+v", is)
		}
		if ms == nil || ms.State.Terminated == nil || ms.State.Terminated.Message != "bye\n" ||
			ms.State.Terminated.StartedAt.Before(&is.State.Terminated.FinishedAt) {
			t.Errorf("main status %+v (init finished %v)", ms, is.State.Terminated.FinishedAt)
		}
		conds := map[corev1.PodConditionType]corev1.PodCondition{}
		for _, c := range pod.Status.Conditions {
			conds[c.Type] = c
		}
		if conds[corev1.PodInitialized].Status != corev1.ConditionTrue || conds[corev1.PodReady].Reason != "PodCompleted" {
			t.Errorf("conditions %+v", pod.Status.Conditions)
		}
		logs, err := pods.GetLogs(podName, &corev1.PodLogOptions{Container: "main"}).DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(logs) != "prepared\nfast\ntoken-ok\n" {
			t.Errorf("main's log %q", logs)
		}
		stamped, err := pods.GetLogs(podName, &corev1.PodLogOptions{Container: "prepare", Timestamps: true}).DoRaw(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ts, line, _ := strings.Cut(strings.TrimSpace(string(stamped)), " ")
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || line != "init-ran" {
			t.Errorf("timestamped log %q", stamped)
		}
		job := waitJob(ctx, t, n.cs, n.ns, "hello")
		if job.Status.Succeeded != 1 {
			t.Errorf("job status %+v", job.Status)
		}
	})

	t.Run("a failing container: Error, its exit code, the pod Failed", func(t *testing.T) {
		n.createPod(ctx, t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "fails"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{sh("main", "echo oops >&2; exit 3")}}})
		pod := n.waitPod(ctx, t, "fails", "over", done)
		s := status(pod, "main")
		if pod.Status.Phase != corev1.PodFailed || s.State.Terminated == nil || s.State.Terminated.ExitCode != 3 ||
			s.State.Terminated.Reason != "Error" {
			t.Errorf("phase %s, status %+v", pod.Status.Phase, s)
		}
	})

	t.Run("an image that cannot be pulled: ErrImagePull then ImagePullBackOff", func(t *testing.T) {
		n.createPod(ctx, t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "no-image"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "registry.invalid/nothing:1"}}}})
		p := n.waitPod(ctx, t, "no-image", "ErrImagePull", func(p *corev1.Pod) bool { return waitingReason(p, "main") == "ErrImagePull" })
		if !strings.Contains(status(p, "main").State.Waiting.Message, "registry.invalid/nothing:1") {
			t.Errorf("message %q", status(p, "main").State.Waiting.Message)
		}
		n.waitPod(ctx, t, "no-image", "ImagePullBackOff", func(p *corev1.Pod) bool { return waitingReason(p, "main") == "ImagePullBackOff" })
		if p.Status.Phase != corev1.PodPending {
			t.Errorf("phase %s, want Pending", p.Status.Phase)
		}
	})

	t.Run("a missing secret: CreateContainerConfigError until it exists", func(t *testing.T) {
		c := sh("main", `echo "$V"`)
		c.Env = []corev1.EnvVar{{Name: "V", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "later"}, Key: "v"}}}}
		n.createPod(ctx, t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "waits"}, Spec: corev1.PodSpec{Containers: []corev1.Container{c}}})
		p := n.waitPod(ctx, t, "waits", "CreateContainerConfigError", func(p *corev1.Pod) bool {
			return waitingReason(p, "main") == "CreateContainerConfigError"
		})
		if m := status(p, "main").State.Waiting.Message; m != `secret "later" not found` {
			t.Errorf("message %q", m)
		}
		if _, err := n.cs.CoreV1().Secrets(n.ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "later"},
			Data: map[string][]byte{"v": []byte("arrived")}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		p = n.waitPod(ctx, t, "waits", "over", done)
		logs, _ := pods.GetLogs("waits", &corev1.PodLogOptions{}).DoRaw(ctx)
		if p.Status.Phase != corev1.PodSucceeded || string(logs) != "arrived\n" {
			t.Errorf("phase %s, log %q", p.Status.Phase, logs)
		}
	})

	t.Run("logs follow and exec: stdin, stdout, stderr, exit code", func(t *testing.T) {
		c := sh("main", `echo one; while [ ! -e /shared/go ]; do sleep 0.05; done; echo two`)
		c.VolumeMounts = []corev1.VolumeMount{{Name: "shared", MountPath: "/shared"}}
		n.createPod(ctx, t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "live"}, Spec: corev1.PodSpec{
			Containers: []corev1.Container{c},
			Volumes:    []corev1.Volume{{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}}})
		n.waitPod(ctx, t, "live", "running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		stream, err := pods.GetLogs("live", &corev1.PodLogOptions{Follow: true}).Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		r := bufio.NewReader(stream)
		if l, err := r.ReadString('\n'); err != nil || l != "one\n" {
			t.Fatalf("first followed line %q, %v", l, err)
		}

		out, errOut, err := n.exec(ctx, "live", "main", []string{"sh", "-c", "cat; echo to-stderr >&2; exit 7"}, "from stdin\n")
		var code utilexec.CodeExitError
		if !errors.As(err, &code) || code.Code != 7 || out != "from stdin\n" || errOut != "to-stderr\n" {
			t.Errorf("exec: out %q err %q, %v", out, errOut, err)
		}
		// kubectl exec -t: the command's stdin and stdout are a terminal.
		out, _, err = n.execWith(ctx, "live", "main", []string{"sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty"}, "", true)
		if err != nil || strings.TrimSpace(out) != "on-a-tty" {
			t.Errorf("exec -t: %q, %v", out, err)
		}
		if _, _, err := n.exec(ctx, "live", "main", []string{"touch", "/shared/go"}, ""); err != nil {
			t.Fatalf("exec touch: %v", err)
		}
		rest, err := io.ReadAll(r)
		if err != nil || string(rest) != "two\n" {
			t.Errorf("the rest of the followed log %q, %v", rest, err)
		}
		n.waitPod(ctx, t, "live", "over", done)
		// A container that has stopped takes no command.
		if _, _, err := n.exec(ctx, "live", "main", []string{"true"}, ""); err == nil || !strings.Contains(err.Error(), "not running") {
			t.Errorf("exec into a stopped container: %v", err)
		}
	})

	t.Run("the service account's projected token", func(t *testing.T) {
		n.createPod(ctx, t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sa"}, Spec: corev1.PodSpec{Containers: []corev1.Container{
			sh("main", `d=/var/run/secrets/kubernetes.io/serviceaccount; cat $d/namespace; echo; cat $d/token`)}}})
		p := n.waitPod(ctx, t, "sa", "over", done)
		logs, _ := pods.GetLogs("sa", &corev1.PodLogOptions{}).DoRaw(ctx)
		ns, token, _ := strings.Cut(string(logs), "\n")
		if p.Status.Phase != corev1.PodSucceeded || ns != n.ns || token == "" {
			t.Fatalf("phase %s, log %q", p.Status.Phase, logs)
		}
		review, err := n.cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: strings.TrimSpace(token)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !review.Status.Authenticated || review.Status.User.Username != "system:serviceaccount:"+n.ns+":default" {
			t.Errorf("token review %+v", review.Status)
		}
	})

	t.Run("a claim bound to a hostPath volume by the real binder", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		_, err := n.cs.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "shared-pv"},
			Spec: corev1.PersistentVolumeSpec{Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
				AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
				PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir}}}},
			metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		empty := ""
		_, err = n.cs.CoreV1().PersistentVolumeClaims(n.ns).Create(ctx, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "shared"},
			Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: &empty, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany},
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}}},
			metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c := sh("main", `echo written > /data/out`)
		c.VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
		n.createPod(ctx, t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "claims"}, Spec: corev1.PodSpec{Containers: []corev1.Container{c},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "shared"}}}}}})
		p := n.waitPod(ctx, t, "claims", "over", done)
		got, err := os.ReadFile(filepath.Join(dir, "out"))
		if p.Status.Phase != corev1.PodSucceeded || string(got) != "written\n" {
			t.Errorf("phase %s, host file %q (%v)", p.Status.Phase, got, err)
		}
	})

	t.Run("a deleted pod gets SIGTERM and its grace period, then is gone", func(t *testing.T) {
		// A grace period far longer than the test: the pod goes as soon as its container
		// has stopped, as a kubelet deletes it then.
		grace := int64(600)
		c := sh("main", `trap 'echo got-term; exit 3' TERM; echo waiting; while true; do sleep 0.05; done`)
		n.createPod(ctx, t, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "stops"}, Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace, Containers: []corev1.Container{c}}})
		n.waitPod(ctx, t, "stops", "running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		// Follow the log from the start, so that the trap's line is seen before the pod goes.
		stream, err := pods.GetLogs("stops", &corev1.PodLogOptions{Follow: true}).Stream(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer stream.Close()
		r := bufio.NewReader(stream)
		if l, _ := r.ReadString('\n'); l != "waiting\n" {
			t.Fatalf("first line %q", l)
		}
		if err := pods.Delete(ctx, "stops", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(r)
		if string(rest) != "got-term\n" {
			t.Errorf("after the delete the log said %q", rest)
		}
		n.waitGone(ctx, t, "stops")
	})
}

// waitGone watches pod name until it is deleted.
func (n *nodeCluster) waitGone(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	pods := n.cs.CoreV1().Pods(n.ns)
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	for {
		l, err := pods.List(ctx, metav1.ListOptions{FieldSelector: sel})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Items) == 0 {
			return
		}
		w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: l.ResourceVersion})
		if err != nil {
			t.Fatal(err)
		}
		for ev := range w.ResultChan() {
			if ev.Type == watch.Deleted {
				w.Stop()
				return
			}
		}
		w.Stop()
		if ctx.Err() != nil {
			t.Fatalf("pod %s not gone before the deadline", name)
		}
	}
}

// waitJob watches a Job until it is Complete or Failed.
func waitJob(ctx context.Context, t *testing.T, cs *kubernetes.Clientset, ns, name string) *batchv1.Job {
	t.Helper()
	jobs := cs.BatchV1().Jobs(ns)
	sel := fields.OneTermEqualSelector("metadata.name", name).String()
	return waitFor(ctx, t, "job "+name+" finished",
		func(ctx context.Context) ([]batchv1.Job, string, error) {
			l, err := jobs.List(ctx, metav1.ListOptions{FieldSelector: sel})
			if err != nil {
				return nil, "", err
			}
			return l.Items, l.ResourceVersion, nil
		},
		func(ctx context.Context, rv string) (watch.Interface, error) {
			return jobs.Watch(ctx, metav1.ListOptions{FieldSelector: sel, ResourceVersion: rv})
		},
		func(_ watch.EventType, j *batchv1.Job) bool {
			for _, c := range j.Status.Conditions {
				if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
					return true
				}
			}
			return false
		})
}
