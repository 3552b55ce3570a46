package adminapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether/adminapi"
)

func openAPISpec(t *testing.T) []byte {
	t.Helper()
	return adminapi.OpenAPI()
}

// schema is the subset of OpenAPI 3.0 schema objects the description
// uses; a keyword outside it fails the test, so the check below never
// skips a constraint it does not know.
type schema map[string]any

var knownKeywords = []string{"type", "properties", "required", "additionalProperties", "items", "enum", "$ref", "format", "description", "minimum", "maximum"}

type validator struct {
	schemas map[string]schema
}

func (v *validator) resolve(s schema) (schema, error) {
	if r, ok := s["$ref"].(string); ok {
		name, ok := strings.CutPrefix(r, "#/components/schemas/")
		if !ok || v.schemas[name] == nil {
			return nil, fmt.Errorf("unknown $ref %s", r)
		}
		return v.schemas[name], nil
	}
	return s, nil
}

// check validates value (decoded JSON) against s.
func (v *validator) check(s schema, value any, at string) error {
	s, err := v.resolve(s)
	if err != nil {
		return err
	}
	for k := range s {
		if !slices.Contains(knownKeywords, k) {
			return fmt.Errorf("%s: schema keyword %q is not checked", at, k)
		}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.Contains(enum, value) {
		return fmt.Errorf("%s: %v is not one of %v", at, value, enum)
	}
	switch s["type"] {
	case "object":
		obj, ok := value.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: %T, want an object", at, value)
		}
		props, _ := s["properties"].(map[string]any)
		for _, r := range asList(s["required"]) {
			if _, ok := obj[r]; !ok {
				return fmt.Errorf("%s: required %q missing", at, r)
			}
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if p, ok := props[k]; ok {
				if err := v.check(schema(p.(map[string]any)), obj[k], at+"."+k); err != nil {
					return err
				}
				continue
			}
			switch ap := s["additionalProperties"].(type) {
			case bool:
				if !ap {
					return fmt.Errorf("%s: property %q is not described", at, k)
				}
			case map[string]any:
				if err := v.check(schema(ap), obj[k], at+"."+k); err != nil {
					return err
				}
			case nil:
				if props != nil {
					return fmt.Errorf("%s: property %q is not described (and additionalProperties is unset)", at, k)
				}
			}
		}
	case "array":
		arr, ok := value.([]any)
		if !ok {
			return fmt.Errorf("%s: %T, want an array", at, value)
		}
		items, _ := s["items"].(map[string]any)
		for i, x := range arr {
			if err := v.check(schema(items), x, at+"["+strconv.Itoa(i)+"]"); err != nil {
				return err
			}
		}
	case "string":
		str, ok := value.(string)
		if !ok {
			return fmt.Errorf("%s: %T, want a string", at, value)
		}
		if s["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
				return fmt.Errorf("%s: %q is not a date-time", at, str)
			}
		}
	case "integer":
		f, ok := value.(float64)
		if !ok || f != float64(int64(f)) {
			return fmt.Errorf("%s: %v, want an integer", at, value)
		}
		if m, ok := s["minimum"].(float64); ok && f < m {
			return fmt.Errorf("%s: %v below %v", at, f, m)
		}
		if m, ok := s["maximum"].(float64); ok && f > m {
			return fmt.Errorf("%s: %v above %v", at, f, m)
		}
	case "boolean":
		if _, ok := value.(bool); !ok {
			return fmt.Errorf("%s: %T, want a boolean", at, value)
		}
	default:
		return fmt.Errorf("%s: schema type %v is not checked", at, s["type"])
	}
	return nil
}

func asList(x any) []string {
	var out []string
	list, _ := x.([]any)
	for _, v := range list {
		out = append(out, v.(string))
	}
	return out
}

