package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/tethertest"
)

func code(t *testing.T, now time.Time) string {
	t.Helper()
	n, err := tether.Open(context.Background(), tether.Config{Store: memstore.New(), Endpoint: "https://alpha.example/t", Clock: tethertest.NewClock(now)})
	if err != nil {
		t.Fatal(err)
	}
	_, c, err := n.Initiate(context.Background(), tether.InitiateRequest{Mode: tether.ModeScript, LocalName: "Alpha", RemoteName: "Beta", Name: "Alpha to Beta", Description: "Incidents"})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestInspect(t *testing.T) {
	now := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	c := code(t, now)
	for name, tc := range map[string]struct {
		args  []string
		stdin string
		want  []string
		exit  int
	}{
		"argument": {[]string{"inspect", c}, "", []string{"valid invitation from Alpha", `"Alpha to Beta"`, "mode:        script", "destination: private (no URL)", "expires:     2026-11-24T09:00:00Z (in 72h0m0s)"}, 0},
		"stdin":    {[]string{"inspect"}, c + "\n", []string{"valid invitation from Alpha"}, 0},
		"typo":     {[]string{"inspect", c[:50] + "Q" + c[51:]}, "", []string{"invalid invitation (damaged_code)"}, 1},
		"junk":     {[]string{"inspect", "hello"}, "", []string{"invalid invitation (malformed)"}, 1},
		"usage":    {nil, "", []string{"usage:"}, 2},
	} {
		t.Run(name, func(t *testing.T) {
			if name == "typo" && c[50] == 'Q' {
				tc.args[1] = c[:50] + "R" + c[51:]
			}
			var out, errOut bytes.Buffer
			exit := run(tc.args, strings.NewReader(tc.stdin), &out, &errOut, now.Add(time.Second))
			if exit != tc.exit {
				t.Fatalf("exit %d, want %d; stderr %s", exit, tc.exit, errOut.String())
			}
			all := out.String() + errOut.String()
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
			if strings.Contains(errOut.String(), c[20:60]) {
				t.Error("an error quotes the code")
			}
		})
	}
	var out bytes.Buffer
	if exit := run([]string{"inspect", "-json", c}, nil, &out, &out, now); exit != 0 {
		t.Fatalf("-json exit %d: %s", exit, out.String())
	}
	var inv tether.Invitation
	if err := json.Unmarshal(out.Bytes(), &inv); err != nil || inv.Name != "Alpha to Beta" {
		t.Fatalf("-json output %q: %v", out.String(), err)
	}
}

func TestKeygen(t *testing.T) {
	var a, b bytes.Buffer
	if run([]string{"keygen"}, nil, &a, &a, time.Now()) != 0 || run([]string{"keygen"}, nil, &b, &b, time.Now()) != 0 {
		t.Fatal("keygen failed")
	}
	key, err := tether.ParseSealingKey(a.String()) // as printed, newline included
	if err != nil || len(key) != 32 || a.String() == b.String() {
		t.Fatalf("keys %q and %q", a.String(), b.String())
	}
	if _, err := tether.NewSealer("k", map[string][]byte{"k": key}); err != nil {
		t.Fatal(err)
	}
}

func TestMigrations(t *testing.T) {
	dir := t.TempDir()
	var out, errb bytes.Buffer
	if code := run([]string{"migrations", "-dialect", "postgres", "-out", dir}, nil, &out, &errb, time.Now()); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	all, err := sqlstore.Migrations(sqlstore.PostgreSQL)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all {
		body, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%04d_%s.sql", m.Version, m.Name)))
		if err != nil || string(body) != m.SQL {
			t.Fatalf("migration %d: %v", m.Version, err)
		}
	}
	if n := strings.Count(out.String(), "\n"); n != len(all) {
		t.Fatalf("printed %d files, want %d:\n%s", n, len(all), out.String())
	}
	// Again: the same files are left alone; a changed one is not overwritten.
	if code := run([]string{"migrations", "-dialect", "postgres", "-out", dir}, nil, &out, &errb, time.Now()); code != 0 {
		t.Fatalf("second run: exit %d: %s", code, errb.String())
	}
	changed := filepath.Join(dir, "0001_init.sql")
	if err := os.WriteFile(changed, []byte("-- edited"), 0o644); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := run([]string{"migrations", "-dialect", "postgres", "-out", dir}, nil, &out, &errb, time.Now()); code != 1 || !strings.Contains(errb.String(), "differs") {
		t.Fatalf("an edited file: exit %d: %s", code, errb.String())
	}
	if body, _ := os.ReadFile(changed); string(body) != "-- edited" {
		t.Fatal("an edited file was overwritten")
	}
	for _, args := range [][]string{{"migrations"}, {"migrations", "-dialect", "mysql", "-out", dir}, {"migrations", "-dialect", "sqlite"}} {
		if code := run(args, nil, &out, &errb, time.Now()); code != 2 {
			t.Fatalf("%v: exit %d, want 2", args, code)
		}
	}
}
