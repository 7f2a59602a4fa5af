// Command injection_template evaluates an Istio injection template the way
// istiod does: Go's text/template, with the template data of one Istio release.
//
// istiod executes each template named in inject.istio.io/templates against a
// SidecarTemplateData (pkg/kube/inject/inject.go, RunTemplate) with sprig's
// functions. Here the data is a struct built at run time (reflect.StructOf) with
// exactly the fields that release's SidecarTemplateData has, so a field the
// release lacks fails as it does in istiod's webhook. Every field reference in
// the template (also in branches not taken) is checked against that field set,
// from the parse tree of Go's own parser.
//
// Input (stdin, JSON): {"template": "...", "fields": ["TypeMeta", ...],
// "annotations": {...}, "nativeSidecars": false, "proxyGID": 1337,
// "podSecurityContext": null or {"fsGroup": 2000, ...}}.
// Output: the rendered template on stdout; any error on stderr, exit 1.
//
// Only sprig's `default` is provided (the one sprig function our template
// uses, with sprig's semantics); a template calling another fails to parse,
// which is loud, never silent.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"text/template"
	"text/template/parse"
)

type input struct {
	Template       string            `json:"template"`
	Fields         []string          `json:"fields"`
	Annotations    map[string]string `json:"annotations"`
	NativeSidecars bool              `json:"nativeSidecars"`
	ProxyGID       int64             `json:"proxyGID"`
	// The pod's spec.securityContext; null: none (a nil pointer, as in the
	// pod istiod renders the template for).
	PodSecurityContext *podSecurityContext `json:"podSecurityContext"`
}

// The fields of core/v1 PodSecurityContext a template may read, with their Go
// types: optional ones are pointers, nil when the pod leaves them out, so
// `.Spec.SecurityContext.FSGroup` on a pod without a securityContext fails
// here as in istiod ("nil pointer evaluating"), unless guarded.
type podSecurityContext struct {
	RunAsUser           *int64  `json:"runAsUser"`
	RunAsGroup          *int64  `json:"runAsGroup"`
	RunAsNonRoot        *bool   `json:"runAsNonRoot"`
	SupplementalGroups  []int64 `json:"supplementalGroups"`
	FSGroup             *int64  `json:"fsGroup"`
	FSGroupChangePolicy *string `json:"fsGroupChangePolicy"`
}

// core/v1 PodSpec, as far as templates read it here.
type podSpec struct {
	SecurityContext    *podSecurityContext
	ServiceAccountName string
}

type objectMeta struct {
	Name        string
	Namespace   string
	Labels      map[string]string
	Annotations map[string]string
}

type typeMeta struct {
	Kind       string
	APIVersion string
}

type namespacedName struct {
	Namespace string
	Name      string
}

// The Go type of each SidecarTemplateData field, as far as templates read them
// (the real ones are Kubernetes and mesh config structs).
var fieldTypes = map[string]reflect.Type{
	"TypeMeta":                 reflect.TypeOf(typeMeta{}),
	"DeploymentMeta":           reflect.TypeOf(namespacedName{}),
	"ObjectMeta":               reflect.TypeOf(objectMeta{}),
	"Spec":                     reflect.TypeOf(podSpec{}),
	"ProxyConfig":              reflect.TypeOf(map[string]any{}),
	"MeshConfig":               reflect.TypeOf(map[string]any{}),
	"Values":                   reflect.TypeOf(map[string]any{}),
	"Revision":                 reflect.TypeOf(""),
	"NativeSidecars":           reflect.TypeOf(false),
	"ProxyImage":               reflect.TypeOf(""),
	"ProxyInitImage":           reflect.TypeOf(""),
	"ProxyUID":                 reflect.TypeOf(int64(0)),
	"ProxyGID":                 reflect.TypeOf(int64(0)),
	"InboundTrafficPolicyMode": reflect.TypeOf(""),
	"CompliancePolicy":         reflect.TypeOf(""),
}

// sprig's default: the given value unless it is empty, else the default.
func sprigDefault(d any, given ...any) any {
	if len(given) == 0 || empty(given[0]) {
		return d
	}
	return given[0]
}

func empty(v any) bool {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() {
		return true
	}
	switch rv.Kind() {
	case reflect.Array, reflect.Map, reflect.Slice, reflect.String:
		return rv.Len() == 0
	case reflect.Bool:
		return !rv.Bool()
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return rv.Int() == 0
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return rv.Uint() == 0
	case reflect.Float32, reflect.Float64:
		return rv.Float() == 0
	case reflect.Interface, reflect.Pointer:
		return rv.IsNil()
	case reflect.Struct:
		return false
	}
	return false
}

// fieldRefs collects the first identifier of every field reference on the
// template's data (.X...), refusing the constructs that rebind dot.
func fieldRefs(node parse.Node, out map[string]bool) error {
	switch n := node.(type) {
	case *parse.ListNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Nodes {
			if err := fieldRefs(c, out); err != nil {
				return err
			}
		}
	case *parse.ActionNode:
		return fieldRefs(n.Pipe, out)
	case *parse.PipeNode:
		if n == nil {
			return nil
		}
		for _, c := range n.Cmds {
			if err := fieldRefs(c, out); err != nil {
				return err
			}
		}
	case *parse.CommandNode:
		for _, a := range n.Args {
			if err := fieldRefs(a, out); err != nil {
				return err
			}
		}
	case *parse.FieldNode:
		out[n.Ident[0]] = true
	case *parse.ChainNode:
		return fieldRefs(n.Node, out)
	case *parse.IfNode:
		for _, c := range []parse.Node{n.Pipe, n.List, n.ElseList} {
			if err := fieldRefs(c, out); err != nil {
				return err
			}
		}
	case *parse.RangeNode, *parse.WithNode, *parse.TemplateNode:
		return fmt.Errorf("%s rebinds dot: not checked here", node.String())
	}
	return nil
}

func run() error {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		return fmt.Errorf("input: %w", err)
	}
	var fields []reflect.StructField
	for _, name := range in.Fields {
		t, ok := fieldTypes[name]
		if !ok {
			return fmt.Errorf("SidecarTemplateData field %s: no type known here (add it)", name)
		}
		fields = append(fields, reflect.StructField{Name: name, Type: t})
	}
	dataType := reflect.StructOf(fields)
	data := reflect.New(dataType).Elem()
	set := func(name string, v any) {
		if f := data.FieldByName(name); f.IsValid() {
			f.Set(reflect.ValueOf(v))
		}
	}
	annotations := in.Annotations
	if annotations == nil {
		annotations = map[string]string{}
	}
	set("ObjectMeta", objectMeta{Annotations: annotations, Labels: map[string]string{}})
	set("Spec", podSpec{SecurityContext: in.PodSecurityContext})
	set("NativeSidecars", in.NativeSidecars)
	set("ProxyGID", in.ProxyGID)
	set("ProxyUID", int64(1337))
	set("Values", map[string]any{})

	tmpl, err := template.New("audit").Funcs(template.FuncMap{"default": sprigDefault}).Parse(in.Template)
	if err != nil {
		return err
	}
	refs := map[string]bool{}
	if err := fieldRefs(tmpl.Tree.Root, refs); err != nil {
		return err
	}
	var missing []string
	for name := range refs {
		if _, ok := dataType.FieldByName(name); !ok {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("template reads fields this release's SidecarTemplateData lacks: %s",
			strings.Join(missing, ", "))
	}
	return tmpl.Execute(os.Stdout, data.Interface())
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "injection_template:", err)
		os.Exit(1)
	}
}
