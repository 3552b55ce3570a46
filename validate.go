package tether

import (
	"fmt"
	"net/url"
	"slices"
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

// checkText validates a single-line human text field: valid UTF-8, between
// min and max runes, no surrounding white space, no control characters and
// no invisible or direction-changing characters (see invisible), so that
// what a user reads is what the text says.
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
	for i, r := range s {
		switch {
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029':
			return invalidf("", field, "contains a control character (%U)", r)
		case invisible(s[:i], r, s[i+utf8.RuneLen(r):]):
			return invalidf("", field, "contains an invisible or direction-changing character (%U)", r)
		}
	}
	if strings.TrimSpace(s) != s {
		return invalidf("", field, "has leading or trailing white space")
	}
	return nil
}

// Characters that are refused outside a few contexts.
const (
	zwnj      = '\u200C' // ZERO WIDTH NON-JOINER
	zwj       = '\u200D' // ZERO WIDTH JOINER
	vs16      = '\uFE0F' // VARIATION SELECTOR-16, emoji presentation
	blackFlag = '\U0001F3F4'
	cancelTag = '\U000E007F'
)

// invisible reports whether r, found between before and after, is a
// character a reader cannot see or that reorders what they see: every
// format character (Unicode category Cf: bidi marks, embeddings, overrides
// and isolates, zero-width space, word joiner, soft hyphen, invisible
// operators, U+180E, U+FEFF, tags, ...) and every other default-ignorable
// code point (Hangul fillers, combining grapheme joiner, ...), except in
// these contexts, where they are part of how the text is written:
//
//   - ZWJ between two emoji, the first optionally followed by VS16 or a skin
//     tone modifier: woman technologist U+1F469 U+200D U+1F4BB, families,
//     the rainbow flag U+1F3F3 U+FE0F U+200D U+1F308;
//   - ZWJ right after the virama of an Indic script (Devanagari to Sinhala)
//     and before a letter of that script, as in Sinhala "Sri" U+0DC1 U+0DCA
//     U+200D U+0DBB U+0DD3; old-style Malayalam chillus (virama and ZWJ at
//     the end of a word) are refused: Unicode encodes chillus as letters;
//   - ZWNJ between two letters of one script whose shaping it controls
//     (the Arabic-family joining scripts, as in Persian U+0645 U+06CC U+200C
//     U+062E..., and the Indic scripts), combining marks after the first
//     letter allowed;
//   - a variation selector right after a base character (a letter, number,
//     symbol or punctuation mark; not a space, mark or another selector);
//   - tag characters in an emoji flag tag sequence: U+1F3F4, one or more of
//     U+E0020–E007E, then U+E007F (the flags of England, Scotland, Wales).
//
// This source file spells such characters as code points only.
func invisible(before string, r rune, after string) bool {
	switch {
	case r == zwj:
		return !emojiJoin(before, after) && !viramaJoin(before, after)
	case r == zwnj:
		base, next := lastRune(strings.TrimRightFunc(before, unicode.IsMark)), firstRune(after)
		return !unicode.IsLetter(base) || !unicode.IsLetter(next) || !sameScript(joiningScripts, base, next)
	case isTagSpec(r):
		prev, next := lastRune(before), firstRune(after)
		return prev != blackFlag && !isTagSpec(prev) || next != cancelTag && !isTagSpec(next)
	case r == cancelTag:
		return !isTagSpec(lastRune(before))
	case unicode.Is(unicode.Variation_Selector, r):
		base := lastRune(before)
		return !unicode.IsGraphic(base) || unicode.IsMark(base) || unicode.IsSpace(base)
	}
	return unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r)
}

// emojiJoin reports whether a ZWJ between before and after joins two emoji.
func emojiJoin(before, after string) bool {
	for {
		r := lastRune(before)
		if r != vs16 && (r < '\U0001F3FB' || r > '\U0001F3FF') { // skin tone modifiers
			return unicode.Is(extendedPictographic, r) && unicode.Is(extendedPictographic, firstRune(after))
		}
		before = before[:len(before)-utf8.RuneLen(r)]
	}
}

