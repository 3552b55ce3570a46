package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
)

// shownWarnings is how many of the nodes' warnings are written out; the
// others are only counted.
const shownWarnings = 10

// warnings is a slog.Handler that counts the warnings and errors of the
// nodes and writes the first few of them: a node that struggles under
// load could otherwise fill the output.
type warnings struct {
	inner slog.Handler
	state *warnState
}

type warnState struct {
	w     io.Writer
	mu    sync.Mutex
	count int
}

func newWarnings(w io.Writer) *warnings {
	return &warnings{
		inner: slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}),
		state: &warnState{w: w},
	}
}

// newLogger returns a logger writing through a new warnings handler.
func newLogger(w io.Writer) *slog.Logger { return slog.New(newWarnings(w)) }

func (h *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *warnings) Handle(ctx context.Context, r slog.Record) error {
	s := h.state
	s.mu.Lock()
	s.count++
	n := s.count
	s.mu.Unlock()
	switch {
	case n <= shownWarnings:
		return h.inner.Handle(ctx, r)
	case n == shownWarnings+1:
		fmt.Fprintln(s.w, "scale: further warnings are counted, not shown")
	}
	return nil
}

func (h *warnings) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &warnings{inner: h.inner.WithAttrs(attrs), state: h.state}
}

func (h *warnings) WithGroup(name string) slog.Handler {
	return &warnings{inner: h.inner.WithGroup(name), state: h.state}
}

// total is how many warnings and errors were logged.
func (h *warnings) total() int {
	h.state.mu.Lock()
	defer h.state.mu.Unlock()
	return h.state.count
}
