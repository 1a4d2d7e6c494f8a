package main

// The node's provider: each pod bound to the node runs as one sykli-pod-runner process
// (`--events`), whose JSON lines become the pod's status as a kubelet writes it. Before the
// runner starts, the provider does what a kubelet does before it creates containers: it
// "pulls" the images (a denied image waits in ErrImagePull/ImagePullBackOff), and it waits
// for the Secrets, ConfigMaps and claims the pod uses (CreateContainerConfigError,
// FailedMount), then hands their data, the claims' host directories and the projected
// service-account tokens (TokenRequest, bound to the pod) to the runner as its fixtures.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

type provider struct {
	o        NodeOptions
	client   kubernetes.Interface
	recorder record.EventRecorder

	mu     sync.Mutex
	pods   map[string]*podRun // namespace/name
	notify func(*corev1.Pod)
}

func newProvider(o NodeOptions, client kubernetes.Interface, recorder record.EventRecorder) *provider {
	return &provider{o: o, client: client, recorder: recorder, pods: map[string]*podRun{}, notify: func(*corev1.Pod) {}}
}

func podKey(namespace, name string) string { return namespace + "/" + name }

// NotifyPods registers the callback the pod controller copies statuses from.
func (p *provider) NotifyPods(_ context.Context, cb func(*corev1.Pod)) {
	p.mu.Lock()
	p.notify = cb
	p.mu.Unlock()
}

func (p *provider) lookup(namespace, name string) *podRun {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[podKey(namespace, name)]
}

func (p *provider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	key := podKey(pod.Namespace, pod.Name)
	p.mu.Lock()
	if old, ok := p.pods[key]; ok && old.uid() == pod.UID {
		p.mu.Unlock()
		return nil
	}
	pr := newPodRun(p, pod)
	p.pods[key] = pr
	p.mu.Unlock()
	go pr.run()
	return nil
}

// UpdatePod: a running pod's spec changes only where a kubelet acts on nothing of ours
// (labels, annotations, activeDeadlineSeconds tightening is not followed). The conditions
// others own (the API server's DisruptionTarget on an eviction, readiness gates) are kept,
// as the kubelet's status manager keeps them: the status this node writes replaces the
// whole status.
func (p *provider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	if pr := p.lookup(pod.Namespace, pod.Name); pr != nil && pr.uid() == pod.UID {
		pr.adoptConditions(pod)
	}
	return nil
}

func (p *provider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	pr := p.lookup(pod.Namespace, pod.Name)
	if pr == nil || pr.uid() != pod.UID {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	pr.adoptConditions(pod)
	pr.delete()
	return nil
}

// kubeletConditions are the pod conditions a kubelet writes; the others are kept from the
// API server's copy of the pod.
var kubeletConditions = map[corev1.PodConditionType]bool{
	corev1.PodReadyToStartContainers: true,
	corev1.PodInitialized:            true,
	corev1.ContainersReady:           true,
	corev1.PodReady:                  true,
}

// adoptConditions copies the conditions of the API's pod that the kubelet does not own.
func (pr *podRun) adoptConditions(from *corev1.Pod) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.pod.Status.Conditions = mergeConditions(pr.pod.Status.Conditions, from.Status.Conditions)
}

// mergeConditions is ours with every condition of theirs that a kubelet does not own set
// (replaced where ours has that type, added where not).
func mergeConditions(ours, theirs []corev1.PodCondition) []corev1.PodCondition {
	out := append([]corev1.PodCondition(nil), ours...)
next:
	for _, c := range theirs {
		if kubeletConditions[c.Type] {
			continue
		}
		for i := range out {
			if out[i].Type == c.Type {
				out[i] = c
				continue next
			}
		}
		out = append(out, c)
	}
	return out
}

func (p *provider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	pr := p.lookup(namespace, name)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	return pr.snapshot(), nil
}

func (p *provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *provider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	runs := make([]*podRun, 0, len(p.pods))
	for _, pr := range p.pods {
		runs = append(runs, pr)
	}
	p.mu.Unlock()
	out := make([]*corev1.Pod, 0, len(runs))
	for _, pr := range runs {
		out = append(out, pr.snapshot())
	}
	return out, nil
}

