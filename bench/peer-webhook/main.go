// peer-webhook is the benchmark's peer: the executor-Job webhook written the way most teams
// write a mutating webhook, with controller-runtime's admission.Webhook. It decodes the Job into
// the typed batch/v1 struct, looks up the plugin and the VirtualCluster in in-memory maps,
// applies the injection the Rust webhook would make, marshals the Job and lets
// admission.PatchResponseFromRaw diff the two into a JSON patch.
//
// The maps stand in for informer caches: they are loaded once from the fixture file that
// kosmos-bench writes (one injection per plugin, computed by the Rust mutation, so both webhooks
// return the same patch). The peer never talks to an apiserver.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Injection is what the mutation adds to one plugin's executor Job.
type Injection struct {
	Volumes []corev1.Volume      `json:"volumes"`
	Mounts  []corev1.VolumeMount `json:"mounts"`
	Env     []corev1.EnvVar      `json:"env"`
	Command []string             `json:"command"`
	Mark    string               `json:"mark"`
}

// Fixture is the file kosmos-bench writes: the peer's stand-in for its caches.
type Fixture struct {
	OperatorUser    string               `json:"operatorUser"`
	Plugins         map[string]Injection `json:"plugins"`
	VirtualClusters map[string]bool      `json:"virtualClusters"`
}

const (
	executorLabel       = "plugin.kosmos.io/executor"
	pluginLabel         = "plugin.kosmos.io/plugin"
	virtualClusterLabel = "plugin.kosmos.io/virtual-cluster"
	injectedAnnotation  = "plugin.kosmos.io/injected"
	executorContainer   = "executor"
)

type mutator struct {
	fixture Fixture
}

func (m *mutator) Handle(_ context.Context, req admission.Request) admission.Response {
	if req.Kind.Group != "batch" || req.Kind.Kind != "Job" || req.Operation != "CREATE" {
		return admission.Allowed("not the creation of a Job")
	}
	job := &batchv1.Job{}
	if err := json.Unmarshal(req.Object.Raw, job); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if _, ok := job.Labels[executorLabel]; !ok {
		return admission.Allowed("no executor label")
	}
	if req.UserInfo.Username != m.fixture.OperatorUser {
		return admission.Denied(fmt.Sprintf("only %s may create executor Jobs", m.fixture.OperatorUser))
	}
	key := func(name string) string { return req.Namespace + "/" + name }
	injection, ok := m.fixture.Plugins[key(job.Labels[pluginLabel])]
	if !ok {
		return admission.Denied("VirtualClusterPlugin " + key(job.Labels[pluginLabel]) + " not found")
	}
	if !m.fixture.VirtualClusters[key(job.Labels[virtualClusterLabel])] {
		return admission.Denied("VirtualCluster " + key(job.Labels[virtualClusterLabel]) + " not found")
	}
	if err := apply(job, &injection); err != nil {
		return admission.Denied(err.Error())
	}
	marshaled, err := json.Marshal(job)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.PatchResponseFromRaw(req.Object.Raw, marshaled)
}

func apply(job *batchv1.Job, in *Injection) error {
	if job.Annotations == nil {
		job.Annotations = map[string]string{}
	}
	job.Annotations[injectedAnnotation] = in.Mark
	tmpl := &job.Spec.Template
	if tmpl.Annotations == nil {
		tmpl.Annotations = map[string]string{}
	}
	tmpl.Annotations[injectedAnnotation] = in.Mark
	pod := &tmpl.Spec
	for _, v := range in.Volumes {
		pod.Volumes = upsertVolume(pod.Volumes, v)
	}
	no := false
	pod.AutomountServiceAccountToken = &no
	for i := range pod.Containers {
		c := &pod.Containers[i]
		if c.Name != executorContainer {
			continue
		}
		c.Command = in.Command
		c.Args = nil
		for _, e := range in.Env {
			c.Env = upsertEnv(c.Env, e)
		}
		for _, mnt := range in.Mounts {
			c.VolumeMounts = upsertMount(c.VolumeMounts, mnt)
		}
		return nil
	}
	return fmt.Errorf("no container named %s", executorContainer)
}

func upsertVolume(list []corev1.Volume, v corev1.Volume) []corev1.Volume {
	for i := range list {
		if list[i].Name == v.Name {
			list[i] = v
			return list
		}
	}
	return append(list, v)
}

func upsertEnv(list []corev1.EnvVar, e corev1.EnvVar) []corev1.EnvVar {
	for i := range list {
		if list[i].Name == e.Name {
			list[i] = e
			return list
		}
	}
	return append(list, e)
}

func upsertMount(list []corev1.VolumeMount, m corev1.VolumeMount) []corev1.VolumeMount {
	for i := range list {
		if list[i].Name == m.Name {
			list[i] = m
			return list
		}
	}
	return append(list, m)
}

func main() {
	fixturePath := flag.String("fixture", "", "fixture JSON written by kosmos-bench")
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 9443, "port to listen on")
	certDir := flag.String("cert-dir", "", "folder with tls.crt and tls.key")
	flag.Parse()
	raw, err := os.ReadFile(*fixturePath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer-webhook:", err)
		os.Exit(1)
	}
	m := &mutator{}
	if err := json.Unmarshal(raw, &m.fixture); err != nil {
		fmt.Fprintln(os.Stderr, "peer-webhook: fixture:", err)
		os.Exit(1)
	}
	raw = nil
	// The certificate is loaded once, as the benchmark never rotates it: controller-runtime's
	// default certificate watcher needs an inotify instance, which a busy machine may not have.
	pair, err := tls.LoadX509KeyPair(filepath.Join(*certDir, "tls.crt"), filepath.Join(*certDir, "tls.key"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer-webhook:", err)
		os.Exit(1)
	}
	server := webhook.NewServer(webhook.Options{
		Host: *host,
		Port: *port,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil }
		}},
	})
	server.Register("/mutate", &webhook.Admission{Handler: m})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	fmt.Printf("peer-webhook listening on %s:%d\n", *host, *port)
	if err := server.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "peer-webhook:", err)
		os.Exit(1)
	}
}
