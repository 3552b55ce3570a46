package tether_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

// Two instances on an in-memory network: a public one invites a private one
// ("I don't have a URL"), which accepts the code.
func Example() {
	ctx := context.Background()
	network := tethertest.NewNetwork()

	support, err := tether.Open(ctx, tether.Config{
		Store:     memstore.New(),
		Transport: network.Transport("support"),
		Endpoint:  "https://support.example.com/tether",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer network.Listen(support.Endpoint(), support)()

	engineering, err := tether.Open(ctx, tether.Config{
		Store:     memstore.New(),
		Transport: network.Transport("engineering"), // private: no Endpoint
	})
	if err != nil {
		log.Fatal(err)
	}

	conn, code, err := support.Initiate(ctx, tether.InitiateRequest{
		Destination: "", // the partner is private
		Mode:        tether.ModeBasic,
		LocalName:   "Support",
		RemoteName:  "Engineering",
		Name:        "Support to Engineering",
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("initiator:", conn.Status)

	accepted, err := engineering.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		log.Fatal(err)
	}
	conn, _ = support.Get(ctx, conn.ID)
	fmt.Println("initiator:", conn.Status, "with", conn.RemoteName)
	fmt.Println("acceptor: ", accepted.Status, "with", accepted.RemoteName)
	// Output:
	// initiator: pending
	// initiator: active with Engineering
	// acceptor:  active with Support
}

// A host shows what a code says before the user confirms.
func ExampleNode_Preview() {
	ctx := context.Background()
	clock := tethertest.NewClock(time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC))
	alpha, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://alpha.example.com/tether", Clock: clock})
	beta, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Clock: clock})

	_, code, err := alpha.Initiate(ctx, tether.InitiateRequest{
		Mode: tether.ModeScript, LocalName: "Alpha", RemoteName: "Beta",
		Name: "Alpha to Beta", Description: "Incidents both ways", TTL: 24 * time.Hour,
	})
	if err != nil {
		log.Fatal(err)
	}
	inv, err := beta.Preview(code)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s invites you to %q (%s)\n", inv.InitiatorName, inv.Name, inv.Description)
	fmt.Println("mode:", inv.Mode)
	fmt.Println("expires:", inv.ExpiresAt.Format(time.RFC3339))
	fmt.Println("initiator private:", inv.InitiatorPrivate(), "destination private:", inv.DestinationPrivate())

	// One changed character is caught locally.
	typo := code[:40] + "x" + code[41:]
	if code[40] == 'x' {
		typo = code[:40] + "y" + code[41:]
	}
	_, err = beta.Preview(typo)
	fmt.Println(errors.Is(err, tether.ErrDamagedCode))
	// Output:
	// Alpha invites you to "Alpha to Beta" (Incidents both ways)
	// mode: script
	// expires: 2026-11-22T09:00:00Z
	// initiator private: false destination private: true
	// true
}

// Pause, activate and delete, and the history that stays readable.
func ExampleNode_Pause() {
	ctx := context.Background()
	network := tethertest.NewNetwork()
	alpha, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://alpha.example.com/t", Transport: network.Transport("alpha")})
	defer network.Listen(alpha.Endpoint(), alpha)()
	beta, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: network.Transport("beta")})
	conn, code, _ := alpha.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		log.Fatal(err)
	}

	ctx = tether.WithActor(ctx, "user:ada")
	alpha.Pause(ctx, conn.ID)
	_, err := alpha.Pause(ctx, conn.ID)
	fmt.Println(err)
	alpha.Activate(ctx, conn.ID)
	alpha.Delete(ctx, conn.ID)

	events, _ := alpha.Events(ctx, conn.ID, 0, 0)
	for _, e := range events {
		fmt.Printf("%-9s by %s\n", e.Type, e.Actor)
	}
	// Output:
	// tether: pause: cannot pause a connection that is paused
	// created   by local
	// accepted  by remote
	// paused    by user:ada
	// activated by user:ada
	// deleted   by user:ada
}

func ExampleNext() {
	next, ok := tether.Next(tether.StatusActive, tether.ActionPause)
	fmt.Println(next, ok)
	_, ok = tether.Next(tether.StatusDeleted, tether.ActionActivate)
	fmt.Println(ok)
	// Output:
	// paused true
	// false
}

// Transition is the lifecycle seam for adapters: here credentials stop
// working and come back, the way the oauth package drives an org
// connection.
func ExampleNode_Transition() {
	ctx := context.Background()
	network := tethertest.NewNetwork()
	alpha, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://alpha.example.com/t", Transport: network.Transport("alpha")})
	defer network.Listen(alpha.Endpoint(), alpha)()
	beta, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: network.Transport("beta")})
	conn, code, _ := alpha.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		log.Fatal(err)
	}

	c, _ := alpha.Transition(ctx, conn.ID, tether.ActionAuthLost, "the grant was withdrawn")
	fmt.Println(c.Status)
	_, err := alpha.Transition(ctx, conn.ID, tether.ActionPause, "")
	fmt.Println(tether.ErrorCode(err))
	c, _ = alpha.Transition(ctx, conn.ID, tether.ActionReauthorize, "signed in again")
	fmt.Println(c.Status)
	// Output:
	// inactive
	// invalid_transition
	// active
}