type operation struct {
	Responses map[string]struct {
		Content map[string]struct {
			Schema schema `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

type spec struct {
	OpenAPI    string                          `json:"openapi"`
	Paths      map[string]map[string]operation `json:"paths"`
	Components struct {
		Schemas map[string]schema `json:"schemas"`
	} `json:"components"`
}

func loadSpec(t *testing.T) (*spec, *validator) {
	t.Helper()
	var sp spec
	if err := json.Unmarshal(openAPISpec(t), &sp); err != nil {
		t.Fatalf("the OpenAPI description is not JSON: %v", err)
	}
	if !strings.HasPrefix(sp.OpenAPI, "3.") {
		t.Fatalf("openapi %q", sp.OpenAPI)
	}
	return &sp, &validator{schemas: sp.Components.Schemas}
}

// route finds the described operation for a request path.
func (sp *spec) route(method, path string) (string, *operation) {
	for p, ops := range sp.Paths {
		re := "^" + regexp.MustCompile(`\\\{[a-z_]+\\\}`).ReplaceAllString(regexp.QuoteMeta(p), `[^/]+`) + "$"
		if regexp.MustCompile(re).MatchString(path) {
			if op, ok := ops[strings.ToLower(method)]; ok {
				return p, &op
			}
		}
	}
	return "", nil
}

// validate checks every recorded answer against the description and
// returns the operations that answered with success.
func validate(t *testing.T, answers []answer) map[string]bool {
	t.Helper()
	sp, v := loadSpec(t)
	ok := map[string]bool{}
	for _, a := range answers {
		p, op := sp.route(a.method, a.path)
		if op == nil {
			if a.status == 404 || a.status == 405 {
				continue // an undescribed route, answered as such
			}
			t.Errorf("%s %s answered %d but is not described", a.method, a.path, a.status)
			continue
		}
		resp, found := op.Responses[strconv.Itoa(a.status)]
		if !found {
			resp, found = op.Responses["default"]
		}
		if !found {
			t.Errorf("%s %s: status %d not described", a.method, p, a.status)
			continue
		}
		mt, _, _ := mime.ParseMediaType(a.contentType)
		media, found := resp.Content[mt]
		if !found {
			t.Errorf("%s %s %d: content type %q not described", a.method, p, a.status, a.contentType)
			continue
		}
		if mt != "application/json" && mt != "application/problem+json" {
			if a.status < 300 {
				ok[strings.ToUpper(a.method)+" "+p] = true
			}
			continue
		}
		var value any
		if err := json.Unmarshal(a.body, &value); err != nil {
			t.Errorf("%s %s %d: not JSON: %s", a.method, p, a.status, short(a.body))
			continue
		}
		if err := v.check(media.Schema, value, "body"); err != nil {
			t.Errorf("%s %s %d: %v in %s", a.method, p, a.status, err, short(a.body))
			continue
		}
		if a.status < 300 {
			ok[strings.ToUpper(a.method)+" "+p] = true
		}
	}
	return ok
}

// Every answer the API gave in a run of most of this package's scenarios
// validates against the OpenAPI description, and every described
// operation answered with success at least once.
func TestResponsesMatchOpenAPI(t *testing.T) {
	w := newWorld(t)
	scenario(t, w)
	answered := validate(t, w.rec.all())
	sp, _ := loadSpec(t)
	for p, ops := range sp.Paths {
		for m := range ops {
			key := strings.ToUpper(m) + " " + p
			if !answered[key] && !orgRoute(p) {
				t.Errorf("%s never answered with success in the scenario", key)
			}
		}
	}
}

func orgRoute(p string) bool {
	return strings.HasPrefix(p, "/orgs") || strings.HasSuffix(p, "/reauthorize")
}

// The checker itself catches what it should.
func TestValidatorCatches(t *testing.T) {
	_, v := loadSpec(t)
	conn := schema{"$ref": "#/components/schemas/Connection"}
	for name, body := range map[string]string{
		"extra field":  `{"id":"x","kind":"peer","name":"","description":"","local_name":"","remote_name":"","status":"active","remote_private":false,"rules":"","rules_version":0,"settings":{},"health":{"failures":0},"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","version":3}`,
		"bad enum":     `{"id":"x","kind":"robot","name":"","description":"","local_name":"","remote_name":"","status":"active","remote_private":false,"rules":"","rules_version":0,"settings":{},"health":{"failures":0},"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}`,
		"missing":      `{"id":"x"}`,
		"bad date":     `{"id":"x","kind":"peer","name":"","description":"","local_name":"","remote_name":"","status":"active","remote_private":false,"rules":"","rules_version":0,"settings":{},"health":{"failures":0},"created_at":"yesterday","updated_at":"2026-01-01T00:00:00Z"}`,
		"bad settings": `{"id":"x","kind":"peer","name":"","description":"","local_name":"","remote_name":"","status":"active","remote_private":false,"rules":"","rules_version":0,"settings":{"a":1},"health":{"failures":0},"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z"}`,
	} {
		var value any
		if err := json.Unmarshal([]byte(body), &value); err != nil {
			t.Fatal(err)
		}
		if err := v.check(conn, value, "body"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// scenario exercises every peer route with successes and failures.
func scenario(t *testing.T, w *world) {
	c := w.connect("session-a")
	w.must(200, "session-a", "GET", "/connections?limit=1", nil)
	w.must(200, "session-a", "PATCH", "/connections/"+c.ID, map[string]any{"name": "Renamed", "settings": map[string]string{"project": "HD"}})
	w.must(200, "session-a", "POST", "/connections/"+c.ID+"/pause", nil)
	w.must(409, "session-a", "POST", "/connections/"+c.ID+"/pause", nil)
	w.must(200, "session-a", "POST", "/connections/"+c.ID+"/activate", nil)
	w.must(200, "session-a", "GET", "/connections/"+c.ID+"/events?limit=2", nil)
	w.must(200, "session-a", "GET", "/connections/"+c.ID+"/events", nil)
	p, code := w.initiate("session-a")
	w.must(200, "session-b", "POST", "/invitations/preview", map[string]string{"code": code})
	w.must(400, "session-b", "POST", "/invitations/preview", map[string]string{"code": "not a code"})
	w.must(200, "session-a", "POST", "/connections/"+p.ID+"/revoke", nil)
	w.must(200, "session-a", "DELETE", "/connections/"+c.ID, nil)
	w.must(404, "session-b", "GET", "/connections/"+c.ID, nil)
	w.must(401, "", "GET", "/connections", nil)
	w.must(200, "", "GET", "/openapi.json", nil)
	other := open(t, w.net, "other", "https://other.example")
	_, code2, err := other.Initiate(t.Context(), tetherInitiate("https://hub.example"))
	if err != nil {
		t.Fatal(err)
	}
	w.must(201, "session-b", "POST", "/invitations/accept", map[string]string{"code": code2})
	w.must(200, "session-a", "GET", "/info", nil)
	w.must(200, "session-b", "POST", "/probe", map[string]string{"url": "https://other.example"})
	w.must(403, "session-b", "POST", "/probe", map[string]string{"url": "https://127.0.0.1/tether"})
	w.must(503, "session-b", "POST", "/probe", map[string]string{"url": "https://nowhere.example"})
	w.must(200, "session-a", "GET", "/events?limit=3", nil)
	w.must(400, "session-a", "GET", "/events?cursor=nope", nil)
	sctx, cancel := context.WithCancel(t.Context())
	w.stream(sctx, "session-a", "", "")
	cancel()
	w.eventually("the stream's answer is recorded", func() bool {
		for _, a := range w.rec.all() {
			if a.path == "/events/stream" {
				return true
			}
		}
		return false
	})
}