// viramaJoin reports whether a ZWJ between before and after follows an
// Indic virama and precedes a letter of its script.
func viramaJoin(before, after string) bool {
	v, next := lastRune(before), firstRune(after)
	switch v {
	case '\u094D', '\u09CD', '\u0A4D', '\u0ACD', '\u0B4D', '\u0BCD', '\u0C4D', '\u0CCD', '\u0D4D', '\u0DCA':
		return unicode.IsLetter(next) && sameScript(joiningScripts, v, next)
	}
	return false
}

// joiningScripts are the scripts in which ZWNJ (and, after a virama, ZWJ)
// changes how letters are shaped.
var joiningScripts = []*unicode.RangeTable{
	unicode.Arabic, unicode.Syriac, unicode.Nko, unicode.Mongolian, unicode.Mandaic,
	unicode.Adlam, unicode.Hanifi_Rohingya,
	unicode.Devanagari, unicode.Bengali, unicode.Gurmukhi, unicode.Gujarati, unicode.Oriya,
	unicode.Tamil, unicode.Telugu, unicode.Kannada, unicode.Malayalam, unicode.Sinhala,
}

func sameScript(scripts []*unicode.RangeTable, a, b rune) bool {
	for _, t := range scripts {
		if unicode.Is(t, a) {
			return unicode.Is(t, b)
		}
	}
	return false
}

func isTagSpec(r rune) bool { return r >= '\U000E0020' && r <= '\U000E007E' }

// lastRune and firstRune return the last and first rune of s, -1 when s is
// empty.
func lastRune(s string) rune {
	if s == "" {
		return -1
	}
	r, _ := utf8.DecodeLastRuneInString(s)
	return r
}

func firstRune(s string) rune {
	if s == "" {
		return -1
	}
	r, _ := utf8.DecodeRuneInString(s)
	return r
}

