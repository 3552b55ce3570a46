package httptransport

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherkit/tether"
)

// dialFunc is the shape of http.Transport.DialContext.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// guard applies a URL policy to every connection an http.Transport makes
// (see ClientConfig.Transport).
type guard struct {
	policy tether.URLPolicy
	// dial and dialTLS are the base transport's dialers; nil when it had
	// none.
	dial, dialTLS dialFunc
	// checked refuses an address before connecting; plain dials the host's
	// proxy.
	checked, plain *net.Dialer
}

// guardTransport returns a clone of base whose every connection is checked
// against policy.
func guardTransport(base *http.Transport, policy tether.URLPolicy) *http.Transport {
	t := base.Clone()
	g := &guard{policy: policy, dial: t.DialContext, dialTLS: t.DialTLSContext}
	if g.dial == nil && t.Dial != nil {
		dial := t.Dial
		g.dial = func(_ context.Context, network, addr string) (net.Conn, error) { return dial(network, addr) }
	}
	if g.dialTLS == nil && t.DialTLS != nil {
		dial := t.DialTLS
		g.dialTLS = func(_ context.Context, network, addr string) (net.Conn, error) { return dial(network, addr) }
	}
	g.plain = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	g.checked = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second, Control: g.control}
	t.Dial, t.DialTLS = nil, nil
	t.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return g.connect(ctx, network, addr, g.dial)
	}
	if g.dialTLS != nil {
		t.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return g.connect(ctx, network, addr, g.dialTLS)
		}
	}
	if t.Proxy != nil {
		t.Proxy = g.proxy(t.Proxy)
	}
	return t
}

// connect dials addr: with dial when the base transport had a dialer
// (checking the address it connected to before anything is written), or
// with a dialer that checks each address before connecting. The host's
// proxy, when the request goes through one, is dialed unchecked.
func (g *guard) connect(ctx context.Context, network, addr string, dial dialFunc) (net.Conn, error) {
	proxy := viaProxy(ctx, addr)
	switch {
	case dial != nil:
		conn, err := dial(ctx, network, addr)
		if err != nil || proxy {
			return conn, err
		}
		if err := g.checkConn(conn); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	case proxy:
		return g.plain.DialContext(ctx, network, addr)
	default:
		return g.checked.DialContext(ctx, network, addr)
	}
}

// control checks the address a net.Dialer is about to connect to.
func (g *guard) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return err
	}
	return g.policy.CheckAddr(ap.Addr())
}

// checkConn checks the address conn is connected to.
func (g *guard) checkConn(conn net.Conn) error {
	var ap netip.AddrPort
	switch a := conn.RemoteAddr().(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case net.Addr:
		ap, _ = netip.ParseAddrPort(a.String())
	}
	if !ap.IsValid() {
		return &tether.Error{Code: tether.CodeURLRefused, Op: "httptransport: dial", Message: "cannot tell which address the dialer connected to"}
	}
	return g.policy.CheckAddr(ap.Addr())
}

// proxy wraps a base transport's Proxy: a request it sends through a
// proxy has its host name resolved and every address checked first, and
// the proxy's address is recorded so that connect dials it unchecked.
func (g *guard) proxy(base func(*http.Request) (*url.URL, error)) func(*http.Request) (*url.URL, error) {
	return func(req *http.Request) (*url.URL, error) {
		u, err := base(req)
		r, _ := req.Context().Value(routeKey{}).(*route)
		if err != nil || u == nil {
			if r != nil {
				r.proxy.Store(nil)
			}
			return u, err
		}
		if err := g.checkHost(req.Context(), req.URL.Hostname()); err != nil {
			return nil, err
		}
		if r != nil {
			addr := proxyAddr(u)
			r.proxy.Store(&addr)
		}
		return u, nil
	}
}

// checkHost resolves host and checks every address it has.
func (g *guard) checkHost(ctx context.Context, host string) error {
	if a, err := netip.ParseAddr(host); err == nil {
		return g.policy.CheckAddr(a)
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return &tether.Error{Code: tether.CodeUnavailable, Op: "httptransport: resolve", Message: "cannot resolve the peer's host name", Err: err}
	}
	for _, a := range addrs {
		if err := g.policy.CheckAddr(a); err != nil {
			return err
		}
	}
	return nil
}

// proxyAddr is the address net/http dials for proxy u.
func proxyAddr(u *url.URL) string {
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "https":
			port = "443"
		case "socks5", "socks5h":
			port = "1080"
		default:
			port = "80"
		}
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// routeKey is the context key of a request's route.
type routeKey struct{}

// route tells a request's dials which address is the host's proxy: its
// Proxy function records it, its dialer reads it (net/http passes the
// request's context values to the dial).
type route struct{ proxy atomic.Pointer[string] }

func withRoute(ctx context.Context) context.Context {
	return context.WithValue(ctx, routeKey{}, &route{})
}

// viaProxy reports whether addr is the proxy the request chose.
func viaProxy(ctx context.Context, addr string) bool {
	r, _ := ctx.Value(routeKey{}).(*route)
	if r == nil {
		return false
	}
	p := r.proxy.Load()
	return p != nil && *p == addr
}
