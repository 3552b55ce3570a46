package tether

import (
	"context"
	"errors"
	"strings"
	"time"
)

// Code classifies an error. Codes are part of the API: they are only ever
// added, never renamed or removed, so hosts may switch on them, store them
// and show them.
type Code string

// Error codes.
const (
	CodeInternal          Code = "internal"           // a bug or an unexpected fault
	CodeInvalid           Code = "invalid"            // input failed validation; the message names the field
	CodeNotFound          Code = "not_found"          // no such connection (or not visible to the caller)
	CodeAlreadyExists     Code = "already_exists"     // a record with that ID exists
	CodeConflict          Code = "conflict"           // the record changed since it was read (Version mismatch)
	CodeInvalidTransition Code = "invalid_transition" // the status machine does not allow the move
	CodeModeFixed         Code = "mode_fixed"         // the configuration mode cannot change after creation
	CodeBothPrivate       Code = "both_private"       // neither side has an endpoint
	CodeDamagedCode       Code = "damaged_code"       // an invitation code failed its checksum: a typo
	CodeMalformed         Code = "malformed"          // a code or token is not well formed
	CodeBadSignature      Code = "bad_signature"      // a signature did not verify
	CodeUnknownKey        Code = "unknown_key"        // the key ID is not one this instance knows
	CodeExpired           Code = "expired"            // an invitation or token is past its lifetime
	CodeNotYetValid       Code = "not_yet_valid"      // an invitation or token is dated in the future
	CodeAlreadyUsed       Code = "already_used"       // an invitation was accepted already
	CodeRevoked           Code = "revoked"            // the invitation was revoked or its connection deleted
	CodeURLRefused        Code = "url_refused"        // the URL policy forbids contacting that address
	CodeKeyMismatch       Code = "key_mismatch"       // the peer signed with a key other than the pinned one
	CodeUnauthenticated   Code = "unauthenticated"    // a request between instances failed authentication
	CodeUnavailable       Code = "unavailable"        // the peer or network could not be reached; retry later
	CodeProtocol          Code = "protocol"           // the peer answered something this version does not understand
	CodeTooLarge          Code = "too_large"          // a payload or body is over its size limit
	CodeNotConnected      Code = "not_connected"      // the connection is pending or deleted: nothing can be sent on it
	CodePaused            Code = "paused"             // the peer paused the connection: keep the messages and retry later
	CodeGone              Code = "gone"               // the peer deleted the connection: stop for good
	CodeClockSkew         Code = "clock_skew"         // the two instances' clocks differ by more than ClockSkew
	CodeCanceled          Code = "canceled"           // the caller's context was canceled
	CodeDeadlineExceeded  Code = "deadline_exceeded"  // the caller's context passed its deadline
	CodeOrgTaken          Code = "org_taken"          // the org or environment is connected to a team already: one org per team
)

