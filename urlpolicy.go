package tether

import (
	"net/netip"
	"net/url"
	"strings"
)

// URLPolicy decides which remote URLs this instance may contact. An
// invitation carries a URL its acceptor will call, so a code from a stranger
// must not make the acceptor call into its own network: the zero value
// allows https to public addresses only.
//
// Check inspects the URL: its scheme, and its host when that is an IP
// literal or a name that always means this machine (localhost). A transport
// that resolves names must check every address it connects to with
// CheckAddr as well, so that DNS cannot point a public name at a private
// address.
type URLPolicy struct {
	AllowHTTP      bool // plain http:// besides https://
	AllowLoopback  bool // 127.0.0.0/8, ::1, localhost
	AllowPrivate   bool // 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7
	AllowLinkLocal bool // 169.254/16 (cloud metadata services), fe80::/10
}

// DevelopmentURLPolicy allows http and loopback addresses: for tests and
// local development only.
func DevelopmentURLPolicy() URLPolicy {
	return URLPolicy{AllowHTTP: true, AllowLoopback: true}
}

// Check returns a CodeURLRefused error if the policy forbids contacting raw,
// or CodeInvalid if it is not a valid endpoint URL.
func (p URLPolicy) Check(raw string) error {
	const op = "tether: url policy"
	if err := checkURLSyntax("URL", raw, false); err != nil {
		return withOp(op, err)
	}
	u, _ := url.Parse(raw)
	if u.Scheme == "http" && !p.AllowHTTP {
		return &Error{Code: CodeURLRefused, Op: op, Message: "refusing to contact a plain http URL: https is required"}
	}
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		if !p.AllowLoopback {
			return &Error{Code: CodeURLRefused, Op: op, Message: "refusing to contact a loopback address"}
		}
		return nil
	}
	if addr, err := netip.ParseAddr(host); err == nil {
		return p.CheckAddr(addr)
	}
	if numericHost(host) {
		// Numbers that are not a plain IP address (2130706433, 0177.1,
		// 0x7f.1) are hosts some resolvers turn into addresses.
		return &Error{Code: CodeURLRefused, Op: op, Message: "refusing to contact a numeric host that is not a plain IP address"}
	}
	return nil
}

// CheckAddr returns a CodeURLRefused error if the policy forbids connecting
// to addr.
func (p URLPolicy) CheckAddr(addr netip.Addr) error {
	const op = "tether: url policy"
	addr = addr.Unmap()
	refuse := func(what string) error {
		return &Error{Code: CodeURLRefused, Op: op, Message: "refusing to contact " + what + " address"}
	}
	switch {
	case !addr.IsValid(), addr.IsUnspecified(), addr.IsMulticast(), addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return refuse("an unspecified, multicast or broadcast")
	case addr.IsLoopback():
		if !p.AllowLoopback {
			return refuse("a loopback")
		}
	case addr.IsLinkLocalUnicast(), addr.IsLinkLocalMulticast():
		if !p.AllowLinkLocal {
			return refuse("a link-local")
		}
	case addr.IsPrivate(), cgnat.Contains(addr), addr.Is4() && addr.As4()[0] == 0:
		if !p.AllowPrivate {
			return refuse("a private")
		}
	}
	return nil
}

var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// numericHost reports whether every dot-separated label of host is a
// decimal, octal or hexadecimal number.
func numericHost(host string) bool {
	for _, label := range strings.Split(host, ".") {
		digits := label
		if strings.HasPrefix(label, "0x") {
			digits = label[2:]
			if strings.Trim(digits, "0123456789abcdef") != "" {
				return false
			}
			continue
		}
		if digits == "" || strings.Trim(digits, "0123456789") != "" {
			return false
		}
	}
	return true
}
