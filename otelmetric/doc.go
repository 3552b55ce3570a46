// Package otelmetric reports a tether Node's measurements through the
// OpenTelemetry metric API, on instruments from the host's MeterProvider:
//
//	m, err := otelmetric.New(meterProvider)
//	...
//	node, err := tether.Open(ctx, tether.Config{Store: store, Metrics: m})
//
// It is a module of its own, so a host that does not use OpenTelemetry
// does not download or compile it: tether itself imports no OpenTelemetry
// package, and a Node whose Config.Metrics is nil takes no measurements.
//
// The instruments, on the meter named "github.com/tetherkit/tether" (see
// tether.Metrics for exactly what each counts):
//
//	instrument                        kind             unit         attributes
//	tether.messages.sent              counter          {message}    tether.direction
//	tether.messages.delivered         counter          {message}    tether.direction
//	tether.messages.retried           counter          {message}    tether.direction
//	tether.messages.queued            up-down counter  {message}    tether.direction
//	tether.message.delivery.duration  histogram        s            tether.direction
//	tether.polls.held                 up-down counter  {poll}
//	tether.handshakes                 counter          {handshake}  tether.role, tether.outcome
//	tether.refreshes                  counter          {refresh}    tether.refresh.kind, tether.outcome
//	tether.store.operation.duration   histogram        s            tether.store.operation, error.type
//
// Attribute values: tether.direction is "push" (to a public peer) or
// "poll" (to a private peer, which long-polls); tether.role is
// "initiator" or "acceptor"; tether.outcome is "ok", "refused", "expired"
// or "failed";
// tether.refresh.kind is "key", "peer_key" or "token";
// tether.store.operation is a Store method's name, such as "AppendOutbox";
// error.type, present only when the call failed, is the error's
// tether.Code.
//
// The Metrics New returns is safe for concurrent use and may be shared by
// several Nodes: their measurements add up.
package otelmetric
