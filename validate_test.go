package tether_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/tetherkit/tether"
)

// validConn returns a peer connection that passes Validate.
func validConn() *tether.Connection {
	return &tether.Connection{
		ID: "conn_00000000000000000000000001", Kind: tether.KindPeer, Name: "A to B",
		LocalName: "A", RemoteName: "B", Mode: tether.ModeBasic, Status: tether.StatusPending, Role: tether.RoleInitiator,
		RemoteURL: "https://b.example/tether",
	}
}

// SECURITY.md 39: text a user reads is what it says.
func TestValidateInvisibleCharacters(t *testing.T) {
	refused := []struct {
		name string
		text string
		r    rune // the character the error must name
	}{
		{"arabic letter mark", "Pay\u061Cpal", 0x061C},
		{"LRM", "Pay\u200Epal", 0x200E},
		{"RLM", "Pay\u200Fpal", 0x200F},
		{"LRE", "Pay\u202Apal", 0x202A},
		{"RLE", "Pay\u202Bpal", 0x202B},
		{"PDF", "Pay\u202Cpal", 0x202C},
		{"LRO", "Pay\u202Dpal", 0x202D},
		{"RLO", "Support\u202Egnireenigne", 0x202E},
		{"LRI", "Pay\u2066pal", 0x2066},
		{"RLI", "Pay\u2067pal", 0x2067},
		{"FSI", "Pay\u2068pal", 0x2068},
		{"PDI", "Pay\u2069pal", 0x2069},
		{"zero-width space", "Pay\u200Bpal", 0x200B},
		{"ZWNJ between Latin letters", "Pay\u200Cpal", 0x200C},
		{"ZWJ between Latin letters", "Pay\u200Dpal", 0x200D},
		{"ZWNJ between Arabic and Latin", "\u0645\u200Cx", 0x200C},
		{"ZWNJ at the end", "\u0645\u06CC\u200C", 0x200C},
		{"ZWNJ at the start", "\u200C\u0645\u06CC", 0x200C},
		{"ZWNJ before a mark", "\u06CC\u200C\u0616", 0x200C},
		{"ZWNJ after a space", "\u0645 \u200C\u06CC", 0x200C},
		{"ZWJ after an emoji at the end", "Dev \U0001F469\u200D", 0x200D},
		{"ZWJ between emoji and letter", "\U0001F469\u200Dx", 0x200D},
		{"ZWJ between letter and emoji", "x\u200D\U0001F4BB", 0x200D},
		{"two ZWJ between emoji", "\U0001F469\u200D\u200D\U0001F4BB", 0x200D},
		{"ZWJ between regional indicators", "\U0001F1FA\u200D\U0001F1F8", 0x200D},
		{"ZWJ after a virama at the end", "\u0D28\u0D4D\u200D", 0x200D},
		{"ZWJ between Arabic letters", "\u0645\u200D\u06CC", 0x200D},
		{"soft hyphen", "Pay\u00ADpal", 0x00AD},
		{"word joiner", "Pay\u2060pal", 0x2060},
		{"function application", "a\u2061b", 0x2061},
		{"invisible times", "a\u2062b", 0x2062},
		{"invisible separator", "a\u2063b", 0x2063},
		{"invisible plus", "a\u2064b", 0x2064},
		{"Mongolian vowel separator", "a\u180Eb", 0x180E},
		{"BOM inside", "a\uFEFFb", 0xFEFF},
		{"BOM first", "\uFEFFab", 0xFEFF},
		{"interlinear annotation", "a\uFFF9b\uFFFBc", 0xFFF9},
		{"Arabic number sign", "\u0600\u0661", 0x0600},
		{"Hangul filler", "\u3164", 0x3164},
		{"halfwidth Hangul filler", "a\uFFA0b", 0xFFA0},
		{"combining grapheme joiner", "a\u034Fb", 0x034F},
		{"variation selector first", "\uFE0Fab", 0xFE0F},
		{"variation selector after a space", "a \uFE0Fb", 0xFE0F},
		{"two variation selectors", "\u263A\uFE0F\uFE0F", 0xFE0F},
		{"variation selector after a mark", "e\u0301\uFE0E", 0xFE0E},
		{"Mongolian variation selector first", "\u180Ba", 0x180B},
		{"ideographic variation selector first", "\U000E0100\u845B", 0xE0100},
		{"tags without a flag", "a\U000E0067\U000E0062\U000E007F", 0xE0067},
		{"flag tags without cancel", "\U0001F3F4\U000E0067\U000E0062", 0xE0062},
		{"cancel tag alone", "a\U000E007F", 0xE007F},
		{"cancel tag right after the flag", "\U0001F3F4\U000E007F", 0xE007F},
		{"language tag", "\U000E0001\U000E0065\U000E006E", 0xE0001},
		{"tags after another emoji", "\U0001F600\U000E0067\U000E007F", 0xE0067},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			c := validConn()
			c.Name = tc.text
			err := c.Validate()
			if !errors.Is(err, tether.ErrInvalid) {
				t.Fatalf("Validate(%+q) = %v, want invalid", tc.text, err)
			}
			want := fmt.Sprintf("Name: contains an invisible or direction-changing character (%U)", tc.r)
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("Validate(%+q) = %q, want it to say %q", tc.text, err, want)
			}
		})
	}

	accepted := map[string]string{
		"plain":                      "Support to Engineering",
		"accents":                    "Équipe d’assistance",
		"technologist":               "Dev \U0001F469\u200D\U0001F4BB",
		"family":                     "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 team",
		"rainbow flag":               "\U0001F3F3\uFE0F\u200D\U0001F308",
		"skin tone then ZWJ":         "\U0001F469\U0001F3FD\u200D\U0001F4BB",
		"heart on fire":              "\u2764\uFE0F\u200D\U0001F525",
		"polar bear":                 "\U0001F43B\u200D\u2744\uFE0F",
		"keycap":                     "#\uFE0F\u20E3 channel",
		"text presentation":          "\u263A\uFE0E",
		"England flag":               "\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F",
		"Persian ZWNJ":               "\u0645\u06CC\u200C\u062E\u0648\u0627\u0647\u0645",
		"Persian ZWNJ after a mark":  "\u0645\u064E\u200C\u062E",
		"Devanagari explicit virama": "\u0915\u094D\u200C\u0937",
		"Devanagari half form":       "\u0915\u094D\u200D\u0937",
		"Sinhala Sri Lanka":          "\u0DC1\u0DCA\u200D\u0DBB\u0DD3 \u0DBD\u0D82\u0D9A\u0DCF",
		"ideographic variation":      "\u845B\U000E0100\u57CE\u5E02",
		"Mongolian variation":        "\u1820\u180B\u1821",
		"Arabic":                     "\u0627\u0644\u062F\u0639\u0645",
		"Hebrew":                     "\u05EA\u05DE\u05D9\u05DB\u05D4",
	}
	for name, text := range accepted {
		t.Run(name, func(t *testing.T) {
			c := validConn()
			c.Name = text
			if err := c.Validate(); err != nil {
				t.Fatalf("Validate(%+q): %v", text, err)
			}
		})
	}
}

// Every human text field gets the check, and the error names it.
func TestValidateInvisibleEveryField(t *testing.T) {
	for field, set := range map[string]func(*tether.Connection, string){
		"Name":        func(c *tether.Connection, s string) { c.Name = s },
		"Description": func(c *tether.Connection, s string) { c.Description = s },
		"LocalName":   func(c *tether.Connection, s string) { c.LocalName = s },
		"RemoteName":  func(c *tether.Connection, s string) { c.RemoteName = s },
		"Owner":       func(c *tether.Connection, s string) { c.Owner = s },
	} {
		c := validConn()
		set(c, "Eng\u2067ineering")
		err := c.Validate()
		want := field + ": contains an invisible or direction-changing character (U+2067)"
		if !errors.Is(err, tether.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", field, err, want)
		}
	}
}

// Control characters keep their own message.
func TestValidateControlCharacters(t *testing.T) {
	for _, r := range []rune{0x00, 0x07, 0x1B, 0x7F, 0x85, 0x9B, 0x2028, 0x2029} {
		c := validConn()
		c.Name = "a" + string(r) + "b"
		err := c.Validate()
		if want := fmt.Sprintf("Name: contains a control character (%U)", r); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%U: %v, want %q", r, err, want)
		}
	}
}
