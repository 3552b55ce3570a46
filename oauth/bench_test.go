package oauth_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/oauth"
)

// benchManager returns a Manager on memstore with the test provider, and
// the provider; clock is the Manager's (the system clock when nil).
func benchManager(b *testing.B, accessTTL time.Duration, clock tether.Clock) (*oauth.Manager, *memstore.Store, *oauthtest.OP) {
	b.Helper()
	op := oauthtest.Start(b, oauthtest.Options{RedirectURIs: []string{redirect}, AccessTTL: accessTTL})
	ctx := context.Background()
	st := memstore.New()
	node, err := tether.Open(ctx, tether.Config{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	m, err := oauth.New(oauth.Config{
		Node: node, Store: st, RedirectURL: redirect, Clock: clock,
		HTTPClient: &http.Client{Timeout: 10 * time.Second},
		Providers:  []oauth.Provider{oauth.OIDC("test-op", op.Issuer, op.Issuer+"/auth", op.Issuer+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access")},
	})
	if err != nil {
		b.Fatal(err)
	}
	return m, st, op
}

// benchConnect connects account and returns the connection ID.
func benchConnect(b *testing.B, m *oauth.Manager, op *oauthtest.OP, account string) string {
	b.Helper()
	ctx := context.Background()
	auth, err := m.Begin(ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-" + account, LoginHint: account})
	if err != nil {
		b.Fatal(err)
	}
	back, err := op.Authorize(ctx, auth)
	if err != nil {
		b.Fatal(err)
	}
	c, err := connection(m.Complete(ctx, back.Query()))
	if err != nil {
		b.Fatal(err)
	}
	return c.ID
}

// BenchmarkCachedToken measures Manager.Token handing out a valid cached
// access token (system clock, memstore), beside a bare lookup in a
// map[string]*oauth2.Token under a sync.RWMutex, in blocks of 1,000 calls
// alternating in one loop. It reports both costs per call and their ratio.
func BenchmarkCachedToken(b *testing.B) {
	m, _, op := benchManager(b, time.Hour, nil)
	ctx := context.Background()
	id := benchConnect(b, m, op, "bench-cached")
	tok, err := m.Token(ctx, id)
	if err != nil {
		b.Fatal(err)
	}
	var mu sync.RWMutex
	bare := map[string]*oauth2.Token{id: tok}
	const block = 1000
	var tetherTime, mapTime time.Duration
	blocks, seen := 0, 0
	for b.Loop() {
		start := time.Now()
		for range block {
			t, err := m.Token(ctx, id)
			if err != nil {
				b.Fatal(err)
			}
			seen += len(t.AccessToken)
		}
		tetherTime += time.Since(start)
		start = time.Now()
		for range block {
			mu.RLock()
			t := bare[id]
			mu.RUnlock()
			seen += len(t.AccessToken)
		}
		mapTime += time.Since(start)
		blocks++
	}
	if seen != 2*blocks*block*len(tok.AccessToken) {
		b.Fatal("a call handed out another token")
	}
	calls := float64(blocks * block)
	b.ReportMetric(float64(tetherTime.Nanoseconds())/calls, "token-ns/call")
	b.ReportMetric(float64(mapTime.Nanoseconds())/calls, "map-ns/call")
	b.ReportMetric(float64(tetherTime)/float64(mapTime), "ratio")
}

// BenchmarkRefresh measures one refresh through Manager.Token against the
// real test provider (memstore: the lease, the reads and the write of the
// rotated tokens included) beside a bare refresh round trip — a POST of
// grant_type=refresh_token to the same token endpoint and the decoding of
// its JSON answer — for another grant of the same provider, alternating
// in one loop. It reports the median of each and the ratio of the medians.
func BenchmarkRefresh(b *testing.B) {
	clock := &clockAt{}
	clock.now.Store(time.Now().UnixNano())
	m, st, op := benchManager(b, 0, clock)
	ctx := context.Background()
	id := benchConnect(b, m, op, "bench-refresh")
	bareID := benchConnect(b, m, op, "bench-bare")
	data, _, err := st.LoadOAuthToken(ctx, bareID)
	if err != nil {
		b.Fatal(err)
	}
	var stored struct {
		Refresh string `json:"refresh"`
	}
	if err := json.Unmarshal(data, &stored); err != nil {
		b.Fatal(err)
	}
	rt := stored.Refresh
	client := &http.Client{Timeout: 10 * time.Second}
	bareRefresh := func() {
		form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {op.ClientID}, "client_secret": {op.ClientSecret}}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, op.Issuer+"/token", strings.NewReader(form.Encode()))
		if err != nil {
			b.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Accept", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		var answer struct {
			AccessToken  string `json:"access_token"`
			RefreshToken string `json:"refresh_token"`
		}
		if err != nil || resp.StatusCode != http.StatusOK || json.Unmarshal(body, &answer) != nil || answer.AccessToken == "" {
			b.Fatalf("bare refresh: %s %s", resp.Status, body)
		}
		rt = answer.RefreshToken
	}
	var tetherTimes, bareTimes []time.Duration
	last := ""
	for b.Loop() {
		clock.now.Add(int64(2 * time.Minute)) // past the access token's 60 s
		start := time.Now()
		tok, err := m.Token(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		tetherTimes = append(tetherTimes, time.Since(start))
		if tok.AccessToken == last {
			b.Fatal("Token did not refresh")
		}
		last = tok.AccessToken
		start = time.Now()
		bareRefresh()
		bareTimes = append(bareTimes, time.Since(start))
	}
	tm, bm := medianOf(tetherTimes), medianOf(bareTimes)
	b.ReportMetric(float64(tm.Microseconds())/1000, "tether-ms/refresh")
	b.ReportMetric(float64(bm.Microseconds())/1000, "bare-ms/refresh")
	b.ReportMetric(float64(tm)/float64(bm), "ratio")
}

func medianOf(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