// stopAll stops every pod's runner (the node is going away) and waits for them.
func (p *provider) stopAll() {
	if p == nil {
		return
	}
	p.mu.Lock()
	runs := make([]*podRun, 0, len(p.pods))
	for _, pr := range p.pods {
		runs = append(runs, pr)
	}
	p.mu.Unlock()
	for _, pr := range runs {
		pr.delete()
	}
	for _, pr := range runs {
		<-pr.done
	}
}

// container is what the node knows of one container of a pod.
type container struct {
	name    string
	image   string
	init    bool
	sidecar bool // an init container with restartPolicy Always
	state   corev1.ContainerState
	logs    *logBuffer
}

func (c *container) terminated() bool { return c.state.Terminated != nil }
func (c *container) running() bool    { return c.state.Running != nil }

// podRun is one pod on the node.
type podRun struct {
	p   *provider
	dir string

	mu         sync.Mutex
	pod        *corev1.Pod // the spec as bound, with the status the node writes
	containers []*container
	deleting   bool
	runner     *exec.Cmd
	ctx        context.Context
	cancel     context.CancelFunc
	done       chan struct{} // closed once the pod's status is final
}

func newPodRun(p *provider, pod *corev1.Pod) *podRun {
	pod = pod.DeepCopy()
	ctx, cancel := context.WithCancel(context.Background())
	pr := &podRun{p: p, pod: pod, dir: filepath.Join(p.o.Dir, "pods", string(pod.UID)), ctx: ctx, cancel: cancel,
		done: make(chan struct{})}
	for _, c := range pod.Spec.InitContainers {
		sidecar := c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
		pr.containers = append(pr.containers, &container{name: c.Name, image: c.Image, init: true, sidecar: sidecar,
			logs: newLogBuffer()})
	}
	for _, c := range pod.Spec.Containers {
		pr.containers = append(pr.containers, &container{name: c.Name, image: c.Image, logs: newLogBuffer()})
	}
	for _, c := range pr.containers {
		reason := "ContainerCreating"
		if len(pod.Spec.InitContainers) > 0 {
			reason = "PodInitializing"
		}
		c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}
	}
	now := metav1.Now()
	pod.Status.Phase = corev1.PodPending
	pod.Status.HostIP = "127.0.0.1"
	pod.Status.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	pod.Status.StartTime = &now
	return pr
}

func (pr *podRun) uid() types.UID { return pr.pod.UID }

func (pr *podRun) container(name string) *container {
	for _, c := range pr.containers {
		if c.name == name {
			return c
		}
	}
	return nil
}

// snapshot is the pod with its current status (pr.mu not held).
func (pr *podRun) snapshot() *corev1.Pod {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.renderLocked()
}

// update changes the node's view under the lock, renders the status and hands it to the
// pod controller (which writes it with an UpdateStatus).
func (pr *podRun) update(f func()) {
	pr.mu.Lock()
	f()
	pod := pr.renderLocked()
	pr.mu.Unlock()
	pr.p.mu.Lock()
	notify := pr.p.notify
	pr.p.mu.Unlock()
	notify(pod)
}

func (pr *podRun) event(eventType, reason, format string, args ...any) {
	pr.p.recorder.Eventf(pr.pod, eventType, reason, format, args...)
}

func (pr *podRun) containerEvent(c *container, eventType, reason, format string, args ...any) {
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pr.pod.Namespace, Name: pr.pod.Name,
		UID: pr.pod.UID, FieldPath: pr.fieldPath(c)}
	pr.p.recorder.Eventf(ref, eventType, reason, format, args...)
}

func (pr *podRun) fieldPath(c *container) string {
	if c.init {
		return "spec.initContainers{" + c.name + "}"
	}
	return "spec.containers{" + c.name + "}"
}

