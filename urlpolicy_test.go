package tether_test

import (
	"testing"

	"github.com/tetherkit/tether"
)

func TestURLPolicy(t *testing.T) {
	strict, dev := tether.URLPolicy{}, tether.DevelopmentURLPolicy()
	for _, tc := range []struct {
		url         string
		strict, dev tether.Code
	}{
		{"https://partner.example.com/tether", "", ""},
		{"https://partner.example.com:8443/a/b", "", ""},
		{"https://93.184.215.14/tether", "", ""},
		{"https://[2001:db8::1]/tether", "", ""},
		{"http://partner.example.com/", tether.CodeURLRefused, ""},
		{"https://localhost/", tether.CodeURLRefused, ""},
		{"https://LOCALHOST./", tether.CodeURLRefused, ""},
		{"https://api.localhost/", tether.CodeURLRefused, ""},
		{"https://127.0.0.2/", tether.CodeURLRefused, ""},
		{"https://[::ffff:127.0.0.1]/", tether.CodeURLRefused, ""},
		{"https://[::1]:9/", tether.CodeURLRefused, ""},
		{"https://169.254.169.254/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://[fe80::1]/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://10.1.2.3/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://172.16.0.1/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://192.168.0.1/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://100.64.0.1/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://0.0.0.0/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://[::]/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://224.0.0.1/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://255.255.255.255/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://0x7f000001/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://017700000001/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://0x7f.0x0.0x0.0x1/", tether.CodeURLRefused, tether.CodeURLRefused},
		{"https://0xproject.example/", "", ""},
		{"https://1password.example/", "", ""},
		{"ftp://partner.example.com/", tether.CodeInvalid, tether.CodeInvalid},
		{"partner.example.com", tether.CodeInvalid, tether.CodeInvalid},
		{"", tether.CodeInvalid, tether.CodeInvalid},
	} {
		if got := tether.ErrorCode(strict.Check(tc.url)); got != tc.strict {
			t.Errorf("strict.Check(%q) = %q, want %q", tc.url, got, tc.strict)
		}
		if got := tether.ErrorCode(dev.Check(tc.url)); got != tc.dev {
			t.Errorf("dev.Check(%q) = %q, want %q", tc.url, got, tc.dev)
		}
	}
}
