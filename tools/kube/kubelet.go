package main

// What the API server proxies to a kubelet: container logs (pods/log: follow, timestamps,
// sinceTime/sinceSeconds, tailLines, limitBytes, previous) and exec (pods/exec, with stdin
// and a terminal), served by virtual-kubelet's handlers from the provider below.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	utilexec "k8s.io/utils/exec"
)

// logMaxBytes is what a container's log keeps, as the kubelet's containerLogMaxSize
// (10 MiB) does: the oldest lines go first.
const logMaxBytes = 10 << 20

type logLine struct {
	at   time.Time
	text string
}

// logBuffer is one container's log: lines with the time the runner read them.
type logBuffer struct {
	mu      sync.Mutex
	lines   []logLine
	dropped int // lines dropped from the front by the size cap
	size    int
	closed  bool          // the container is over: no more lines
	changed chan struct{} // closed (and replaced) on every change
}

func newLogBuffer() *logBuffer { return &logBuffer{changed: make(chan struct{})} }

func (b *logBuffer) append(at time.Time, text string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.lines = append(b.lines, logLine{at, text})
	b.size += len(text) + 1
	for b.size > logMaxBytes && len(b.lines) > 1 {
		b.size -= len(b.lines[0].text) + 1
		b.lines = b.lines[1:]
		b.dropped++
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *logBuffer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.closed {
		b.closed = true
		close(b.changed)
	}
}

// from returns the lines from number next on (lines are numbered from the first one ever
// written, dropped ones included), the number after the last, whether the log is over, and
// what signals the next change.
func (b *logBuffer) from(next int) ([]logLine, int, bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := next - b.dropped
	if i < 0 {
		i = 0
	}
	if i > len(b.lines) {
		i = len(b.lines)
	}
	return append([]logLine(nil), b.lines[i:]...), b.dropped + len(b.lines), b.closed, b.changed
}

func (p *provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	pr := p.lookup(namespace, podName)
	if pr == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, podName)
	}
	pr.mu.Lock()
	c := pr.container(containerName)
	var waiting *corev1.ContainerStateWaiting
	if c != nil && c.state.Waiting != nil {
		waiting = c.state.Waiting.DeepCopy()
	}
	pr.mu.Unlock()
	if c == nil {
		return nil, errdefs.InvalidInputf("container %q in pod %q is not available", containerName, podName)
	}
	if opts.Previous {
		return nil, errdefs.InvalidInputf("previous terminated container %q in pod %q not found", containerName, podName)
	}
	if waiting != nil {
		return nil, errdefs.InvalidInputf("container %q in pod %q is waiting to start: %s", containerName, podName, waiting.Reason)
	}
	since := opts.SinceTime
	if opts.SinceSeconds > 0 {
		if s := time.Now().Add(-time.Duration(opts.SinceSeconds) * time.Second); s.After(since) {
			since = s
		}
	}
	r, w := io.Pipe()
	go func() {
		w.CloseWithError(writeLogs(ctx, w, c.logs, since, opts))
	}()
	return r, nil
}

// writeLogs writes a log as the kubelet serves it: lines at or after since, the last Tail
// of them, each prefixed by its RFC 3339 time with Timestamps, at most LimitBytes; with
// Follow, then every new line until the container is over or the client goes.
func writeLogs(ctx context.Context, w io.Writer, b *logBuffer, since time.Time, opts api.ContainerLogOpts) error {
	lines, next, closed, changed := b.from(0)
	var sel []logLine
	for _, l := range lines {
		if since.IsZero() || !l.at.Before(since) {
			sel = append(sel, l)
		}
	}
	if opts.Tail > 0 && len(sel) > opts.Tail {
		sel = sel[len(sel)-opts.Tail:]
	}
	written := 0
	emit := func(ls []logLine) (bool, error) {
		for _, l := range ls {
			s := l.text + "\n"
			if opts.Timestamps {
				s = l.at.UTC().Format(time.RFC3339Nano) + " " + s
			}
			if opts.LimitBytes > 0 && written+len(s) > opts.LimitBytes {
				s = s[:opts.LimitBytes-written]
			}
			n, err := io.WriteString(w, s)
			written += n
			if err != nil || opts.LimitBytes > 0 && written >= opts.LimitBytes {
				return true, err
			}
		}
		return false, nil
	}
	if stop, err := emit(sel); stop || !opts.Follow {
		return err
	}
	for !closed {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		lines, next, closed, changed = b.from(next)
		if stop, err := emit(lines); stop {
			return err
		}
	}
	return nil
}

