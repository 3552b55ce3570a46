package tether

import (
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Limits on the fields of a Connection, in characters (runes) for text and
// in bytes for URLs, rules and settings.
const (
	MaxShortNameLen   = 40
	MaxNameLen        = 100
	MaxDescriptionLen = 500
	MaxOwnerLen       = 200
	MaxURLLen         = 512
	MaxRulesLen       = 256 << 10
	MaxSettings       = 64
	MaxSettingKeyLen  = 64
	MaxSettingLen     = 4 << 10
)

// invalidf returns a CodeInvalid error naming field.
func invalidf(op, field, format string, args ...any) *Error {
	return &Error{Code: CodeInvalid, Op: op, Message: field + ": " + fmt.Sprintf(format, args...)}
}

// withOp sets the op of an *Error that has none.
func withOp(op string, err error) error {
	if e, ok := err.(*Error); ok && e.Op == "" {
		e.Op = op
	}
	return err
}

// checkText validates a single-line human text field: valid UTF-8, no control
// characters, no surrounding white space, between min and max runes.
func checkText(field, s string, min, max int) error {
	if !utf8.ValidString(s) {
		return invalidf("", field, "is not valid UTF-8")
	}
	n := utf8.RuneCountInString(s)
	switch {
	case n < min && n == 0:
		return invalidf("", field, "is required")
	case n < min:
		return invalidf("", field, "must be at least %d characters", min)
	case n > max:
		return invalidf("", field, "must be at most %d characters, got %d", max, n)
	}
	for _, r := range s {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || r == '\ufeff' {
			return invalidf("", field, "contains a control character (%U)", r)
		}
	}
	if strings.TrimSpace(s) != s {
		return invalidf("", field, "has leading or trailing white space")
	}
	return nil
}

func checkRules(s string) error {
	if len(s) > MaxRulesLen {
		return invalidf("", "Rules", "must be at most %d bytes, got %d", MaxRulesLen, len(s))
	}
	if !utf8.ValidString(s) {
		return invalidf("", "Rules", "is not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r' {
			return invalidf("", "Rules", "contains a control character (%U)", r)
		}
	}
	return nil
}

func checkSettings(m map[string]string) error {
	if len(m) > MaxSettings {
		return invalidf("", "Settings", "at most %d entries, got %d", MaxSettings, len(m))
	}
	for k, v := range m {
		if k == "" || len(k) > MaxSettingKeyLen || strings.IndexFunc(k, notKeyRune) >= 0 {
			return invalidf("", "Settings", "key must be 1-%d characters of A-Z a-z 0-9 . _ -", MaxSettingKeyLen)
		}
		if len(v) > MaxSettingLen || !utf8.ValidString(v) {
			return invalidf("", "Settings", "value of %q must be valid UTF-8 of at most %d bytes", k, MaxSettingLen)
		}
	}
	return nil
}

func notKeyRune(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
}

// checkURLSyntax checks that s is an absolute http or https URL with a host,
// no user information, query or fragment. The URL policy (which schemes and
// addresses may be contacted) is separate: see URLPolicy.
func checkURLSyntax(field, s string, optional bool) error {
	if s == "" {
		if optional {
			return nil
		}
		return invalidf("", field, "is required")
	}
	if len(s) > MaxURLLen {
		return invalidf("", field, "must be at most %d bytes", MaxURLLen)
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
		return invalidf("", field, "contains white space or control characters")
	}
	u, err := url.Parse(s)
	if err != nil {
		return invalidf("", field, "is not a valid URL")
	}
	switch {
	case u.Scheme != "https" && u.Scheme != "http":
		return invalidf("", field, "must be an https URL")
	case u.Host == "" || u.Hostname() == "":
		return invalidf("", field, "must be an absolute URL with a host")
	case u.User != nil:
		return invalidf("", field, "must not contain user information")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(s, "#"):
		return invalidf("", field, "must not have a query or fragment")
	case u.Opaque != "":
		return invalidf("", field, "is not a valid URL")
	}
	return nil
}

// checkID checks a tether ID: a lowercase prefix, an underscore and 26
// characters of base32hex.
func checkID(field, s string) error {
	i := strings.IndexByte(s, '_')
	if i < 1 || i > 8 || len(s)-i-1 != idChars {
		return invalidf("", field, "is not a valid ID")
	}
	for j := 0; j < len(s); j++ {
		c := s[j]
		if j == i {
			continue
		}
		if !(c >= 'a' && c <= 'z' || j > i && c >= '0' && c <= '9') || j > i && c > 'v' {
			return invalidf("", field, "is not a valid ID")
		}
	}
	return nil
}
