// Command quickstart runs two tether instances in one process and walks
// through a connection's life: a public instance ("support") invites a
// private one ("engineering", behind a firewall, so the invitation says "I
// don't have a URL"), the partner previews and accepts the code, both turn
// Active, then the connection is paused, activated and deleted, and its
// history is printed.
//
// The two instances talk over tethertest's in-memory network, which
// implements the same tether.Transport interface as the HTTP transport.
//
//	go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

func main() {
	if err := run(context.Background(), os.Stdout); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, out io.Writer) error {
	network := tethertest.NewNetwork()

	// The public instance: reachable at its Endpoint.
	support, err := tether.Open(ctx, tether.Config{
		Store:     memstore.New(),
		Transport: network.Transport("support"),
		Endpoint:  "https://support.example.com/tether",
	})
	if err != nil {
		return err
	}
	stop := network.Listen(support.Endpoint(), support)
	defer stop()

	// The private instance: no Endpoint, it only makes outgoing requests.
	engineering, err := tether.Open(ctx, tether.Config{
		Store:     memstore.New(),
		Transport: network.Transport("engineering"),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "support     instance %s (public at %s)\n", support.ID(), support.Endpoint())
	fmt.Fprintf(out, "engineering instance %s (private)\n\n", engineering.ID())

	// 1. Support initiates. Destination "" means "I don't have a URL".
	conn, code, err := support.Initiate(ctx, tether.InitiateRequest{
		Owner:       "support-team",
		Destination: "",
		Mode:        tether.ModeScript,
		LocalName:   "Support",
		RemoteName:  "Engineering",
		Name:        "Support to Engineering",
		Description: "Escalated tickets and their updates",
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "1. support initiated %s: %s\n", conn.ID, conn.Status)
	fmt.Fprintf(out, "   invitation code (%d characters), copy it to the partner:\n\n%s\n\n", len(code), wrap(code, 76, "   "))

	// 2. Engineering pastes the code and sees what it is about.
	inv, err := engineering.Preview(code)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "2. engineering previews the code:")
	fmt.Fprintf(out, "   %s invites you to %q (%s)\n", inv.InitiatorName, inv.Name, inv.Description)
	fmt.Fprintf(out, "   mode %s, you will be %q, key %s\n", inv.Mode, inv.AcceptorName, inv.KeyID)
	fmt.Fprintf(out, "   expires %s; initiator private: %v, destination private: %v\n\n",
		inv.ExpiresAt.Format(time.RFC1123), inv.InitiatorPrivate(), inv.DestinationPrivate())

	// 3. Engineering accepts: it calls support, which alone is reachable.
	accepted, err := engineering.Accept(ctx, code, tether.AcceptOptions{Owner: "eng-team"})
	if err != nil {
		return err
	}
	conn, err = support.Get(ctx, conn.ID)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "3. engineering accepted:")
	fmt.Fprintf(out, "   support     %s: %s, connected to %s\n", conn.ID, conn.Status, conn.RemoteName)
	fmt.Fprintf(out, "   engineering %s: %s, connected to %s\n", accepted.ID, accepted.Status, accepted.RemoteName)
	fmt.Fprintf(out, "   engineering made %d request(s); support answered %d; engineering received none: it is private\n\n",
		network.Sent("engineering"), network.Served()[support.Endpoint()])

	// A code works once.
	if _, err := engineering.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		fmt.Fprintf(out, "   accepting the same code again: %v\n\n", err)
	}

	// 4. Lifecycle, recorded with the acting user.
	admin := tether.WithActor(ctx, "admin@support")
	fmt.Fprintln(out, "4. lifecycle on the support side:")
	for _, step := range []struct {
		name string
		call func(context.Context, string) (*tether.Connection, error)
	}{
		{"pause", support.Pause},
		{"activate", support.Activate},
		{"delete", support.Delete},
	} {
		c, err := step.call(admin, conn.ID)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "   %-8s -> %s\n", step.name, c.Status)
	}
	if _, err := support.Activate(admin, conn.ID); err != nil {
		fmt.Fprintf(out, "   activate -> refused: %v\n", err)
	}

	// 5. The history survives deletion.
	events, err := support.Events(ctx, conn.ID, 0, 0)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\n5. history of the deleted connection:")
	for _, e := range events {
		fmt.Fprintf(out, "   %s  %-9s by %-14s %s\n", e.Time.Format("15:04:05.000"), e.Type, e.Actor, e.Detail)
	}
	return nil
}

// wrap breaks s into lines of width characters, each indented.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	for len(s) > width {
		b.WriteString(indent + s[:width] + "\n")
		s = s[width:]
	}
	b.WriteString(indent + s)
	return b.String()
}
