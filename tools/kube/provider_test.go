package main

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// The status a node writes replaces the API's whole status: the conditions the API server
// or a controller set (DisruptionTarget on an eviction, a readiness gate) must survive it,
// while the ones the kubelet owns stay the node's.
func TestMergeConditionsKeepsWhatTheKubeletDoesNotOwn(t *testing.T) {
	ours := []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue},
	}
	theirs := []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionFalse},
		{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "EvictionByEvictionAPI"},
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, Reason: "Rebound"},
	}
	got := mergeConditions(ours, theirs)
	want := map[corev1.PodConditionType]string{
		corev1.PodScheduled:     "True/Rebound",
		corev1.PodReady:         "True/",
		corev1.DisruptionTarget: "True/EvictionByEvictionAPI",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d conditions, want %d: %+v", len(got), len(want), got)
	}
	for _, c := range got {
		if w := want[c.Type]; string(c.Status)+"/"+c.Reason != w {
			t.Errorf("%s: got %s/%s, want %s", c.Type, c.Status, c.Reason, w)
		}
	}
	if len(ours) != 2 || ours[1].Status != corev1.ConditionTrue {
		t.Errorf("ours was changed in place: %+v", ours)
	}
}