// run is the pod's whole life on the node.
func (pr *podRun) run() {
	defer close(pr.done)
	pr.update(func() {})
	if !pr.pullImages() || !pr.startRunner() {
		pr.finishUnstarted()
	}
	pr.cleanupWhenDeleted()
}

// pullImages stands in for the image pulls: an image matching a --deny-image glob fails as
// a registry without it does, ErrImagePull then ImagePullBackOff, retried with a doubling
// back-off until the pod is deleted. False when the pod was deleted meanwhile.
func (pr *podRun) pullImages() bool {
	for _, c := range pr.containers {
		denied := false
		for _, g := range pr.p.o.DenyImages {
			if ok, _ := path.Match(g, c.image); ok {
				denied = true
			}
		}
		if !denied {
			pr.containerEvent(c, corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine", c.image)
			continue
		}
		backoff := pr.p.o.Backoff
		for {
			msg := fmt.Sprintf("rpc error: code = NotFound desc = failed to pull and unpack image %q: failed to resolve reference %q: %s: not found", c.image, c.image, c.image)
			pr.containerEvent(c, corev1.EventTypeNormal, "Pulling", "Pulling image %q", c.image)
			pr.containerEvent(c, corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %s", c.image, msg)
			pr.containerEvent(c, corev1.EventTypeWarning, "Failed", "Error: ErrImagePull")
			pr.update(func() {
				c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: msg}}
			})
			if !pr.wait(backoff) {
				return false
			}
			pr.containerEvent(c, corev1.EventTypeNormal, "BackOff", "Back-off pulling image %q", c.image)
			pr.containerEvent(c, corev1.EventTypeWarning, "Failed", "Error: ImagePullBackOff")
			pr.update(func() {
				c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff",
					Message: fmt.Sprintf("Back-off pulling image %q: ErrImagePull: %s", c.image, msg)}}
			})
			if !pr.wait(backoff) {
				return false
			}
			if backoff < 5*pr.p.o.Backoff {
				backoff *= 2
			}
		}
	}
	return true
}

// wait waits d; false when the pod is being deleted.
func (pr *podRun) wait(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-pr.ctx.Done():
		return false
	}
}

// fixtures is the runner's fixtures file.
type fixtures struct {
	Secrets              map[string]map[string]string `json:"secrets"`
	ConfigMaps           map[string]map[string]string `json:"configMaps"`
	PVCs                 map[string]string            `json:"pvcs"`
	ServiceAccountTokens map[string]string            `json:"serviceAccountTokens"`
}

// problem is why a pod cannot start yet.
type problem struct {
	container string // a container's env: CreateContainerConfigError
	volume    string // a volume: FailedMount
	message   string
}

