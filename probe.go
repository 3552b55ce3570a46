package tether

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Probing a destination.
//
// Before initiating a connection, a page that was given the destination's
// URL can ask that instance what it is: Node.Probe makes one
// unauthenticated request (OpInfo) and returns the destination's Info, its
// display name, protocol version and configuration modes, so the page
// offers only the modes both sides support. A private destination ("I
// don't have a URL") cannot be asked: the page offers this instance's own
// modes (Node.Info).
const (
	// ProtocolVersion names the protocol this version of tether speaks,
	// as Info carries it: "tether/" and the version an invitation carries
	// (InvitationVersion).
	ProtocolVersion = "tether/1"
	// MaxInfoBody bounds the answer to a probe; a larger one is refused
	// with CodeTooLarge before it is parsed.
	MaxInfoBody = 4 << 10
	// MaxInfoModes bounds the modes an answer may list, unknown ones
	// included.
	MaxInfoModes = 16
	// MaxProtocolLen bounds Info.Protocol, in bytes.
	MaxProtocolLen = 32

	// probeTimeout bounds a probe whose context has no deadline.
	probeTimeout = 10 * time.Second
)

// Info is what an instance tells anyone who asks (OpInfo): nothing about
// its connections, keys, owners or counts, only what a partner's page
// needs to set up a connection with it.
type Info struct {
	// Name is what the instance calls itself (Config.DisplayName); may be
	// empty. Text of at most MaxNameLen characters, checked as a
	// connection's name is, so a page can show it as it is.
	Name string `json:"name"`
	// Protocol is the protocol version it speaks, ProtocolVersion for
	// this version of tether: printable ASCII, at most MaxProtocolLen
	// bytes.
	Protocol string `json:"protocol"`
	// Modes are the configuration modes it supports (Config.Modes), in
	// its order of preference, each once; never nil.
	Modes []Mode `json:"modes"`
}

// Supports reports whether the instance supports mode m.
func (i Info) Supports(m Mode) bool { return slices.Contains(i.Modes, m) }

// Info returns what this node answers to a probe: its display name,
// ProtocolVersion and the modes it supports. A page shows its Modes when
// the destination is private and cannot be probed.
func (n *Node) Info() Info {
	return Info{Name: n.displayName, Protocol: ProtocolVersion, Modes: slices.Clone(n.modes)}
}

// Probe asks the instance at endpoint (a destination URL a user gave)
// what it is: one request through the node's Transport, without
// authentication, after the node's URL policy allowed endpoint exactly as
// it allows an invitation's URLs. It changes nothing on either side. When
// ctx has no deadline the probe gives up after 10 seconds.
//
// The answer is unauthenticated: it is what the instance at that URL
// claims, to choose what a page offers, never to trust. It is parsed with
// ParseInfo.
//
// Errors: CodeInvalid for a malformed URL, CodeURLRefused when the policy
// forbids it; CodeUnavailable when the destination could not be reached or
// did not answer (an older tether, or not a tether instance);
// CodeTooLarge for an answer over MaxInfoBody and CodeProtocol for one that
// is not an Info; CodeCanceled or CodeDeadlineExceeded when ctx ends. No
// error quotes the answer.
func (n *Node) Probe(ctx context.Context, endpoint string) (*Info, error) {
	const op = "tether: probe"
	if err := n.policy.Check(endpoint); err != nil {
		return nil, n.fail(ctx, op, err)
	}
	if n.transport == nil {
		return nil, &Error{Code: CodeUnavailable, Op: op, Message: "no transport configured"}
	}
	if inDelivery(ctx) {
		return nil, errInDelivery(op)
	}
	cctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, probeTimeout)
		defer cancel()
	}
	resp, err := n.transport.Call(cctx, endpoint, &Request{Op: OpInfo})
	switch {
	case ctx.Err() != nil:
		return nil, contextError(op, ctx.Err())
	case err != nil:
		return nil, probeFailure(op, err)
	case resp == nil:
		return nil, &Error{Code: CodeUnavailable, Op: op, Message: "the destination gave no answer"}
	}
	info, err := ParseInfo(resp.Body)
	if err != nil {
		return nil, n.fail(ctx, op, err)
	}
	return info, nil
}

