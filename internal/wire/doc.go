// Package wire is tether's wire machinery, which hosts never touch: compact
// JWS signing and strict parsing (EdDSA only), the tokens that authenticate
// requests between instances and their answers, and the replay cache.
//
// Errors are *Error with a Kind; the root package turns them into
// *tether.Error. Errors returned by a KeyLookup pass through unchanged.
// No error text quotes its input.
package wire