// resolve gathers what the pod refers to, or the problems that keep it waiting.
func (pr *podRun) resolve(ctx context.Context) (*fixtures, []problem, error) {
	pod := pr.pod
	ns := pod.Namespace
	f := &fixtures{Secrets: map[string]map[string]string{}, ConfigMaps: map[string]map[string]string{},
		PVCs: map[string]string{}, ServiceAccountTokens: map[string]string{}}
	var problems []problem
	getSecret := cachedGet(func(name string) (*corev1.Secret, error) {
		s, err := pr.p.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			data := map[string]string{}
			for k, v := range s.Data {
				data[k] = base64.StdEncoding.EncodeToString(v)
			}
			f.Secrets[name] = data
		}
		return s, err
	})
	getCM := cachedGet(func(name string) (*corev1.ConfigMap, error) {
		c, err := pr.p.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			data := map[string]string{}
			for k, v := range c.Data {
				data[k] = v
			}
			for k, v := range c.BinaryData {
				data[k] = string(v)
			}
			f.ConfigMaps[name] = data
		}
		return c, err
	})
	optional := func(b *bool) bool { return b != nil && *b }

	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		var msgs []string
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				s, err := getSecret(e.SecretRef.Name)
				if err != nil {
					return nil, nil, err
				}
				if s == nil && !optional(e.SecretRef.Optional) {
					msgs = append(msgs, fmt.Sprintf("secret %q not found", e.SecretRef.Name))
				}
			}
			if e.ConfigMapRef != nil {
				cm, err := getCM(e.ConfigMapRef.Name)
				if err != nil {
					return nil, nil, err
				}
				if cm == nil && !optional(e.ConfigMapRef.Optional) {
					msgs = append(msgs, fmt.Sprintf("configmap %q not found", e.ConfigMapRef.Name))
				}
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				continue
			}
			if r := e.ValueFrom.SecretKeyRef; r != nil {
				s, err := getSecret(r.Name)
				if err != nil {
					return nil, nil, err
				}
				switch {
				case s == nil && !optional(r.Optional):
					msgs = append(msgs, fmt.Sprintf("secret %q not found", r.Name))
				case s != nil && s.Data[r.Key] == nil && !optional(r.Optional):
					msgs = append(msgs, fmt.Sprintf("couldn't find key %s in Secret %s/%s", r.Key, ns, r.Name))
				}
			}
			if r := e.ValueFrom.ConfigMapKeyRef; r != nil {
				cm, err := getCM(r.Name)
				if err != nil {
					return nil, nil, err
				}
				if cm == nil && !optional(r.Optional) {
					msgs = append(msgs, fmt.Sprintf("configmap %q not found", r.Name))
				} else if cm != nil && !optional(r.Optional) {
					if _, ok := cm.Data[r.Key]; !ok {
						if _, ok := cm.BinaryData[r.Key]; !ok {
							msgs = append(msgs, fmt.Sprintf("couldn't find key %s in ConfigMap %s/%s", r.Key, ns, r.Name))
						}
					}
				}
			}
		}
		if len(msgs) > 0 {
			problems = append(problems, problem{container: c.Name, message: msgs[0]})
		}
	}

	for _, v := range pod.Spec.Volumes {
		volProblem := func(format string, args ...any) {
			problems = append(problems, problem{volume: v.Name, message: fmt.Sprintf(format, args...)})
		}
		switch {
		case v.Secret != nil:
			s, err := getSecret(v.Secret.SecretName)
			if err != nil {
				return nil, nil, err
			}
			if s == nil && !optional(v.Secret.Optional) {
				volProblem("secret %q not found", v.Secret.SecretName)
			}
		case v.ConfigMap != nil:
			cm, err := getCM(v.ConfigMap.Name)
			if err != nil {
				return nil, nil, err
			}
			if cm == nil && !optional(v.ConfigMap.Optional) {
				volProblem("configmap %q not found", v.ConfigMap.Name)
			}
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				switch {
				case src.Secret != nil:
					s, err := getSecret(src.Secret.Name)
					if err != nil {
						return nil, nil, err
					}
					if s == nil && !optional(src.Secret.Optional) {
						volProblem("secret %q not found", src.Secret.Name)
					}
				case src.ConfigMap != nil:
					cm, err := getCM(src.ConfigMap.Name)
					if err != nil {
						return nil, nil, err
					}
					if cm == nil && !optional(src.ConfigMap.Optional) {
						volProblem("configmap %q not found", src.ConfigMap.Name)
					}
				case src.ServiceAccountToken != nil:
					token, err := pr.token(ctx, src.ServiceAccountToken)
					if err != nil {
						volProblem("failed to fetch token: %v", err)
						continue
					}
					f.ServiceAccountTokens[v.Name+"/"+src.ServiceAccountToken.Path] = token
				}
			}
		case v.PersistentVolumeClaim != nil:
			dir, msg, err := pr.claimDir(ctx, v.PersistentVolumeClaim.ClaimName)
			if err != nil {
				return nil, nil, err
			}
			if msg != "" {
				volProblem("%s", msg)
				continue
			}
			f.PVCs[v.PersistentVolumeClaim.ClaimName] = dir
		}
	}
	return f, problems, nil
}

// cachedGet reads each object once: nil (no error) for one that does not exist.
func cachedGet[T any](get func(name string) (*T, error)) func(string) (*T, error) {
	seen := map[string]*T{}
	return func(name string) (*T, error) {
		if o, ok := seen[name]; ok {
			return o, nil
		}
		o, err := get(name)
		if apierrors.IsNotFound(err) {
			o, err = nil, nil
		}
		if err != nil {
			return nil, err
		}
		seen[name] = o
		return o, nil
	}
}