// probeFailure reports a probe the transport could not complete: the URL
// policy's refusal at dial and an answer over the transport's size cap as
// such, anything else as CodeUnavailable with a sanitised summary of what
// was said as the cause.
func probeFailure(op string, err error) error {
	var e *Error
	if errors.As(err, &e) && (e.Code == CodeURLRefused || e.Code == CodeTooLarge) {
		// The transport's own checks: its dialer's policy, its size cap.
		return &Error{Code: e.Code, Op: op, Message: sanitize(e.Message)}
	}
	pe := remoteFailure(op, err, "the destination could not be reached", "the destination did not answer")
	pe.RetryAfter = 0
	return pe
}

// infoJSON is Info as it arrives, before it is checked.
type infoJSON struct {
	Name     *string  `json:"name"`
	Protocol *string  `json:"protocol"`
	Modes    []string `json:"modes"`
}

// ParseInfo parses an answer to OpInfo strictly: at most MaxInfoBody
// bytes of one JSON object whose fields have their types, a name that
// passes the checks of a connection's name (at most MaxNameLen
// characters, no control or invisible characters), a protocol of
// printable ASCII, and a list of at most MaxInfoModes modes. Unknown
// fields are ignored, and so are unknown modes, which a later version of
// tether may add: they are dropped, as are repeated ones, and the order is
// kept, so Modes holds only modes this version knows, possibly none.
//
// Errors are CodeTooLarge or CodeProtocol, and never quote the input.
func ParseInfo(b []byte) (*Info, error) {
	const op = "tether: parse info"
	bad := func(msg string) (*Info, error) {
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the answer is not tether info: " + msg}
	}
	if len(b) > MaxInfoBody {
		return nil, &Error{Code: CodeTooLarge, Op: op, Message: "the answer is over " + strconv.Itoa(MaxInfoBody) + " bytes"}
	}
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return bad("not a JSON object")
	}
	var raw infoJSON
	if err := json.Unmarshal(b, &raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return bad("field " + strconv.Quote(te.Field) + " has the wrong type")
		}
		return bad("not one valid JSON object")
	}
	info := &Info{Modes: []Mode{}}
	if raw.Name != nil {
		if err := checkText("name", *raw.Name, 0, MaxNameLen); err != nil {
			// The reason only: a length or a code point, never the text.
			return bad("name " + strings.TrimPrefix(err.(*Error).Message, "name: "))
		}
		info.Name = *raw.Name
	}
	if raw.Protocol == nil || !protocolName(*raw.Protocol) {
		return bad("no protocol of 1 to " + strconv.Itoa(MaxProtocolLen) + " printable ASCII characters")
	}
	info.Protocol = *raw.Protocol
	if raw.Modes == nil {
		return bad("no list of modes")
	}
	if len(raw.Modes) > MaxInfoModes {
		return bad("more than " + strconv.Itoa(MaxInfoModes) + " modes")
	}
	for _, s := range raw.Modes {
		if m := Mode(s); m.valid() && !slices.Contains(info.Modes, m) {
			info.Modes = append(info.Modes, m)
		}
	}
	return info, nil
}

// protocolName reports whether s is a protocol version as Info carries
// it: 1 to MaxProtocolLen bytes of printable ASCII without spaces.
func protocolName(s string) bool {
	if s == "" || len(s) > MaxProtocolLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// handleInfo answers OpInfo: this node's Info, unsigned. It is the one
// operation served without authentication, so it reads nothing but the
// node's configuration and changes nothing.
func (n *Node) handleInfo(_ context.Context, _ *Request) (*Response, error) {
	return &Response{Body: slices.Clone(n.infoBody)}, nil
}

// supportedMode refuses, with CodeInvalid naming field, a mode this node
// does not support (Config.Modes).
func (n *Node) supportedMode(op, field string, m Mode) error {
	if slices.Contains(n.modes, m) {
		return nil
	}
	return invalidf(op, field, "this instance does not support the %s configuration mode (it supports %s)", m, modeList(n.modes))
}
