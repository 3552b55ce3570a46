package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// TestMain runs the private peers' process when the test binary is
// started as that process: the measurement starts os.Executable() again,
// with childEnv set.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// measure runs the program with args and returns its figures, as the
// -json object at the end of its output.
func measure(t *testing.T, args ...string) map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errs bytes.Buffer
	args = append([]string{"-settle", "1s", "-measure", "1s", "-json"}, args...)
	if err := run(ctx, args, &out, &errs); err != nil {
		t.Fatalf("scale %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out.String(), errs.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var figures map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &figures); err != nil {
		t.Fatalf("the last line is not the JSON object: %v\n%s", err, out.String())
	}
	// Every figure has its line too.
	for name := range figures {
		if !strings.Contains(out.String(), "\n"+name+" ") && !strings.HasPrefix(out.String(), name+" ") {
			t.Errorf("figure %s has no line:\n%s", name, out.String())
		}
	}
	t.Logf("scale %s:\n%s", strings.Join(args, " "), errs.String())
	return figures
}

// number returns a numeric figure, failing the test when it is missing.
func number(t *testing.T, figures map[string]any, name string) float64 {
	t.Helper()
	v, ok := figures[name].(float64)
	if !ok {
		t.Fatalf("figure %s is %v (%T), not a number", name, figures[name], figures[name])
	}
	return v
}

// checkFigures checks what every run with conns connections and private
// private peers reports.
func checkFigures(t *testing.T, figures map[string]any, conns, private int, postgres bool) {
	t.Helper()
	positive := []string{"start_s", "goroutines", "goroutines_base", "rss_mb", "heap_mb", "measure_s"}
	nonNegative := []string{"cpu_pct", "store_calls_per_s", "goroutines_per_conn"}
	if private > 0 {
		positive = append(positive, "child_goroutines_per_node", "child_goroutines", "child_rss_mb", "child_bytes_per_node", "private_ready_s")
		nonNegative = append(nonNegative, "goroutines_per_poll", "child_cpu_pct")
		if _, ok := figures["bytes_per_poll"].(float64); !ok {
			t.Errorf("bytes_per_poll is %v", figures["bytes_per_poll"])
		}
		for _, name := range []string{"polls_held", "polls_held_max", "child_nodes", "child_polls"} {
			if v := number(t, figures, name); v != float64(private) {
				t.Errorf("%s = %v, want %d", name, v, private)
			}
		}
	}
	if postgres {
		nonNegative = append(nonNegative, "pg_commits_per_s", "pg_cpu_pct")
	} else {
		for _, name := range []string{"pg_commits_per_s", "pg_cpu_pct"} {
			if v, ok := figures[name]; ok {
				t.Errorf("%s = %v without PostgreSQL", name, v)
			}
		}
	}
	for _, name := range positive {
		if v := number(t, figures, name); !(v > 0) {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	for _, name := range nonNegative {
		if v := number(t, figures, name); !(v >= 0) {
			t.Errorf("%s = %v, want >= 0", name, v)
		}
	}
	if v := number(t, figures, "conns"); v != float64(conns) {
		t.Errorf("conns = %v, want %d", v, conns)
	}
	if s, ok := figures["store_calls_by_method"].(string); !ok || s == "" {
		t.Errorf("store_calls_by_method is %v", figures["store_calls_by_method"])
	}
	// Run holds more goroutines than before it started.
	if number(t, figures, "goroutines") <= number(t, figures, "goroutines_base") {
		t.Errorf("goroutines %v, not more than before Run (%v)", figures["goroutines"], figures["goroutines_base"])
	}
}

func TestMemstore(t *testing.T) {
	figures := measure(t, "-store", "memstore", "-conns", "200", "-private", "20")
	checkFigures(t, figures, 200, 20, false)
}

// SQLite in a file kept between two runs: the second measures the
// connections the first created.
func TestSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scale.db")
	figures := measure(t, "-store", "sqlite", "-sqlite", path, "-reuse", "-conns", "200", "-private", "20")
	checkFigures(t, figures, 200, 20, false)
	if v := number(t, figures, "reused"); v != 0 {
		t.Errorf("first run: reused = %v", v)
	}
	figures = measure(t, "-store", "sqlite", "-sqlite", path, "-reuse", "-conns", "200", "-private", "20")
	checkFigures(t, figures, 200, 20, false)
	if v := number(t, figures, "reused"); v != 1 {
		t.Errorf("second run: reused = %v", v)
	}
}

// Without -reuse an existing file is refused, not overwritten.
func TestSQLiteExists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scale.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := run(context.Background(), []string{"-store", "sqlite", "-sqlite", path, "-conns", "2"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "-reuse") {
		t.Fatalf("run on an existing file: %v", err)
	}
}

func TestPostgres(t *testing.T) {
	base := os.Getenv("TETHER_POSTGRES_URL")
	if base == "" {
		if os.Getenv("TETHER_REQUIRE_POSTGRES") == "1" {
			t.Fatal("TETHER_POSTGRES_URL is not set, and TETHER_REQUIRE_POSTGRES=1 is set")
		}
		t.Skip("TETHER_POSTGRES_URL is not set: the PostgreSQL variant is skipped (.ci/run sets it)")
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "tether_scale_test_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		db, err := sql.Open("pgx", base)
		if err != nil {
			return
		}
		defer db.Close()
		_, _ = db.Exec(`DROP SCHEMA IF EXISTS ` + schema + ` CASCADE`)
	})
	peer := filepath.Join(t.TempDir(), "peer.db")
	figures := measure(t, "-store", "postgres", "-postgres", base, "-schema", schema, "-peer-sqlite", peer, "-conns", "200", "-private", "20")
	checkFigures(t, figures, 200, 20, true)
}

// Copies' IDs sort by their time part, then by their number, and read
// back the time they were made with.
func TestCopyID(t *testing.T) {
	ms := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixMilli()
	a, b, c := copyID(ms, 0), copyID(ms, 1), copyID(ms+1, 0)
	if !(a < b && b < c) {
		t.Errorf("IDs out of order: %s %s %s", a, b, c)
	}
	if got, err := idMillis(b); err != nil || got != ms {
		t.Errorf("idMillis(%s) = %d, %v, want %d", b, got, err, ms)
	}
	c0 := &tether.Connection{
		ID: a, Kind: tether.KindPeer, Status: tether.StatusActive, Mode: tether.ModeBasic, Role: tether.RoleInitiator,
		Name: "copy", LocalName: "scale", RemoteName: "peer",
	}
	if err := c0.Validate(); err != nil {
		t.Errorf("a connection with ID %s: %v", a, err)
	}
}
