package tether_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"
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

// Before initiating, the page asks the destination what it supports and
// offers only the modes both sides have; for "I don't have a URL" it offers
// its own.
func ExampleNode_Probe() {
	ctx := context.Background()
	network := tethertest.NewNetwork()

	engineering, err := tether.Open(ctx, tether.Config{
		Store:       memstore.New(),
		Transport:   network.Transport("engineering"),
		Endpoint:    "https://engineering.example.com/tether",
		DisplayName: "Acme Engineering",
		Modes:       []tether.Mode{tether.ModeScript, tether.ModeBasic},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer network.Listen(engineering.Endpoint(), engineering)()

	support, err := tether.Open(ctx, tether.Config{
		Store:     memstore.New(),
		Transport: network.Transport("support"), // private, all modes
	})
	if err != nil {
		log.Fatal(err)
	}

	info, err := support.Probe(ctx, "https://engineering.example.com/tether")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s speaks %s\n", info.Name, info.Protocol)
	for _, m := range info.Modes {
		if slices.Contains(support.Info().Modes, m) {
			fmt.Println("offer:", m)
		}
	}
	fmt.Println("private destination, offer:", support.Info().Modes)

	// The URL policy applies before any request: no plain http, no
	// loopback or private addresses.
	_, err = support.Probe(ctx, "https://169.254.169.254/latest")
	fmt.Println(tether.ErrorCode(err), network.Sent("support"))
	// Output:
	// Acme Engineering speaks tether/1
	// offer: script
	// offer: basic
	// private destination, offer: [basic visual script]
	// url_refused 1
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
// working, the way the oauth package drives an org connection. A peer
// connection is not trusted again by a transition: Reauthorize re-pairs it.
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
	_, err = alpha.Transition(ctx, conn.ID, tether.ActionReauthorize, "signed in again")
	fmt.Println(tether.ErrorCode(err))
	// Output:
	// inactive
	// invalid_transition
	// invalid
}

// A host that fears its partner's key is compromised revokes it, and
// re-pairs the connection with a fresh code once the partner is safe
// again: settings, history and queued messages stay.
func ExampleNode_Reauthorize() {
	ctx := context.Background()
	network := tethertest.NewNetwork()
	alpha, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://alpha.example.com/t", Transport: network.Transport("alpha")})
	defer network.Listen(alpha.Endpoint(), alpha)()
	beta, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: network.Transport("beta")})
	conn, code, _ := alpha.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
	bconn, err := beta.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		log.Fatal(err)
	}

	c, _ := alpha.RevokePeerKey(ctx, conn.ID, "the partner's server was breached")
	fmt.Println("revoked:", c.Status)

	// The partner rotates its key, then accepts the re-pairing code,
	// passed to its administrator out of band.
	if err := beta.RotateKey(ctx, 0); err != nil {
		log.Fatal(err)
	}
	_, code, _ = alpha.Reauthorize(ctx, conn.ID)
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		log.Fatal(err)
	}
	c, _ = alpha.Get(ctx, conn.ID)
	fmt.Println("re-paired:", c.Status, tether.KeyID(c.RemoteKey) == beta.Fingerprint())
	bc, _ := beta.Get(ctx, bconn.ID)
	fmt.Println("same connection on the other side:", bc.ID == bconn.ID, bc.Status)
	// Output:
	// revoked: inactive
	// re-paired: active true
	// same connection on the other side: true active
}

// RotateKey replaces the instance's key; each peer learns the new key from
// a notice signed with the key it trusts, and the connection signs with
// the new key once its peer has acknowledged it (here, after Run's first
// delivery).
func ExampleNode_RotateKey() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	network := tethertest.NewNetwork()
	alpha, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://alpha.example.com/t", Transport: network.Transport("alpha")})
	defer network.Listen(alpha.Endpoint(), alpha)()
	beta, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: network.Transport("beta")})
	conn, code, _ := alpha.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
	bconn, err := beta.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		log.Fatal(err)
	}
	old := alpha.Fingerprint()
	if err := alpha.RotateKey(ctx, 0); err != nil {
		log.Fatal(err)
	}
	go alpha.Run(ctx)
	go beta.Run(ctx)
	for {
		b, _ := beta.Get(ctx, bconn.ID)
		a, _ := alpha.Get(ctx, conn.ID)
		if tether.KeyID(b.RemoteKey) == alpha.Fingerprint() && a.LocalKeyID == alpha.Fingerprint() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Println("new key:", alpha.Fingerprint() != old)
	events, _ := beta.Events(ctx, bconn.ID, 0, 0)
	for _, e := range events {
		if e.Type == tether.EventKeyChanged {
			fmt.Println(e.Type, "by", e.Actor) // the first: the notice applied
			break
		}
	}
	// Output:
	// new key: true
	// key_changed by remote
}

// SendBatch stores many messages in one step, numbered in order; the peer
// receives them one by one, as if each had been sent alone.
func ExampleNode_SendBatch() {
	ctx := context.Background()
	network := tethertest.NewNetwork()
	alpha, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://alpha.example.com/t", Transport: network.Transport("alpha")})
	defer network.Listen(alpha.Endpoint(), alpha)()
	got := make(chan string, 3)
	beta, _ := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: network.Transport("beta"),
		Receiver: tether.ReceiverFunc(func(_ context.Context, m tether.Message) error {
			got <- fmt.Sprintf("%d %s", m.Seq, m.Payload)
			return nil
		})})
	conn, code, _ := alpha.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		log.Fatal(err)
	}

	seqs, err := alpha.SendBatch(ctx, conn.ID, [][]byte{[]byte("invoice 17"), []byte("invoice 18"), []byte("invoice 19")})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored as", seqs)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go alpha.Run(runCtx)
	go beta.Run(runCtx)
	for range seqs {
		fmt.Println("received", <-got)
	}
	// Output:
	// stored as [1 2 3]
	// received 1 invoice 17
	// received 2 invoice 18
	// received 3 invoice 19
}
