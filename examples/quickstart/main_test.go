package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestQuickstart(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), &out, 20, 300); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	for _, want := range []string{
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
