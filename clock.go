package tether

import "time"

// Clock is the time source of a Node. Tests use tethertest.Clock, a fake
// one, so that they never sleep.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives the time once d has passed.
	After(d time.Duration) <-chan time.Time
}

// SystemClock returns the machine's clock: the default of a Node and of
// the adapters' Clock options.
func SystemClock() Clock { return systemClock{} }

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
