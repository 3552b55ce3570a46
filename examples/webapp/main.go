// Command webapp is a multi-tenant help desk that connects to partners and
// to CRMs, with a Connections page built on tether: server-rendered pages
// (html/template, a little inline JavaScript, no build step) for two
// tenants, Acme Support and Globex Help Desk, each seeing only its own
// connections.
//
//   - Initiate connection: the partner's URL, which the app probes for
//     what it supports, or "I don't have a URL" for a private partner;
//     the configuration mode; the names; then the invitation code to copy.
//   - Accept invitation: paste a code, see who invites you to what,
//     confirm.
//   - The list with statuses and health, a page per connection with its
//     history, Edit, Pause, Activate, Delete, Revoke, "Go to remote".
//   - New org connection: Salesforce (production or sandbox, with a My
//     Domain login host), Dynamics 365 (by environment type), or the demo
//     provider; Connect opens the login in a popup; Re-authorize when the
//     org's access was withdrawn.
//
// Pages update live from the admin API's event stream. The app is a
// public tether instance: partners, and private agents behind firewalls
// (examples/agent), reach it at <public URL>/tether.
//
//	go run ./examples/webapp -allow-private-network -demo-oauth
//	go run ./examples/webapp -data ./webapp-data            # keep the data
//	go run ./examples/webapp -postgres 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
//
// Flags:
//
//	-addr HOST:PORT          where to listen (127.0.0.1:8080)
//	-public-url URL          the URL browsers and partners reach the app on
//	                         (default http://<addr>)
//	-data DIR                the SQLite database and the sealing key
//	                         (default: a new temporary directory)
//	-postgres URL            keep the data in PostgreSQL instead, in schema
//	                         tether_webapp (recreated at each start unless
//	                         -data names the directory of its sealing key)
//	-allow-private-network   contact partners on loopback and private
//	                         addresses and over plain http (demos)
//	-demo-oauth              start the demo OAuth provider (needs node and
//	                         npm ci --prefix internal/oauthtest/op)
//	-name NAME               what partners that probe this instance see
//	-modes LIST              the configuration modes offered (basic,visual,script)
//
// Salesforce and Dynamics 365 logins need the app's credentials at the
// provider, from the environment: SALESFORCE_CLIENT_ID and
// SALESFORCE_CLIENT_SECRET, DYNAMICS_CLIENT_ID and DYNAMICS_CLIENT_SECRET.
// Without them the New org connection page says what to set.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tetherkit/tether"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "webapp:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg config
	addr := flag.String("addr", "127.0.0.1:8080", "`host:port` to listen on")
	flag.StringVar(&cfg.PublicURL, "public-url", "", "the `URL` browsers and partners reach the app on (default http://<addr>)")
	flag.StringVar(&cfg.DataDir, "data", "", "`directory` for the SQLite database and the sealing key (default: a new temporary directory)")
	flag.StringVar(&cfg.Postgres, "postgres", "", "PostgreSQL `URL`: keep the data there, in schema tether_webapp")
	flag.BoolVar(&cfg.AllowPrivateNetwork, "allow-private-network", false, "contact partners on loopback and private addresses and over plain http")
	flag.BoolVar(&cfg.DemoOAuth, "demo-oauth", false, "start the demo OAuth provider and offer it for org connections (needs node)")
	flag.StringVar(&cfg.DisplayName, "name", "Help Desk", "what partners that probe this instance see")
	modes := flag.String("modes", "", "configuration modes offered, comma-separated (default basic,visual,script)")
	flag.Parse()
	for _, m := range strings.Split(*modes, ",") {
		if m = strings.TrimSpace(m); m != "" {
			cfg.Modes = append(cfg.Modes, tether.Mode(m))
		}
	}
	cfg.SalesforceKey, cfg.SalesforceSecret = os.Getenv("SALESFORCE_CLIENT_ID"), os.Getenv("SALESFORCE_CLIENT_SECRET")
	cfg.DynamicsClientID, cfg.DynamicsSecret = os.Getenv("DYNAMICS_CLIENT_ID"), os.Getenv("DYNAMICS_CLIENT_SECRET")
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))

	if cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "tether-webapp-")
		if err != nil {
			return err
		}
		cfg.DataDir = dir
		// A new sealing key cannot read what an earlier run sealed.
		cfg.FreshSchema = true
	} else if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	if cfg.PublicURL == "" {
		cfg.PublicURL = "http://" + ln.Addr().String()
	}
	a, err := newApp(ctx, cfg)
	if err != nil {
		ln.Close()
		return err
	}
	defer a.Close()
	srv := &http.Server{
		Handler:           a,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		// Longer than a private partner's long-poll (25 s). The event
		// stream of a page writes a heartbeat every 15 s, but a write
		// timeout ends it anyway: the browser reconnects and resumes.
		WriteTimeout: 60 * time.Second,
		IdleTimeout:  120 * time.Second,
	}
	shutdown := make(chan struct{})
	go func() {
		defer close(shutdown)
		<-ctx.Done()
		a.cancel() // ends event streams and long-polls, which Shutdown would wait for
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	where := "SQLite in " + cfg.DataDir
	if cfg.Postgres != "" {
		where = "PostgreSQL schema tether_webapp"
	}
	fmt.Printf("help desk at %s (data: %s)\n", cfg.PublicURL, where)
	fmt.Printf("partners and agents connect to %s/tether\n", cfg.PublicURL)
	fmt.Printf("sign in at %s/signin\n", cfg.PublicURL)
	if a.demo != nil {
		fmt.Printf("demo provider at %s; to withdraw the access of an account you connected:\n  curl -X POST %s/test/withdraw/<account>\n", a.demo.Issuer, a.demo.Issuer)
	}
	err = srv.Serve(ln)
	stop()
	<-shutdown // every request has ended: the deferred Close may close the database
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