func (p *provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	pr := p.lookup(namespace, podName)
	if pr == nil {
		return errdefs.NotFoundf("pod %s/%s is not on this node", namespace, podName)
	}
	pr.mu.Lock()
	c := pr.container(containerName)
	running := c != nil && c.running()
	started := pr.runner != nil
	pr.mu.Unlock()
	if c == nil {
		return errdefs.NotFoundf("container %q not found in pod %s/%s", containerName, namespace, podName)
	}
	if !started || !running {
		return fmt.Errorf("container %q of pod %s/%s is not running", containerName, namespace, podName)
	}
	status, err := os.CreateTemp(pr.dir, "exec-status-")
	if err != nil {
		return err
	}
	statusFile := status.Name()
	status.Close()
	defer os.Remove(statusFile)
	args := []string{"exec", "--manifest", filepath.Join(pr.dir, "pod.json"), "--fixtures", filepath.Join(pr.dir, "fixtures.json"),
		"--work-dir", filepath.Join(pr.dir, "run"), "--container", containerName, "--status-file", statusFile}
	if attach.TTY() {
		args = append(args, "--tty")
	}
	args = append(append(args, p.o.RunnerArgs...), "--")
	run := exec.Command(p.o.Runner, append(args, cmd...)...)
	run.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var copies sync.WaitGroup
	if attach.TTY() {
		ptmx, tty, err := pty.Open()
		if err != nil {
			return fmt.Errorf("opening a terminal: %w", err)
		}
		defer ptmx.Close()
		run.Stdin, run.Stdout, run.Stderr = tty, tty, tty
		if err := run.Start(); err != nil {
			tty.Close()
			return err
		}
		tty.Close()
		go func() {
			for size := range attach.Resize() {
				_ = pty.Setsize(ptmx, &pty.Winsize{Rows: size.Height, Cols: size.Width})
			}
		}()
		if in := attach.Stdin(); in != nil {
			go func() { _, _ = io.Copy(ptmx, in) }()
		}
		if out := attach.Stdout(); out != nil {
			copies.Add(1)
			go func() {
				defer copies.Done()
				_, _ = io.Copy(out, ptmx) // ends with EIO once the command's side closes
			}()
		}
	} else {
		if in := attach.Stdin(); in != nil {
			run.Stdin = in
		}
		if out := attach.Stdout(); out != nil {
			run.Stdout = out
		}
		if e := attach.Stderr(); e != nil {
			run.Stderr = e
		}
		if err := run.Start(); err != nil {
			return err
		}
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = run.Process.Signal(syscall.SIGTERM)
		case <-done:
		}
	}()
	werr := run.Wait()
	close(done)
	copies.Wait()
	var st struct {
		ExitCode *int   `json:"exitCode"`
		Error    string `json:"error"`
	}
	raw, _ := os.ReadFile(statusFile)
	if len(raw) == 0 || json.Unmarshal(raw, &st) != nil {
		return fmt.Errorf("exec in container %q of pod %s/%s: the runner ended (%v) without a status", containerName, namespace, podName, werr)
	}
	if st.Error != "" {
		return errors.New(st.Error)
	}
	if st.ExitCode != nil && *st.ExitCode != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command terminated with exit code %d", *st.ExitCode), Code: *st.ExitCode}
	}
	return nil
}

func (p *provider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by this node: its containers' stdin is not kept open")
}

func (p *provider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return nil, errdefs.InvalidInput("stats are not collected by this node")
}

func (p *provider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, errdefs.InvalidInput("metrics are not collected by this node")
}

func (p *provider) PortForward(context.Context, string, string, int32, io.ReadWriteCloser) error {
	return errdefs.InvalidInput("port-forward is not supported by this node (pods share the host's network)")
}