// token asks the API server for a service-account token bound to the pod.
func (pr *podRun) token(ctx context.Context, src *corev1.ServiceAccountTokenProjection) (string, error) {
	sa := pr.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pr.pod.Name, UID: pr.pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := pr.p.client.CoreV1().ServiceAccounts(pr.pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

// claimDir is the host directory of a bound claim's PersistentVolume (local or hostPath),
// or why the claim cannot be mounted (yet).
func (pr *podRun) claimDir(ctx context.Context, claim string) (string, string, error) {
	pvc, err := pr.p.client.CoreV1().PersistentVolumeClaims(pr.pod.Namespace).Get(ctx, claim, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Sprintf("persistentvolumeclaim %q not found", claim), nil
	}
	if err != nil {
		return "", "", err
	}
	if pvc.Spec.VolumeName == "" || pvc.Status.Phase != corev1.ClaimBound {
		return "", fmt.Sprintf("persistentvolumeclaim %q is not bound", claim), nil
	}
	pv, err := pr.p.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Sprintf("persistentvolume %q not found", pvc.Spec.VolumeName), nil
	}
	if err != nil {
		return "", "", err
	}
	switch {
	case pv.Spec.Local != nil:
		return pv.Spec.Local.Path, "", nil
	case pv.Spec.HostPath != nil:
		return pv.Spec.HostPath.Path, "", nil
	}
	return "", fmt.Sprintf("persistentvolume %q: this node mounts only local and hostPath volumes", pv.Name), nil
}

// startRunner waits until the pod's references resolve, then runs it. False when the pod
// was deleted before the runner started.
func (pr *podRun) startRunner() bool {
	var reported string
	var fx *fixtures
	for {
		ctx, cancel := context.WithTimeout(pr.ctx, 30*time.Second)
		f, problems, err := pr.resolve(ctx)
		cancel()
		if err != nil {
			klog.ErrorS(err, "resolving the pod's references", "pod", klog.KObj(pr.pod))
		} else if len(problems) == 0 {
			fx = f
			break
		} else if key := fmt.Sprint(problems); key != reported {
			reported = key
			pr.update(func() {
				for _, p := range problems {
					if p.container == "" {
						continue
					}
					if c := pr.container(p.container); c != nil {
						c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
							Reason: "CreateContainerConfigError", Message: p.message}}
					}
				}
			})
			for _, p := range problems {
				if p.container != "" {
					pr.containerEvent(pr.container(p.container), corev1.EventTypeWarning, "Failed", "Error: %s", p.message)
				} else {
					pr.event(corev1.EventTypeWarning, "FailedMount", "MountVolume.SetUp failed for volume %q : %s", p.volume, p.message)
				}
			}
		}
		if !pr.wait(pr.p.o.Retry) {
			return false
		}
	}

	if err := os.MkdirAll(pr.dir, 0o700); err != nil {
		pr.fail("the node could not make the pod's directory: %v", err)
		return true
	}
	manifest := filepath.Join(pr.dir, "pod.json")
	fixturesFile := filepath.Join(pr.dir, "fixtures.json")
	podJSON, _ := json.Marshal(pr.pod)
	fxJSON, _ := json.Marshal(fx)
	if err := os.WriteFile(manifest, podJSON, 0o600); err != nil {
		pr.fail("writing %s: %v", manifest, err)
		return true
	}
	if err := os.WriteFile(fixturesFile, fxJSON, 0o600); err != nil {
		pr.fail("writing %s: %v", fixturesFile, err)
		return true
	}
	args := []string{"--manifest", manifest, "--fixtures", fixturesFile, "--work-dir", filepath.Join(pr.dir, "run"),
		"--events", "--timeout", pr.timeout()}
	cmd := exec.Command(pr.p.o.Runner, append(args, pr.p.o.RunnerArgs...)...)
	stderr, err := os.OpenFile(filepath.Join(pr.dir, "runner.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		pr.fail("%v", err)
		return true
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		pr.fail("%v", err)
		return true
	}
	pr.mu.Lock()
	if pr.deleting {
		pr.mu.Unlock()
		return false
	}
	if err := cmd.Start(); err != nil {
		pr.mu.Unlock()
		pr.fail("starting the pod runner: %v", err)
		return true
	}
	pr.runner = cmd
	pr.mu.Unlock()
	pr.update(func() {
		for _, c := range pr.containers {
			if c.state.Waiting != nil && c.state.Waiting.Reason == "CreateContainerConfigError" {
				c.state.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
			}
		}
	})
	sawResult := pr.follow(stdout)
	werr := cmd.Wait()
	if !sawResult {
		pr.fail("the pod runner ended without a result (%v); see %s", werr, filepath.Join(pr.dir, "runner.log"))
	}
	return true
}

