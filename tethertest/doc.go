// Package tethertest helps test code that embeds tether: an in-memory
// Network that connects Nodes through the tether.Transport interface with
// injectable faults (drop, lost response, duplicate, delay, partition), and
// a fake Clock so tests never sleep.
//
//	net := tethertest.NewNetwork()
//	clock := tethertest.NewClock(time.Now())
//	alpha, _ := tether.Open(ctx, tether.Config{Store: memstore.New(),
//		Transport: net.Transport("alpha"), Endpoint: "https://alpha.test", Clock: clock})
//	stop := net.Listen("https://alpha.test", alpha)
//	defer stop()
//
// A private instance (no Endpoint) never Listens: Served shows which
// endpoints received requests, so a test can assert the private side was
// never called.
package tethertest