// extendedPictographic is the Extended_Pictographic property of Unicode's
// emoji-data.txt (UTS #51), which the unicode package does not carry: the
// characters a ZWJ sequence joins.
var extendedPictographic = &unicode.RangeTable{
	R16: []unicode.Range16{
		{Lo: 0x00A9, Hi: 0x00AE, Stride: 5},
		{Lo: 0x203C, Hi: 0x2049, Stride: 13},
		{Lo: 0x2122, Hi: 0x2139, Stride: 23},
		{Lo: 0x2194, Hi: 0x2199, Stride: 1},
		{Lo: 0x21A9, Hi: 0x21AA, Stride: 1},
		{Lo: 0x231A, Hi: 0x231B, Stride: 1},
		{Lo: 0x2328, Hi: 0x2388, Stride: 0x60},
		{Lo: 0x23CF, Hi: 0x23CF, Stride: 1},
		{Lo: 0x23E9, Hi: 0x23F3, Stride: 1},
		{Lo: 0x23F8, Hi: 0x23FA, Stride: 1},
		{Lo: 0x24C2, Hi: 0x24C2, Stride: 1},
		{Lo: 0x25AA, Hi: 0x25AB, Stride: 1},
		{Lo: 0x25B6, Hi: 0x25C0, Stride: 10},
		{Lo: 0x25FB, Hi: 0x25FE, Stride: 1},
		{Lo: 0x2600, Hi: 0x2605, Stride: 1},
		{Lo: 0x2607, Hi: 0x2612, Stride: 1},
		{Lo: 0x2614, Hi: 0x2685, Stride: 1},
		{Lo: 0x2690, Hi: 0x2705, Stride: 1},
		{Lo: 0x2708, Hi: 0x2712, Stride: 1},
		{Lo: 0x2714, Hi: 0x2716, Stride: 2},
		{Lo: 0x271D, Hi: 0x2721, Stride: 4},
		{Lo: 0x2728, Hi: 0x2728, Stride: 1},
		{Lo: 0x2733, Hi: 0x2734, Stride: 1},
		{Lo: 0x2744, Hi: 0x2747, Stride: 3},
		{Lo: 0x274C, Hi: 0x274E, Stride: 2},
		{Lo: 0x2753, Hi: 0x2755, Stride: 1},
		{Lo: 0x2757, Hi: 0x2757, Stride: 1},
		{Lo: 0x2763, Hi: 0x2767, Stride: 1},
		{Lo: 0x2795, Hi: 0x2797, Stride: 1},
		{Lo: 0x27A1, Hi: 0x27BF, Stride: 15},
		{Lo: 0x2934, Hi: 0x2935, Stride: 1},
		{Lo: 0x2B05, Hi: 0x2B07, Stride: 1},
		{Lo: 0x2B1B, Hi: 0x2B1C, Stride: 1},
		{Lo: 0x2B50, Hi: 0x2B55, Stride: 5},
		{Lo: 0x3030, Hi: 0x303D, Stride: 13},
		{Lo: 0x3297, Hi: 0x3299, Stride: 2},
	},
	R32: []unicode.Range32{
		{Lo: 0x1F000, Hi: 0x1F0FF, Stride: 1},
		{Lo: 0x1F10D, Hi: 0x1F10F, Stride: 1},
		{Lo: 0x1F12F, Hi: 0x1F12F, Stride: 1},
		{Lo: 0x1F16C, Hi: 0x1F171, Stride: 1},
		{Lo: 0x1F17E, Hi: 0x1F17F, Stride: 1},
		{Lo: 0x1F18E, Hi: 0x1F18E, Stride: 1},
		{Lo: 0x1F191, Hi: 0x1F19A, Stride: 1},
		{Lo: 0x1F1AD, Hi: 0x1F1E5, Stride: 1},
		{Lo: 0x1F201, Hi: 0x1F20F, Stride: 1},
		{Lo: 0x1F21A, Hi: 0x1F22F, Stride: 0x15},
		{Lo: 0x1F232, Hi: 0x1F23A, Stride: 1},
		{Lo: 0x1F23C, Hi: 0x1F23F, Stride: 1},
		{Lo: 0x1F249, Hi: 0x1F3FA, Stride: 1},
		{Lo: 0x1F400, Hi: 0x1F53D, Stride: 1},
		{Lo: 0x1F546, Hi: 0x1F64F, Stride: 1},
		{Lo: 0x1F680, Hi: 0x1F6FF, Stride: 1},
		{Lo: 0x1F774, Hi: 0x1F77F, Stride: 1},
		{Lo: 0x1F7D5, Hi: 0x1F7FF, Stride: 1},
		{Lo: 0x1F80C, Hi: 0x1F80F, Stride: 1},
		{Lo: 0x1F848, Hi: 0x1F84F, Stride: 1},
		{Lo: 0x1F85A, Hi: 0x1F85F, Stride: 1},
		{Lo: 0x1F888, Hi: 0x1F88F, Stride: 1},
		{Lo: 0x1F8AE, Hi: 0x1F8FF, Stride: 1},
		{Lo: 0x1F90C, Hi: 0x1F93A, Stride: 1},
		{Lo: 0x1F93C, Hi: 0x1F945, Stride: 1},
		{Lo: 0x1F947, Hi: 0x1FAFF, Stride: 1},
		{Lo: 0x1FC00, Hi: 0x1FFFD, Stride: 1},
	},
	LatinOffset: 1,
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

// allModes are the configuration modes, in the order they are offered.
var allModes = []Mode{ModeBasic, ModeVisual, ModeScript}

// checkModes validates the modes an instance supports and returns them:
// all of them when none are named. An unknown or repeated mode is refused.
func checkModes(field string, modes []Mode) ([]Mode, error) {
	if len(modes) == 0 {
		return slices.Clone(allModes), nil
	}
	for i, m := range modes {
		if !m.valid() {
			return nil, invalidf("", field, "%q is not a mode: each must be basic, visual or script", sanitize(string(m)))
		}
		if slices.Contains(modes[:i], m) {
			return nil, invalidf("", field, "names %s twice", m)
		}
	}
	return slices.Clone(modes), nil
}

// modeList is modes as words, for messages: "basic, visual".
func modeList(modes []Mode) string {
	s := make([]string, len(modes))
	for i, m := range modes {
		s[i] = string(m)
	}
	return strings.Join(s, ", ")
}
