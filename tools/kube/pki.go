package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The cluster's PKI: one self-made CA signs every serving and client certificate; the
// service-account tokens are signed with a key of their own. Keys are ECDSA P-256 in
// PKCS#8 PEM (what Go, rustls and OpenSSL all read).

const certValidity = 365 * 24 * time.Hour

type keyPair struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertFile string
	KeyFile  string
	CertPEM  []byte
	KeyPEM   []byte
}

type certSpec struct {
	name   string // file stem under pki/
	cn     string
	orgs   []string
	dns    []string
	ips    []net.IP
	server bool
	client bool
	isCA   bool
	signer *keyPair // nil: self-signed
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func issue(dir string, s certSpec) (*keyPair, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: s.cn, Organization: s.orgs},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		DNSNames:              s.dns,
		IPAddresses:           s.ips,
		BasicConstraintsValid: true,
	}
	if s.isCA {
		tmpl.IsCA = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
		tmpl.NotAfter = now.Add(10 * certValidity)
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if s.server {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		}
		if s.client {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
		}
	}
	parent, signerKey := tmpl, crypto.Signer(key)
	if s.signer != nil {
		parent, signerKey = s.signer.Cert, s.signer.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signerKey)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", s.name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	kp := &keyPair{
		Cert:     cert,
		Key:      key,
		CertFile: filepath.Join(dir, s.name+".crt"),
		KeyFile:  filepath.Join(dir, s.name+".key"),
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}
	if kp.KeyPEM, err = keyPEM(key); err != nil {
		return nil, err
	}
	if err := os.WriteFile(kp.CertFile, kp.CertPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(kp.KeyFile, kp.KeyPEM, 0o600); err != nil {
		return nil, err
	}
	return kp, nil
}

// pki holds every file the components are started with.
type pki struct {
	Dir              string
	CA               *keyPair
	APIServer        *keyPair // serving: 127.0.0.1, localhost, the kubernetes service
	KubeletClient    *keyPair // the API server's client certificate towards kubelets
	Admin            *keyPair // client: group system:masters
	ControllerMgr    *keyPair // client: system:kube-controller-manager
	ControllerMgrTLS *keyPair // serving: its secure port
	Scheduler        *keyPair // client: system:kube-scheduler
	SchedulerTLS     *keyPair // serving: its secure port
	FrontProxyCA     *keyPair // the request-header CA (aggregated API servers trust it)
	FrontProxyClient *keyPair // the API server's client certificate towards them
	SAKeyFile        string   // service-account signing key (private)
	SAPubFile        string   // and its public half
}

const adminUser = "sykli-admin"

func makePKI(dir string, serviceIP net.IP) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{Dir: dir}
	var err error
	if p.CA, err = issue(dir, certSpec{name: "ca", cn: "sykli-kube-ca", isCA: true}); err != nil {
		return nil, err
	}
	loop := []net.IP{net.IPv4(127, 0, 0, 1)}
	local := []string{"localhost"}
	apiDNS := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local"}
	apiIPs := append([]net.IP{}, loop...)
	if serviceIP != nil {
		apiIPs = append(apiIPs, serviceIP)
	}
	specs := []struct {
		dst  **keyPair
		spec certSpec
	}{
		{&p.APIServer, certSpec{name: "apiserver", cn: "kube-apiserver", dns: apiDNS, ips: apiIPs, server: true}},
		{&p.KubeletClient, certSpec{name: "apiserver-kubelet-client", cn: "kube-apiserver-kubelet-client",
			orgs: []string{"system:masters"}, client: true}},
		{&p.Admin, certSpec{name: "admin", cn: adminUser, orgs: []string{"system:masters"}, client: true}},
		{&p.ControllerMgr, certSpec{name: "controller-manager", cn: "system:kube-controller-manager", client: true}},
		{&p.ControllerMgrTLS, certSpec{name: "controller-manager-serving", cn: "kube-controller-manager",
			dns: local, ips: loop, server: true}},
		{&p.Scheduler, certSpec{name: "scheduler", cn: "system:kube-scheduler", client: true}},
		{&p.SchedulerTLS, certSpec{name: "scheduler-serving", cn: "kube-scheduler", dns: local, ips: loop, server: true}},
	}
	for _, s := range specs {
		s.spec.signer = p.CA
		if *s.dst, err = issue(dir, s.spec); err != nil {
			return nil, err
		}
	}
	if p.FrontProxyCA, err = issue(dir, certSpec{name: "front-proxy-ca", cn: "sykli-kube-front-proxy-ca", isCA: true}); err != nil {
		return nil, err
	}
	if p.FrontProxyClient, err = issue(dir, certSpec{name: "front-proxy-client", cn: "front-proxy-client", client: true,
		signer: p.FrontProxyCA}); err != nil {
		return nil, err
	}
	saKey, err := newKey()
	if err != nil {
		return nil, err
	}
	saPEM, err := keyPEM(saKey)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	p.SAKeyFile, p.SAPubFile = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(p.SAKeyFile, saPEM, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.SAPubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	return p, nil
}