// timeout is what is left of the pod's activeDeadlineSeconds (the runner's deadline), or a
// week: a Job's own deadline is the job controller's, which deletes the pod.
func (pr *podRun) timeout() string {
	if d := pr.pod.Spec.ActiveDeadlineSeconds; d != nil {
		left := time.Duration(*d)*time.Second - time.Since(pr.pod.Status.StartTime.Time)
		if left < time.Second {
			left = time.Second
		}
		return fmt.Sprintf("%.3f", left.Seconds())
	}
	return "604800"
}

type runnerEvent struct {
	Event              string          `json:"event"`
	Container          string          `json:"container"`
	At                 string          `json:"at"`
	Line               string          `json:"line"`
	ExitCode           int32           `json:"exitCode"`
	Reason             string          `json:"reason"`
	Message            *string         `json:"message"`
	TerminationMessage string          `json:"terminationMessage"`
	StartedAt          *string         `json:"startedAt"`
	FinishedAt         string          `json:"finishedAt"`
	Result             json.RawMessage `json:"result"`
}

type runnerResult struct {
	Phase   string  `json:"phase"`
	Reason  *string `json:"reason"`
	Message *string `json:"message"`
}

func parseTime(s string) metav1.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return metav1.Now()
	}
	return metav1.NewTime(t)
}

// follow turns the runner's events into the pod's status; true once the result came.
func (pr *podRun) follow(stdout interface{ Read([]byte) (int, error) }) bool {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	for sc.Scan() {
		var ev runnerEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			klog.ErrorS(err, "a line of the pod runner is not JSON", "pod", klog.KObj(pr.pod))
			continue
		}
		c := pr.container(ev.Container)
		switch ev.Event {
		case "log":
			if c != nil {
				c.logs.append(parseTime(ev.At).Time, ev.Line)
			}
		case "started":
			if c == nil {
				continue
			}
			pr.containerEvent(c, corev1.EventTypeNormal, "Created", "Created container: %s", c.name)
			pr.containerEvent(c, corev1.EventTypeNormal, "Started", "Started container %s", c.name)
			pr.update(func() {
				c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: parseTime(ev.At)}}
				for _, o := range pr.containers {
					if !o.init && o.state.Waiting != nil && o.state.Waiting.Reason == "PodInitializing" && pr.initializedLocked() {
						o.state.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
					}
				}
			})
		case "terminated":
			if c == nil {
				continue
			}
			t := &corev1.ContainerStateTerminated{ExitCode: ev.ExitCode, Reason: ev.Reason,
				Message: ev.TerminationMessage, FinishedAt: parseTime(ev.FinishedAt)}
			if ev.Message != nil && t.Message == "" {
				t.Message = *ev.Message
			}
			if ev.StartedAt != nil {
				t.StartedAt = parseTime(*ev.StartedAt)
			} else {
				t.StartedAt = t.FinishedAt
			}
			if ev.Reason == "CreateContainerConfigError" || ev.Reason == "StartError" {
				msg := t.Message
				pr.containerEvent(c, corev1.EventTypeWarning, "Failed", "Error: %s", msg)
			}
			c.logs.close()
			pr.update(func() { c.state = corev1.ContainerState{Terminated: t} })
		case "result":
			var r runnerResult
			_ = json.Unmarshal(ev.Result, &r)
			pr.update(func() {
				pr.pod.Status.Phase = corev1.PodFailed
				if r.Phase == "Succeeded" {
					pr.pod.Status.Phase = corev1.PodSucceeded
				}
				if r.Reason != nil && *r.Reason == "DeadlineExceeded" {
					pr.pod.Status.Reason = "DeadlineExceeded"
					pr.pod.Status.Message = "Pod was active on the node longer than the specified deadline"
				}
				pr.closeLocked("the pod ended before the container started")
			})
			return true
		}
	}
	return false
}

