package deploy

import (
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "sigs.k8s.io/yaml"

	"gopkg.in/yaml.v3"

	"github.com/nowconnect/nowconnect/internal/config"
)

const kubeDir = "kubernetes"

// decodeStrict decodes one manifest into v the way the API server's strict field validation
// does: YAML to JSON, then JSON with unknown fields (and duplicate keys) as errors. It also
// checks that the manifest says the apiVersion and kind of v.
func decodeStrict(t *testing.T, name string, data []byte, apiVersion, kind string, v any) {
	t.Helper()
	var tm metav1.TypeMeta
	if err := k8syaml.Unmarshal(data, &tm); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if tm.APIVersion != apiVersion || tm.Kind != kind {
		t.Fatalf("%s: %s %s, want %s %s", name, tm.APIVersion, tm.Kind, apiVersion, kind)
	}
	if err := k8syaml.UnmarshalStrict(data, v); err != nil {
		t.Fatalf("%s: strict decode into %s/%s: %v", name, apiVersion, kind, err)
	}
}

// TestKubernetesManifests decodes every manifest of deploy/kubernetes strictly into the
// k8s.io/api types (an unknown or misspelt field fails, as kubectl's strict validation would)
// and checks that they fit together: the Deployment runs the image non-root with a read-only
// root file system, probes /readyz and /healthz on the port the ConfigMap's cloud.yaml
// listens on, mounts the Secret where auth.jwt_secret_file points and the ConfigMap at
// NC_CONFIG, gives SIGTERM more time than the shutdown grace; the Service and the
// PodDisruptionBudget select its pods and the Service's ports exist in the pod. The
// ConfigMap's cloud.yaml loads with the gateway's own loader.
func TestKubernetesManifests(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(kubeDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "\n---") {
			t.Fatalf("%s: one object per file", name)
		}
		return b
	}
	entries, err := os.ReadDir(kubeDir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	slices.Sort(files)
	if want := []string{"configmap.yaml", "deployment.yaml", "pdb.yaml", "service.yaml"}; !slices.Equal(files, want) {
		t.Fatalf("%s holds %v, want %v (a new manifest needs its check here)", kubeDir, files, want)
	}

	var dep appsv1.Deployment
	decodeStrict(t, "deployment.yaml", read("deployment.yaml"), "apps/v1", "Deployment", &dep)
	var svc corev1.Service
	decodeStrict(t, "service.yaml", read("service.yaml"), "v1", "Service", &svc)
	var pdb policyv1.PodDisruptionBudget
	decodeStrict(t, "pdb.yaml", read("pdb.yaml"), "policy/v1", "PodDisruptionBudget", &pdb)
	var cm corev1.ConfigMap
	decodeStrict(t, "configmap.yaml", read("configmap.yaml"), "v1", "ConfigMap", &cm)

	// The decoder really is strict: the same Deployment with one unknown field fails.
	bad := strings.Replace(string(read("deployment.yaml")), "  replicas: 1\n", "  replicas: 1\n  replicaz: 2\n", 1)
	if err := k8syaml.UnmarshalStrict([]byte(bad), &appsv1.Deployment{}); err == nil || !strings.Contains(err.Error(), "replicaz") {
		t.Fatalf("strict decoding accepted an unknown field (err %v)", err)
	}

	pod := dep.Spec.Template
	podLabels := labels.Set(pod.Labels)
	sel, err := metav1.LabelSelectorAsSelector(dep.Spec.Selector)
	if err != nil || !sel.Matches(podLabels) {
		t.Fatalf("deployment.yaml: selector %v does not match the pod labels %v (%v)", dep.Spec.Selector, pod.Labels, err)
	}
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("deployment.yaml: %d containers, want 1", len(pod.Spec.Containers))
	}
	c := pod.Spec.Containers[0]
	if c.Image != "nowconnect:latest" || !slices.Equal(c.Args, []string{"cloud"}) {
		t.Fatalf("deployment.yaml: image %q args %v, want nowconnect:latest [cloud]", c.Image, c.Args)
	}

	// Security: non-root (numeric, as the image's USER), read-only root, no privileges.
	psc, csc := pod.Spec.SecurityContext, c.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Fatalf("deployment.yaml: pod securityContext %+v: want runAsNonRoot and a non-zero runAsUser", psc)
	}
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem ||
		csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.Capabilities == nil || !slices.Equal(csc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Fatalf("deployment.yaml: container securityContext %+v: want readOnlyRootFilesystem, no privilege escalation, drop ALL", csc)
	}

	// The hub's config, from the ConfigMap, mounted at NC_CONFIG.
	var ncConfig string
	for _, e := range c.Env {
		if e.Name == "NC_CONFIG" {
			ncConfig = e.Value
		}
	}
	cfgVol := mountedVolume(t, dep, path.Dir(ncConfig))
	if cfgVol.ConfigMap == nil || cfgVol.ConfigMap.Name != cm.Name {
		t.Fatalf("deployment.yaml: NC_CONFIG %q is not in a volume of ConfigMap %s", ncConfig, cm.Name)
	}
	text, ok := cm.Data[path.Base(ncConfig)]
	if !ok {
		t.Fatalf("configmap.yaml: no key %s (NC_CONFIG is %s)", path.Base(ncConfig), ncConfig)
	}
	var hf hubFile
	if err := yaml.Unmarshal([]byte(text), &hf); err != nil {
		t.Fatalf("configmap.yaml %s: %v", path.Base(ncConfig), err)
	}

	// The Secret, mounted where auth.jwt_secret_file points.
	secVol := mountedVolume(t, dep, path.Dir(hf.Auth.JWTSecretFile))
	if secVol.Secret == nil || secVol.Secret.SecretName != "nowconnect-hs256" ||
		len(secVol.Secret.Items) != 1 || secVol.Secret.Items[0].Path != path.Base(hf.Auth.JWTSecretFile) {
		t.Fatalf("deployment.yaml: auth.jwt_secret_file %s is not the key of Secret nowconnect-hs256 (%+v)", hf.Auth.JWTSecretFile, secVol.Secret)
	}

	dir := t.TempDir()
	secret := filepath.Join(dir, "hs256")
	if err := os.WriteFile(secret, []byte("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "cloud.yaml")
	if err := os.WriteFile(cfgPath, []byte(rewrite(t, "configmap.yaml", text, hf.Auth.JWTSecretFile, secret)), 0o600); err != nil {
		t.Fatal(err)
	}
	hub, err := config.LoadHub(cfgPath)
	if err != nil {
		t.Fatalf("configmap.yaml cloud.yaml: %v", err)
	}

	// Ports and probes agree with the config.
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if port(t, hub.Listen) != itoa(ports["control"]) {
		t.Fatalf("deployment.yaml: port control %d, cloud.yaml listens on %s", ports["control"], hub.Listen)
	}
	if len(hub.Listeners) != 1 || port(t, hub.Listeners[0].Bind) != itoa(ports["ldap"]) {
		t.Fatalf("deployment.yaml: port ldap %d is not the listener's port (%+v)", ports["ldap"], hub.Listeners)
	}
	for _, p := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{{"readinessProbe", c.ReadinessProbe, "/readyz"}, {"livenessProbe", c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port != intstr.FromString("control") {
			t.Fatalf("deployment.yaml: %s %+v: want GET %s on port control", p.what, p.probe, p.path)
		}
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || float64(*g) <= hub.Timeouts.ShutdownGrace.D().Seconds() {
		t.Fatalf("deployment.yaml: terminationGracePeriodSeconds %v: want more than timeouts.shutdown_grace %v", g, hub.Timeouts.ShutdownGrace)
	}

	// Service and PDB select the pods; the Service's target ports exist.
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) || len(svc.Spec.Selector) == 0 {
		t.Fatalf("service.yaml: selector %v does not select the hub's pods %v", svc.Spec.Selector, pod.Labels)
	}
	var svcPorts []string
	for _, p := range svc.Spec.Ports {
		if _, ok := ports[p.TargetPort.String()]; !ok {
			t.Fatalf("service.yaml: targetPort %s is not a port of the container %v", p.TargetPort.String(), ports)
		}
		svcPorts = append(svcPorts, itoa(p.Port)+"→"+p.TargetPort.String())
	}
	if !slices.Contains(svcPorts, "389→ldap") || !slices.Contains(svcPorts, "8765→control") {
		t.Fatalf("service.yaml: ports %v, want 389→ldap (the seed's LDAP port) and 8765→control", svcPorts)
	}
	psel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil || psel.Empty() || !psel.Matches(podLabels) {
		t.Fatalf("pdb.yaml: selector %v does not select the hub's pods (%v)", pdb.Spec.Selector, err)
	}
	if pdb.Spec.MinAvailable == nil && pdb.Spec.MaxUnavailable == nil {
		t.Fatal("pdb.yaml: neither minAvailable nor maxUnavailable")
	}
}

// mountedVolume returns the volume of the Deployment's container mounted at dir.
func mountedVolume(t *testing.T, dep appsv1.Deployment, dir string) corev1.Volume {
	t.Helper()
	c := dep.Spec.Template.Spec.Containers[0]
	for _, m := range c.VolumeMounts {
		if m.MountPath != dir {
			continue
		}
		if !m.ReadOnly {
			t.Fatalf("deployment.yaml: mount %s is writable", dir)
		}
		for _, v := range dep.Spec.Template.Spec.Volumes {
			if v.Name == m.Name {
				return v
			}
		}
		t.Fatalf("deployment.yaml: mount %s names volume %s, which does not exist", dir, m.Name)
	}
	t.Fatalf("deployment.yaml: nothing is mounted at %s", dir)
	return corev1.Volume{}
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }
