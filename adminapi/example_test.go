package adminapi_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/adminapi"
	"github.com/tetherkit/tether/memstore"
)

// A host mounts the API under a prefix and maps its own sessions to
// tenants.
func ExampleNew() {
	ctx := context.Background()
	node, err := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://help.example/tether"})
	if err != nil {
		panic(err)
	}
	api, err := adminapi.New(adminapi.Config{
		Node: node,
		Authenticate: func(r *http.Request) (adminapi.Caller, error) {
			// The host's own session lookup; here a header for brevity.
			if team := r.Header.Get("X-Team"); team != "" {
				return adminapi.Caller{Owner: team, Actor: "admin@" + team}, nil
			}
			return adminapi.Caller{}, errors.New("no session")
		},
	})
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/tether/", http.StripPrefix("/tether", api))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	body := `{"mode": "basic", "local_name": "Help", "remote_name": "Eng", "name": "Help to Eng"}`
	req, _ := http.NewRequest("POST", srv.URL+"/tether/connections", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Team", "acme")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status)

	req, _ = http.NewRequest("GET", srv.URL+"/tether/connections/nope", nil)
	req.Header.Set("X-Team", "acme")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		panic(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.Status, resp.Header.Get("Content-Type"))
	fmt.Print(string(b))
	// Output:
	// 201 Created
	// 404 Not Found application/problem+json
	// {"type":"https://github.com/tetherkit/tether/blob/main/adminapi/doc.go#not_found","title":"Not Found","status":404,"detail":"no such connection","code":"not_found"}
}