// fail ends the pod as Failed with the node's own reason (nothing was run).
func (pr *podRun) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	klog.ErrorS(nil, msg, "pod", klog.KObj(pr.pod))
	pr.event(corev1.EventTypeWarning, "FailedCreatePodSandBox", "%s", msg)
	pr.update(func() {
		pr.pod.Status.Phase = corev1.PodFailed
		pr.pod.Status.Reason = "NodeError"
		pr.pod.Status.Message = msg
		pr.closeLocked(msg)
	})
}

// finishUnstarted gives a pod deleted before its runner started a terminal status.
func (pr *podRun) finishUnstarted() {
	pr.update(func() {
		pr.pod.Status.Phase = corev1.PodFailed
		pr.closeLocked("the pod was deleted before the container started")
	})
}

// closeLocked marks every container not yet terminated as such (as the kubelet reports a
// container it never ran once the pod is over) and ends every log.
func (pr *podRun) closeLocked(why string) {
	now := metav1.Now()
	for _, c := range pr.containers {
		if !c.terminated() {
			started := now
			if c.state.Running != nil {
				started = c.state.Running.StartedAt
			}
			c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137,
				Reason: "ContainerStatusUnknown", Message: why, StartedAt: started, FinishedAt: now}}
		}
		c.logs.close()
	}
}

// delete stops the pod as the kubelet does for a deleted pod: the runner gets SIGTERM and
// gives its containers their grace period.
func (pr *podRun) delete() {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if !pr.deleting {
		pr.deleting = true
		for _, c := range pr.containers {
			if c.running() {
				pr.containerEvent(c, corev1.EventTypeNormal, "Killing", "Stopping container %s", c.name)
			}
		}
	}
	pr.cancel()
	if pr.runner != nil && pr.runner.Process != nil {
		_ = pr.runner.Process.Signal(syscall.SIGTERM)
	}
}

// cleanupWhenDeleted, once the pod is deleted and over, does what the kubelet's status
// manager does (its final status written, then the delete with grace period 0, which
// virtual-kubelet would otherwise leave until the grace period has passed), removes the
// pod's work dir and forgets it.
func (pr *podRun) cleanupWhenDeleted() {
	go func() {
		<-pr.ctx.Done()
		<-pr.done
		pr.finalDelete()
		_ = os.RemoveAll(pr.dir)
		pr.p.mu.Lock()
		if pr.p.pods[podKey(pr.pod.Namespace, pr.pod.Name)] == pr {
			delete(pr.p.pods, podKey(pr.pod.Namespace, pr.pod.Name))
		}
		pr.p.mu.Unlock()
	}()
}

func (pr *podRun) finalDelete() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods := pr.p.client.CoreV1().Pods(pr.pod.Namespace)
	final := pr.snapshot()
	for {
		cur, err := pods.Get(ctx, pr.pod.Name, metav1.GetOptions{})
		if err != nil || cur.UID != pr.pod.UID {
			return // gone already (or another pod of the same name)
		}
		if cur.Status.Phase == corev1.PodSucceeded || cur.Status.Phase == corev1.PodFailed {
			break
		}
		cur.Status = final.Status
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsConflict(err) {
			klog.ErrorS(err, "writing the final status of a deleted pod", "pod", klog.KObj(pr.pod))
			return
		}
	}
	zero := int64(0)
	uid := pr.pod.UID
	err := pods.Delete(ctx, pr.pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero,
		Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		klog.ErrorS(err, "deleting a stopped pod", "pod", klog.KObj(pr.pod))
	}
}

