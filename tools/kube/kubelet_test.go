package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/node/api"
)

func filledBuffer(n int, start time.Time) *logBuffer {
	b := newLogBuffer()
	for i := range n {
		b.append(start.Add(time.Duration(i)*time.Second), fmt.Sprintf("line %d", i))
	}
	return b
}

func TestWriteLogsOptions(t *testing.T) {
	start := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name  string
		since time.Time
		opts  api.ContainerLogOpts
		want  string
	}{
		{"all", time.Time{}, api.ContainerLogOpts{}, "line 0\nline 1\nline 2\nline 3\n"},
		{"tail", time.Time{}, api.ContainerLogOpts{Tail: 2}, "line 2\nline 3\n"},
		{"since", start.Add(2 * time.Second), api.ContainerLogOpts{}, "line 2\nline 3\n"},
		{"since and tail", start.Add(1 * time.Second), api.ContainerLogOpts{Tail: 1}, "line 3\n"},
		{"limit bytes cuts a line", time.Time{}, api.ContainerLogOpts{LimitBytes: 10}, "line 0\nlin"},
		{"timestamps", start.Add(3 * time.Second), api.ContainerLogOpts{Timestamps: true}, "2026-12-07T12:00:03Z line 3\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := filledBuffer(4, start)
			b.close()
			var out bytes.Buffer
			if err := writeLogs(context.Background(), &out, b, c.since, c.opts); err != nil {
				t.Fatal(err)
			}
			if out.String() != c.want {
				t.Errorf("got %q, want %q", out.String(), c.want)
			}
		})
	}
}

func TestWriteLogsFollowsUntilTheContainerEnds(t *testing.T) {
	b := filledBuffer(1, time.Now())
	r, w := io.Pipe()
	go func() {
		w.CloseWithError(writeLogs(context.Background(), w, b, time.Time{}, api.ContainerLogOpts{Follow: true}))
	}()
	buf := make([]byte, 7)
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "line 0\n" {
		t.Fatalf("first line %q, %v", buf, err)
	}
	// Lines written after the follower caught up arrive, then EOF once the container ends.
	b.append(time.Now(), "later")
	b.close()
	b.append(time.Now(), "after the end is dropped")
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "later\n" {
		t.Errorf("rest %q, %v", rest, err)
	}
}

func TestLogBufferKeepsTheNewestWithinItsCap(t *testing.T) {
	b := newLogBuffer()
	line := strings.Repeat("x", 1<<20-1) // 1 MiB with its newline
	for i := range 12 {
		b.append(time.Now(), fmt.Sprintf("%02d%s", i, line[2:]))
	}
	lines, next, _, _ := b.from(0)
	if next != 12 || len(lines) != 10 || !strings.HasPrefix(lines[0].text, "02") {
		t.Errorf("kept %d lines from %q, next %d; want the last 10 of 12", len(lines), lines[0].text[:2], next)
	}
	// A follower that had read line 5 continues with line 6 even though 0 and 1 are gone.
	after, _, _, _ := b.from(6)
	if len(after) != 6 || !strings.HasPrefix(after[0].text, "06") {
		t.Errorf("from 6: %d lines starting %q", len(after), after[0].text[:2])
	}
}
