package tether_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
)

func TestTransitionTable(t *testing.T) {
	statuses := []tether.Status{tether.StatusPending, tether.StatusActive, tether.StatusPaused, tether.StatusInactive, tether.StatusDeleted}
	actions := []tether.Action{tether.ActionAccept, tether.ActionPause, tether.ActionActivate, tether.ActionDelete,
		tether.ActionRevoke, tether.ActionExpire, tether.ActionAuthLost, tether.ActionReauthorize}
	// Every allowed move; anything else must be refused.
	want := map[string]tether.Status{
		"pending/accept":       tether.StatusActive,
		"pending/revoke":       tether.StatusDeleted,
		"pending/expire":       tether.StatusDeleted,
		"pending/delete":       tether.StatusDeleted,
		"active/pause":         tether.StatusPaused,
		"active/auth_lost":     tether.StatusInactive,
		"active/delete":        tether.StatusDeleted,
		"paused/activate":      tether.StatusActive,
		"paused/auth_lost":     tether.StatusInactive,
		"paused/delete":        tether.StatusDeleted,
		"inactive/reauthorize": tether.StatusActive,
		"inactive/delete":      tether.StatusDeleted,
	}
	got := map[string]tether.Status{}
	for _, s := range statuses {
		for _, a := range actions {
			next, ok := tether.Next(s, a)
			if ok {
				got[fmt.Sprintf("%s/%s", s, a)] = next
			} else if next != s {
				t.Errorf("Next(%s, %s) refused but returned %s", s, a, next)
			}
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("transition table (-want +got):\n%s", diff)
	}
	if _, ok := tether.Next("bogus", tether.ActionDelete); ok {
		t.Fatal("an unknown status can be deleted")
	}
}

func TestConnectionValidate(t *testing.T) {
	valid := func() *tether.Connection {
		return &tether.Connection{
			ID: "conn_00000000000000000000000001", Kind: tether.KindPeer, Name: "A to B",
			LocalName: "A", RemoteName: "B", Mode: tether.ModeBasic, Status: tether.StatusPending, Role: tether.RoleInitiator,
			RemoteURL: "https://b.example/tether",
		}
	}
	if err := valid().Validate(); err != nil {
		t.Fatalf("valid connection: %v", err)
	}
	for _, tc := range []struct {
		field string
		mod   func(*tether.Connection)
	}{
		{"ID", func(c *tether.Connection) { c.ID = "conn_1" }},
		{"ID", func(c *tether.Connection) { c.ID = "CONN_00000000000000000000000001" }},
		{"ID", func(c *tether.Connection) { c.ID = "conn_0000000000000000000000000w" }},
		{"Kind", func(c *tether.Connection) { c.Kind = "" }},
		{"Status", func(c *tether.Connection) { c.Status = "Active" }},
		{"Mode", func(c *tether.Connection) { c.Mode = "Basic" }},
		{"Role", func(c *tether.Connection) { c.Role = "" }},
		{"Name", func(c *tether.Connection) { c.Name = "" }},
		{"Name", func(c *tether.Connection) { c.Name = strings.Repeat("n", tether.MaxNameLen+1) }},
		{"Name", func(c *tether.Connection) { c.Name = "a\u2028b" }},
		{"Owner", func(c *tether.Connection) { c.Owner = "x\x1b[31m" }},
		{"Description", func(c *tether.Connection) { c.Description = "\xc3\x28" }},
		{"LocalName", func(c *tether.Connection) { c.LocalName = "a\x00" }},
		{"RemoteURL", func(c *tether.Connection) { c.RemoteURL = "https://b.example/\x7f" }},
		{"RemoteURL", func(c *tether.Connection) { c.RemoteURL = "https://b.example/" + strings.Repeat("p", tether.MaxURLLen) }},
		{"RemoteURL", func(c *tether.Connection) { c.RemoteURL = "javascript:alert(1)" }},
		{"RemoteURL", func(c *tether.Connection) { c.RemoteURL = "https://b.example/#frag" }},
		{"LocalURL", func(c *tether.Connection) { c.LocalURL = "//b.example" }},
		{"Rules", func(c *tether.Connection) { c.Rules = "\x00" }},
		{"Rules", func(c *tether.Connection) { c.Rules = strings.Repeat("r", tether.MaxRulesLen+1) }},
		{"Settings", func(c *tether.Connection) { c.Settings = map[string]string{"": "v"} }},
		{"Settings", func(c *tether.Connection) { c.Settings = map[string]string{"k": "\xff"} }},
	} {
		c := valid()
		tc.mod(c)
		err := c.Validate()
		if !errors.Is(err, tether.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", tc.field, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.field+":") {
			t.Errorf("%q does not name field %s", err, tc.field)
		}
	}
	// Org connections need neither mode, role nor short names.
	org := &tether.Connection{ID: "conn_00000000000000000000000002", Kind: tether.KindOrg, Name: "Salesforce", Status: tether.StatusPending}
	if err := org.Validate(); err != nil {
		t.Fatalf("org connection: %v", err)
	}
}

func TestErrors(t *testing.T) {
	cause := errors.New("disk full")
	err := fmt.Errorf("host: %w", &tether.Error{Code: tether.CodeAlreadyUsed, Op: "tether: accept", Message: "invitation was already used", Err: cause})
	if !errors.Is(err, tether.ErrAlreadyUsed) || errors.Is(err, tether.ErrExpired) {
		t.Fatal("sentinel matching by code is wrong")
	}
	if !errors.Is(err, cause) {
		t.Fatal("cause not unwrapped")
	}
	if got := tether.ErrorCode(err); got != tether.CodeAlreadyUsed {
		t.Fatalf("ErrorCode = %q", got)
	}
	if got, want := err.Error(), "host: tether: accept: invitation was already used: disk full"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	for err, want := range map[error]tether.Code{nil: "", cause: tether.CodeInternal, tether.ErrNotFound: tether.CodeNotFound} {
		if got := tether.ErrorCode(err); got != want {
			t.Errorf("ErrorCode(%v) = %q, want %q", err, got, want)
		}
	}
	if got := (&tether.Error{Code: tether.CodeKeyMismatch}).Error(); got != "key mismatch" {
		t.Errorf("message from code: %q", got)
	}
	wrapped := tether.Wrap(tether.CodeUnavailable, "x: call", cause)
	if tether.ErrorCode(wrapped) != tether.CodeUnavailable || tether.Wrap(tether.CodeInternal, "y", wrapped) != wrapped {
		t.Fatal("Wrap must keep an existing code")
	}
}