// initializedLocked: every init container (but sidecars, which need only be running) is done.
func (pr *podRun) initializedLocked() bool {
	for _, c := range pr.containers {
		if !c.init {
			continue
		}
		if c.sidecar {
			if !c.running() && !c.terminated() {
				return false
			}
		} else if c.state.Terminated == nil || c.state.Terminated.ExitCode != 0 {
			return false
		}
	}
	return true
}

// renderLocked is the pod with the status a kubelet would write for what the node knows.
func (pr *podRun) renderLocked() *corev1.Pod {
	pod := pr.pod.DeepCopy()
	st := &pod.Status
	st.InitContainerStatuses, st.ContainerStatuses = nil, nil
	allRunning, anyRunning, mainsDone := true, false, true
	var unready, uninit []string
	for _, c := range pr.containers {
		s := corev1.ContainerStatus{Name: c.name, Image: c.image, ImageID: "", State: *c.state.DeepCopy()}
		if c.state.Running != nil || c.state.Terminated != nil {
			s.ImageID = "sykli-pod-runner://" + c.image
			s.ContainerID = "sykli://" + string(pr.pod.UID) + "/" + c.name
		}
		started := c.running()
		s.Started = &started
		s.Ready = c.running()
		if c.init {
			if !c.sidecar && (c.state.Terminated == nil || c.state.Terminated.ExitCode != 0) ||
				c.sidecar && !c.running() && !c.terminated() {
				uninit = append(uninit, c.name)
			}
			st.InitContainerStatuses = append(st.InitContainerStatuses, s)
			continue
		}
		st.ContainerStatuses = append(st.ContainerStatuses, s)
		if !c.running() {
			allRunning = false
			unready = append(unready, c.name)
		} else {
			anyRunning = true
		}
		if !c.terminated() {
			mainsDone = false
		}
	}
	if st.Phase == corev1.PodPending && len(uninit) == 0 && (anyRunning || mainsDone && len(pr.containers) > 0 && pr.anyMainTerminated()) {
		st.Phase = corev1.PodRunning
	}
	now := metav1.Now()
	cond := func(t corev1.PodConditionType, ok bool, reason, message string) {
		status := corev1.ConditionFalse
		if ok {
			status, reason, message = corev1.ConditionTrue, "", ""
		}
		for i := range st.Conditions {
			if st.Conditions[i].Type == t {
				if st.Conditions[i].Status != status {
					st.Conditions[i].LastTransitionTime = now
				}
				st.Conditions[i].Status, st.Conditions[i].Reason, st.Conditions[i].Message = status, reason, message
				return
			}
		}
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: status, Reason: reason,
			Message: message, LastTransitionTime: now})
	}
	sandbox := pr.runner != nil
	cond(corev1.PodReadyToStartContainers, sandbox && st.Phase != corev1.PodSucceeded && st.Phase != corev1.PodFailed, "", "")
	if st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed {
		cond(corev1.PodInitialized, len(uninit) == 0, "PodCompleted", "")
		cond(corev1.ContainersReady, false, "PodCompleted", "")
		cond(corev1.PodReady, false, "PodCompleted", "")
	} else {
		sort.Strings(uninit)
		cond(corev1.PodInitialized, len(uninit) == 0, "ContainersNotInitialized",
			fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(uninit, " ")))
		msg := fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))
		cond(corev1.ContainersReady, allRunning, "ContainersNotReady", msg)
		cond(corev1.PodReady, allRunning, "ContainersNotReady", msg)
	}
	pr.pod.Status.Conditions = st.Conditions
	pr.pod.Status.Phase = st.Phase
	return pod
}

func (pr *podRun) anyMainTerminated() bool {
	for _, c := range pr.containers {
		if !c.init && c.terminated() {
			return true
		}
	}
	return false
}
