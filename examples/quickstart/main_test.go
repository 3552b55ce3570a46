package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

func TestQuickstart(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out, options{dataDir: t.TempDir(), oneByOne: 20, burst: 300}); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"data: SQLite files",
		"pending",
		"invitation code (",
		"tether_inv_",
		"initiator private: false, destination private: true",
		"active, connected to Engineering",
		"active, connected to Support",
		"already accepted",
		"support -> engineering (long-poll): 20 delivered",
		"engineering -> support (push):      20 delivered",
		"600 messages delivered",
		"pause    -> paused",
		"1 queued",
		"activate -> active, and the queued message arrived",
		"delete   -> deleted",
		"activate -> refused",
		"deleted   by admin@support",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// With -postgres the same walk-through keeps its data in PostgreSQL.
func TestQuickstartPostgres(t *testing.T) {
	u := os.Getenv("TETHER_POSTGRES_URL")
	if u == "" {
		t.Skip("TETHER_POSTGRES_URL is not set: the PostgreSQL walk-through is skipped (.ci/run sets it)")
	}
	var out bytes.Buffer
	if err := run(context.Background(), &out, options{postgres: u, oneByOne: 5, burst: 50}); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{"data: PostgreSQL", "100 messages delivered", "activate -> active, and the queued message arrived"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
