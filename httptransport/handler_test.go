package httptransport_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
)

// post sends a POST with a (meaningless) Tether token and returns the
// answer and its body.
func post(t testing.TB, url string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Tether x")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

type handlerFunc func(ctx context.Context, r *tether.Request) (*tether.Response, error)

func (f handlerFunc) Handle(ctx context.Context, r *tether.Request) (*tether.Response, error) {
	return f(ctx, r)
}

// A signed refusal is answered with its code's HTTP status, a Retry-After
// when it asks for a wait, the token and the signed body; the Client hands
// all of it back.
func TestHandlerAnswersSignedRefusals(t *testing.T) {
	for _, tc := range []struct {
		code       tether.Code
		retryAfter time.Duration
		status     int
		header     string // Retry-After
	}{
		{"", 0, http.StatusOK, ""},
		{tether.CodePaused, 1500 * time.Millisecond, http.StatusServiceUnavailable, "2"},
		{tether.CodeGone, 0, http.StatusGone, ""},
		{tether.CodeRevoked, 0, http.StatusGone, ""},
		{tether.CodeClockSkew, 0, http.StatusBadRequest, ""},
		{tether.CodeUnavailable, 10 * time.Second, http.StatusServiceUnavailable, "10"},
		{tether.CodeInternal, 0, http.StatusInternalServerError, ""},
	} {
		t.Run(string(tc.code), func(t *testing.T) {
			body := []byte(`{"refused":{"code":"` + string(tc.code) + `","message":"m"}}`)
			if tc.code == "" {
				body = []byte(`{"acked":3}`)
			}
			node := handlerFunc(func(context.Context, *tether.Request) (*tether.Response, error) {
				return &tether.Response{Auth: "signed.token", Body: body, Code: tc.code, RetryAfter: tc.retryAfter}, nil
			})
			srv := httptest.NewServer(httptransport.NewHandler(node, httptransport.HandlerConfig{}))
			defer srv.Close()

			resp, raw := post(t, srv.URL+"/v1/push")
			if resp.StatusCode != tc.status || resp.Header.Get("Retry-After") != tc.header ||
				resp.Header.Get("Tether-Auth") != "signed.token" || string(raw) != string(body) {
				t.Fatalf("status %d, Retry-After %q, Tether-Auth %q, body %s",
					resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("Tether-Auth"), raw)
			}

			c := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.DevelopmentURLPolicy()})
			got, err := c.Call(context.Background(), srv.URL, &tether.Request{Op: tether.OpPush, Auth: "x"})
			if err != nil {
				t.Fatal(err)
			}
			// Retry-After carries whole seconds, rounded up.
			want := &tether.Response{Auth: "signed.token", Body: body, Code: tc.code}
			if tc.header != "" {
				n, _ := strconv.Atoi(tc.header)
				want.RetryAfter = time.Duration(n) * time.Second
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("through the Client (-want +got):\n%s", diff)
			}
		})
	}
}

// The Handler routes every operation a Node answers, and only those.
func TestHandlerRoutesEveryOperation(t *testing.T) {
	var (
		mu  sync.Mutex
		got []tether.Op
	)
	node := handlerFunc(func(_ context.Context, r *tether.Request) (*tether.Response, error) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r.Op)
		return &tether.Response{Auth: "t", Body: []byte("{}")}, nil
	})
	srv := httptest.NewServer(httptransport.NewHandler(node, httptransport.HandlerConfig{}))
	defer srv.Close()
	ops := tether.Ops()
	if len(ops) == 0 {
		t.Fatal("tether.Ops is empty")
	}
	for _, op := range ops {
		if resp, _ := post(t, srv.URL+"/x/v1/"+string(op)); resp.StatusCode != http.StatusOK {
			t.Errorf("%s: status %d", op, resp.StatusCode)
		}
	}
	for _, op := range []string{"unknown", "Push", "push%00"} {
		if resp, _ := post(t, srv.URL+"/x/v1/"+op); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: status %d, want 404", op, resp.StatusCode)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(ops, got); diff != "" {
		t.Fatalf("operations handled (-want +got):\n%s", diff)
	}
}

// A Handle that returns neither a response nor an error, or an unsigned
// response, is an internal error, not an empty 200.
func TestHandlerRefusesUnsignedResponse(t *testing.T) {
	for name, resp := range map[string]*tether.Response{
		"nil":      nil,
		"no token": {Body: []byte("{}")},
	} {
		t.Run(name, func(t *testing.T) {
			node := handlerFunc(func(context.Context, *tether.Request) (*tether.Response, error) { return resp, nil })
			srv := httptest.NewServer(httptransport.NewHandler(node, httptransport.HandlerConfig{}))
			defer srv.Close()
			r, _ := post(t, srv.URL+"/v1/push")
			if r.StatusCode != http.StatusInternalServerError || r.Header.Get("Tether-Auth") != "" {
				t.Fatalf("status %d, Tether-Auth %q", r.StatusCode, r.Header.Get("Tether-Auth"))
			}
		})
	}
}
