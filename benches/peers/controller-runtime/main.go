// A controller-runtime webhook serving persi's mutation of Eirini app pods, for
// `eirinix-bench peers` (built by ../build-controller-runtime.sh; nothing of the module is
// committed but this file).
//
// It is written the way controller-runtime documents it: an admission.Handler decoding the
// Pod with admission.Decoder, changing it in place, and answering with
// admission.PatchResponseFromRaw (the JSON patch is the diff of the request's raw object and
// the marshalled result). The mutation is persi's, reduced to what the benchmark's pod needs
// and producing the same pod: every volume binding of the app containers' VCAP_SERVICES
// becomes a PVC volume (named persi-<claim>-<hash> as persi names them) and a mount
// (read-only for mode "r"), the pod gets fsGroup 2000 with OnRootMismatch unless it has an
// fsGroup, and the marker annotation eirinix.org/persi.
//
//	controller-runtime-persi -addr 127.0.0.1:PORT -cert-dir DIR   (DIR holds tls.crt and tls.key)
//
// It prints "ready" on stdout once it listens, and serves until stdin closes.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

const marker = "eirinix.org/persi"

type persi struct {
	decoder admission.Decoder
}

type mount struct {
	ContainerDir string `json:"container_dir"`
	Mode         string `json:"mode"`
	Device       struct {
		VolumeID string `json:"volume_id"`
	} `json:"device"`
}

type binding struct {
	Credentials struct {
		VolumeID string `json:"volume_id"`
	} `json:"credentials"`
	VolumeMounts []mount `json:"volume_mounts"`
}

func (p *persi) Handle(_ context.Context, req admission.Request) admission.Response {
	pod := &corev1.Pod{}
	if err := p.decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, err)
	}
	if req.Operation != admissionv1.Create {
		return admission.Allowed("")
	}
	if _, ok := pod.Annotations[marker]; ok {
		return admission.Allowed("")
	}
	changed := false
	claimVolume := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			claimVolume[v.PersistentVolumeClaim.ClaimName] = v.Name
		}
	}
	for i := range pod.Spec.Containers {
		c := &pod.Spec.Containers[i]
		vcap := ""
		for _, e := range c.Env {
			if e.Name == "VCAP_SERVICES" {
				vcap = e.Value
			}
		}
		if strings.TrimSpace(vcap) == "" {
			continue
		}
		var services map[string][]binding
		if err := json.Unmarshal([]byte(vcap), &services); err != nil {
			return admission.Denied(fmt.Sprintf("container %q: VCAP_SERVICES is not valid JSON: %v", c.Name, err))
		}
		labels := make([]string, 0, len(services))
		for l := range services {
			labels = append(labels, l)
		}
		sort.Strings(labels) // persi reads labels in order
		for _, l := range labels {
			for _, b := range services[l] {
				for _, m := range b.VolumeMounts {
					claim := b.Credentials.VolumeID
					if claim == "" {
						claim = m.Device.VolumeID
					}
					dir := strings.TrimRight(m.ContainerDir, "/")
					name, known := claimVolume[claim]
					if !known {
						name = volumeName(claim)
						claimVolume[claim] = name
						pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
							Name: name,
							VolumeSource: corev1.VolumeSource{
								PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim},
							},
						})
					}
					c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{
						Name: name, MountPath: dir, ReadOnly: m.Mode == "r",
					})
					changed = true
				}
			}
		}
	}
	if !changed {
		return admission.Allowed("")
	}
	if pod.Spec.SecurityContext == nil {
		pod.Spec.SecurityContext = &corev1.PodSecurityContext{}
	}
	if sc := pod.Spec.SecurityContext; sc.FSGroup == nil {
		group := int64(2000)
		if sc.RunAsGroup != nil {
			group = *sc.RunAsGroup
		}
		sc.FSGroup = &group
		if sc.FSGroupChangePolicy == nil {
			policy := corev1.FSGroupChangeOnRootMismatch
			sc.FSGroupChangePolicy = &policy
		}
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[marker] = "injected"
	marshaled, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, err)
	}
	return admission.PatchResponseFromRaw(req.Object.Raw, marshaled)
}

// volumeName is persi's names::volume_name(claim, 0): persi-<sanitized claim>-<FNV-1a hash>.
func volumeName(claim string) string {
	h := uint64(0xcbf29ce484222325)
	for _, part := range [][]byte{[]byte(claim), {0, 0, 0, 0}} {
		for _, b := range part {
			h ^= uint64(b)
			h *= 0x100000001b3
		}
		h ^= 0xff
		h *= 0x100000001b3
	}
	hash := fmt.Sprintf("%016x", h)[:12]
	readable := sanitize(claim)
	budget := 63 - (len("persi") + 12 + 2)
	if len(readable) > budget {
		readable = readable[:budget]
	}
	readable = strings.TrimRight(readable, "-")
	parts := []string{"persi"}
	if readable != "" {
		parts = append(parts, readable)
	}
	return strings.Join(append(parts, hash), "-")
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= 'A' && r <= 'Z' {
			r += 'a' - 'A'
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else if !strings.HasSuffix(b.String(), "-") {
			b.WriteByte('-')
		}
	}
	return strings.Trim(b.String(), "-")
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9443", "listen address")
	certDir := flag.String("cert-dir", "", "directory with tls.crt and tls.key")
	flag.Parse()
	ctrllog.SetLogger(logr.Discard())
	host, portText, err := net.SplitHostPort(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server := webhook.NewServer(webhook.Options{Host: host, Port: port, CertDir: *certDir})
	server.Register("/persi", &webhook.Admission{Handler: &persi{decoder: admission.NewDecoder(scheme)}})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	errs := make(chan error, 1)
	go func() { errs <- server.Start(ctx) }()
	for deadline := time.Now().Add(30 * time.Second); ; {
		if conn, err := net.DialTimeout("tcp", *addr, time.Second); err == nil {
			conn.Close()
			break
		}
		select {
		case err := <-errs:
			fmt.Fprintln(os.Stderr, "webhook server:", err)
			os.Exit(1)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "webhook server not listening after 30 s")
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	if err := <-errs; err != nil {
		fmt.Fprintln(os.Stderr, "webhook server:", err)
		os.Exit(1)
	}
}
