package httptransport_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
)

// A public instance serving its Handler from an http.Server with the
// timeouts it needs: WriteTimeout longer than the node's PollWait, since a
// poll is held open that long before it is answered.
func ExampleNewHandler() {
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	policy := tether.DevelopmentURLPolicy() // loopback, for this example only
	cfg := tether.Config{
		Store:     memstore.New(),
		Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		URLPolicy: policy,
		Endpoint:  "http://" + ln.Addr().String() + "/tether",
		PollWait:  25 * time.Second, // the default
	}
	node, err := tether.Open(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/tether/", httptransport.NewHandler(node, httptransport.HandlerConfig{}))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second, // a body is at most HandlerConfig.MaxBody
		WriteTimeout:      60 * time.Second, // must exceed PollWait
		IdleTimeout:       120 * time.Second,
	}
	go srv.Serve(ln)
	defer srv.Shutdown(ctx)
	fmt.Println("WriteTimeout exceeds PollWait:", srv.WriteTimeout > cfg.PollWait)

	// Anything but a signed POST is refused before it reaches the node.
	resp, err := http.Get(cfg.Endpoint + "/v1/poll")
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.Status)
	// Output:
	// WriteTimeout exceeds PollWait: true
	// 405 Method Not Allowed
}

// A Client whose HTTP transport goes through the host's proxy and TLS
// settings, and still checks every address against the URL policy and
// refuses redirects.
func ExampleNewClient_transport() {
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.Proxy = http.ProxyFromEnvironment
	base.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS13}
	client := httptransport.NewClient(httptransport.ClientConfig{
		Transport: base,
		URLPolicy: tether.URLPolicy{}, // https to public addresses only
	})
	defer client.Close()

	// An endpoint the policy refuses is never contacted.
	_, err := client.Call(context.Background(), "https://169.254.169.254/tether", &tether.Request{Op: tether.OpPush})
	fmt.Println(tether.ErrorCode(err))
	// Output:
	// url_refused
}
