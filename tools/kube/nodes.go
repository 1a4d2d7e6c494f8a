package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// nodeName is the name of node i.
func nodeName(i int) string { return "sykli-node-" + strconv.Itoa(i) }

// perNode splits "INDEX:REST" flags into REST lists by index.
func perNode(flag string, list []string, nodes int) (map[int][]string, error) {
	out := map[int][]string{}
	for _, v := range list {
		idx, rest, ok := strings.Cut(v, ":")
		i, err := strconv.Atoi(idx)
		if !ok || err != nil || i < 0 || i >= nodes {
			return nil, fmt.Errorf("--%s %q is not INDEX:… with INDEX below --nodes (%d)", flag, v, nodes)
		}
		out[i] = append(out[i], rest)
	}
	return out, nil
}

// startNodes starts o.Nodes nodes (`sykli-kube node`), each with its own identity
// (system:node:NAME in system:nodes, so the Node authorizer and NodeRestriction apply to
// it as to a kubelet) and serving certificate, and waits until each Node is Ready.
func (c *Cluster) startNodes(ctx context.Context, p *pki, ports []int) error {
	o := c.opts
	taints, err := perNode("node-taint", o.NodeTaints, o.Nodes)
	if err != nil {
		return err
	}
	labels, err := perNode("node-label", o.NodeLabels, o.Nodes)
	if err != nil {
		return err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return err
	}
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	// virtual-kubelet's node library starts cluster-wide Secret, ConfigMap and Service
	// informers (a kubelet watches only what its pods use); the Node authorizer refuses
	// those lists, so nodes may list and watch the three. Pods' data is still read with
	// per-object GETs, which the Node authorizer decides.
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "sykli-kube:node-informers"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets", "configmaps", "services"},
			Verbs: []string{"list", "watch"}}}}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "sykli-kube:node-informers"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:nodes"}}}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}

	var procs []*proc
	for i := range o.Nodes {
		name := nodeName(i)
		dir := filepath.Join(o.Dir, "nodes", name)
		client, err := issue(p.Dir, certSpec{name: name, cn: "system:node:" + name, orgs: []string{"system:nodes"},
			client: true, signer: p.CA})
		if err != nil {
			return err
		}
		serving, err := issue(p.Dir, certSpec{name: name + "-serving", cn: "system:node:" + name,
			dns: []string{name, "localhost"}, ips: []net.IP{net.IPv4(127, 0, 0, 1)}, server: true, signer: p.CA})
		if err != nil {
			return err
		}
		kubeconfig := filepath.Join(o.Dir, "nodes", name+".kubeconfig")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := writeKubeconfig(kubeconfig, c.Server, p.CA, "system:node:"+name, client); err != nil {
			return err
		}
		args := []string{"--name=" + name, "--kubeconfig=" + kubeconfig, "--listen=127.0.0.1:" + strconv.Itoa(ports[i]),
			"--cert=" + serving.CertFile, "--key=" + serving.KeyFile, "--client-ca=" + p.CA.CertFile, "--dir=" + dir,
			"--runner=" + o.NodeRunner, "--label=sykli.dev/node-index=" + strconv.Itoa(i)}
		for _, t := range taints[i] {
			args = append(args, "--taint="+t)
		}
		for _, l := range labels[i] {
			args = append(args, "--label="+l)
		}
		pr, err := c.spawn(name, append(append(args, "--v="+strconv.Itoa(o.Verbosity)), o.NodeArgs...), "node")
		if err != nil {
			return err
		}
		procs = append(procs, pr)
	}
	for i, pr := range procs {
		if err := c.waitNodeReady(ctx, admin, pr, nodeName(i)); err != nil {
			return err
		}
		c.NodeNames = append(c.NodeNames, nodeName(i))
	}
	return nil
}

func (c *Cluster) waitNodeReady(ctx context.Context, admin kubernetes.Interface, pr *proc, name string) error {
	deadline := time.Now().Add(c.opts.Timeout)
	last := "not registered"
	for {
		if pr.exited() {
			return pr.exitError("exited before its Node was Ready")
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		n, err := admin.CoreV1().Nodes().Get(rctx, name, metav1.GetOptions{})
		cancel()
		if err == nil {
			// Ready, and schedulable: the API server taints a new Node not-ready, and the
			// node lifecycle controller lifts the taint once it sees the node Ready.
			ready, tainted := false, false
			for _, cond := range n.Status.Conditions {
				if cond.Type == corev1.NodeReady {
					ready = cond.Status == corev1.ConditionTrue
					last = fmt.Sprintf("Ready=%s (%s)", cond.Status, cond.Message)
				}
			}
			for _, t := range n.Spec.Taints {
				if t.Key == corev1.TaintNodeNotReady || t.Key == corev1.TaintNodeUnreachable {
					tainted = true
					last += "; taint " + t.Key
				}
			}
			if ready && !tainted {
				fmt.Fprintf(c.opts.Progress, "sykli-kube: node %s Ready\n", name)
				return nil
			}
		} else if !apierrors.IsNotFound(err) {
			last = err.Error()
		}
		if perr := c.pause(ctx, pr, deadline, 100*time.Millisecond); perr != nil {
			return fmt.Errorf("node %s never became Ready (%v; last: %s); last lines of %s:\n%s",
				name, perr, last, pr.logFile, tail(pr.logFile, 40))
		}
	}
}
