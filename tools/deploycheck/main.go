// Command deploycheck validates outboxd's deployment files with their own
// projects' types, where the main module must not depend on them:
//
//	helm template … | deploycheck k8s     every rendered object decoded strictly
//	                                       into its Kubernetes (or Prometheus
//	                                       Operator) type: an unknown or
//	                                       misplaced field is an error
//	deploycheck compose FILE…              loaded and validated by compose-go
//	                                       against the Compose Specification
//
// It is a module of its own (tools/deploycheck/go.mod), run by
// deploy/deploy_test.go.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: deploycheck k8s < manifests.yaml | deploycheck compose FILE…")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "k8s":
		err = checkK8s(os.Stdin, os.Stdout)
	case "compose":
		err = checkCompose(os.Args[2:], os.Stdout)
	default:
		err = fmt.Errorf("unknown check %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "deploycheck:", err)
		os.Exit(1)
	}
}

// typed returns an empty object of the API type for apiVersion and kind.
func typed(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "v1/Secret":
		return &corev1.Secret{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "batch/v1/Job":
		return &batchv1.Job{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}, true
	}
	return nil, false
}

// checkK8s splits a multi-document stream and decodes each object strictly.
func checkK8s(r io.Reader, w io.Writer) error {
	docs, err := splitYAML(r)
	if err != nil {
		return err
	}
	n := 0
	for _, doc := range docs {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			return fmt.Errorf("a document is not YAML: %w\n%s", err, doc)
		}
		if head.Kind == "" {
			continue // an empty document
		}
		obj, ok := typed(head.APIVersion, head.Kind)
		if !ok {
			return fmt.Errorf("%s %s: no type known for %s", head.Kind, head.Metadata.Name, head.APIVersion)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return fmt.Errorf("%s %s: %w", head.Kind, head.Metadata.Name, err)
		}
		if head.Metadata.Name == "" {
			return fmt.Errorf("a %s without metadata.name", head.Kind)
		}
		fmt.Fprintf(w, "ok %s %s %s\n", head.APIVersion, head.Kind, head.Metadata.Name)
		n++
	}
	if n == 0 {
		return errors.New("no objects in the input")
	}
	return nil
}

func splitYAML(r io.Reader) ([][]byte, error) {
	var docs [][]byte
	var cur bytes.Buffer
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimRight(line, " ") == "---" {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	docs = append(docs, cur.Bytes())
	return docs, sc.Err()
}

// checkCompose loads the files as `docker compose config` would, with the
// schema validation on, and lists the services.
func checkCompose(files []string, w io.Writer) error {
	if len(files) == 0 {
		return errors.New("compose: name the files")
	}
	opts, err := cli.NewProjectOptions(files, cli.WithWorkingDirectory(filepath.Dir(files[0])),
		cli.WithOsEnv, cli.WithDotEnv, cli.WithName("outboxd-check"))
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}
	for _, name := range project.ServiceNames() {
		fmt.Fprintf(w, "ok service %s\n", name)
	}
	return nil
}