// Error is the error type of tether and its adapters. Code is stable API,
// Op names the operation that failed ("tether: accept"), Message says what
// went wrong in words a user can act on, and Err is the underlying cause.
//
// Messages and causes never contain secrets: no invitation code, token,
// signature or key material.
type Error struct {
	Code    Code
	Op      string
	Message string
	Err     error
	// RetryAfter, when positive, is how long the remote side asked the
	// caller to wait before trying again (CodeUnavailable, CodePaused).
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	if e.Message != "" {
		b.WriteString(e.Message)
	} else {
		b.WriteString(strings.ReplaceAll(string(e.Code), "_", " "))
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is the sentinel for e's code, so that
// errors.Is(err, tether.ErrAlreadyUsed) works through any wrapping.
func (e *Error) Is(target error) bool {
	s, ok := target.(*sentinel)
	return ok && s.code == e.Code
}

// sentinel is the type of the Err* values: comparable by code only.
type sentinel struct{ code Code }

func (s *sentinel) Error() string { return "tether: " + strings.ReplaceAll(string(s.code), "_", " ") }

// Sentinels for errors.Is, one per Code: every *Error matches the sentinel
// of its Code, through any wrapping. ErrInternal matches only an *Error with
// CodeInternal, not every error that ErrorCode reports as internal.
var (
	ErrInternal          error = &sentinel{CodeInternal}
	ErrInvalid           error = &sentinel{CodeInvalid}
	ErrNotFound          error = &sentinel{CodeNotFound}
	ErrAlreadyExists     error = &sentinel{CodeAlreadyExists}
	ErrConflict          error = &sentinel{CodeConflict}
	ErrInvalidTransition error = &sentinel{CodeInvalidTransition}
	ErrModeFixed         error = &sentinel{CodeModeFixed}
	ErrBothPrivate       error = &sentinel{CodeBothPrivate}
	ErrDamagedCode       error = &sentinel{CodeDamagedCode}
	ErrMalformed         error = &sentinel{CodeMalformed}
	ErrBadSignature      error = &sentinel{CodeBadSignature}
	ErrUnknownKey        error = &sentinel{CodeUnknownKey}
	ErrExpired           error = &sentinel{CodeExpired}
	ErrNotYetValid       error = &sentinel{CodeNotYetValid}
	ErrAlreadyUsed       error = &sentinel{CodeAlreadyUsed}
	ErrRevoked           error = &sentinel{CodeRevoked}
	ErrURLRefused        error = &sentinel{CodeURLRefused}
	ErrKeyMismatch       error = &sentinel{CodeKeyMismatch}
	ErrUnauthenticated   error = &sentinel{CodeUnauthenticated}
	ErrUnavailable       error = &sentinel{CodeUnavailable}
	ErrProtocol          error = &sentinel{CodeProtocol}
	ErrTooLarge          error = &sentinel{CodeTooLarge}
	ErrNotConnected      error = &sentinel{CodeNotConnected}
	ErrPaused            error = &sentinel{CodePaused}
	ErrGone              error = &sentinel{CodeGone}
	ErrClockSkew         error = &sentinel{CodeClockSkew}
	ErrCanceled          error = &sentinel{CodeCanceled}
	ErrDeadlineExceeded  error = &sentinel{CodeDeadlineExceeded}
	ErrOrgTaken          error = &sentinel{CodeOrgTaken}
)

// HTTPStatus returns the HTTP status that answers an error with code c
// (the package documentation lists them all): 500 for CodeInternal and for
// codes it does not know. CodeCanceled maps to 503 Service Unavailable
// rather than the non-standard 499, since a server's context usually ends
// because it is shutting down; CodeClockSkew to 400, with the message
// telling which clock to check.
func HTTPStatus(c Code) int {
	switch c {
	case CodeInvalid, CodeMalformed, CodeDamagedCode, CodeProtocol, CodeNotYetValid, CodeBothPrivate, CodeClockSkew:
		return 400 // Bad Request
	case CodeUnauthenticated, CodeBadSignature, CodeUnknownKey, CodeKeyMismatch:
		return 401 // Unauthorized
	case CodeURLRefused:
		return 403 // Forbidden
	case CodeNotFound:
		return 404 // Not Found
	case CodeAlreadyUsed, CodeConflict, CodeAlreadyExists, CodeInvalidTransition, CodeModeFixed, CodeNotConnected, CodeOrgTaken:
		return 409 // Conflict
	case CodeRevoked, CodeGone, CodeExpired:
		return 410 // Gone
	case CodeTooLarge:
		return 413 // Content Too Large
	case CodePaused, CodeUnavailable, CodeCanceled:
		return 503 // Service Unavailable
	case CodeDeadlineExceeded:
		return 504 // Gateway Timeout
	}
	return 500 // Internal Server Error
}

// ErrorCode returns the Code of the first *Error in err's chain, CodeInternal
// for any other non-nil error, and "" for nil.
func ErrorCode(err error) Code {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	if s, ok := err.(*sentinel); ok {
		return s.code
	}
	return CodeInternal
}

// Wrap returns err unchanged when it already carries a tether code, and
// otherwise wraps it as an *Error with the given code and op. Adapters use it
// to translate their driver errors.
func Wrap(code Code, op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	return &Error{Code: code, Op: op, Err: err}
}

// contextError reports the end of the caller's context: CodeCanceled or
// CodeDeadlineExceeded, with the context's error as the cause, so that
// errors.Is(err, context.Canceled) holds.
func contextError(op string, err error) error {
	code := CodeCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		code = CodeDeadlineExceeded
	}
	return &Error{Code: code, Op: op, Err: err}
}

// fail reports err as the failure of op, the operation the host called:
// the end of ctx as CodeCanceled or CodeDeadlineExceeded, an *Error with its
// code and message under op (the cause kept), anything else as
// CodeInternal. nil stays nil.
func (n *Node) fail(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil && (errors.Is(err, ctx.Err()) || ErrorCode(err) == CodeInternal || ErrorCode(err) == CodeUnavailable) {
		return contextError(op, ctx.Err())
	}
	var e *Error
	if !errors.As(err, &e) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return contextError(op, err)
		}
		return &Error{Code: CodeInternal, Op: op, Err: err}
	}
	if e.Op == op {
		return err
	}
	return &Error{Code: e.Code, Op: op, Message: e.Message, Err: e.Err, RetryAfter: e.RetryAfter}
}
