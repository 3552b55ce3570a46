package tether

import (
	"crypto/ed25519"
	"encoding/base64"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/tetherkit/tether/internal/wire"
)

// BenchmarkInvitationCodec measures tether's invitation encode + verify
// against plain golang-jwt EdDSA sign + parse of the same claims, interleaved
// in one loop so both see the same machine. Metrics: tether-ns/op,
// jwt-ns/op, their ratio (target <= 1.15) and the code's length in
// characters (target <= 700).
func BenchmarkInvitationCodec(b *testing.B) {
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	pub := priv.Public().(ed25519.PublicKey)
	key := InstanceKey{ID: KeyID(pub), Private: priv}
	now := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	inv := &Invitation{
		ID: "MXGn7iGFvYwojh1jYxzvTw", Issuer: "inst_06gvqlbqg3aeoimkslks7pn264", Connection: "conn_06gvqlbqg17br249obflgfs0oc",
		Name: "Support to Engineering", Description: "Escalations from support",
		InitiatorName: "Support", AcceptorName: "Engineering", Mode: ModeScript,
		Endpoint: "https://alpha.example/tether", IssuedAt: now, NotBefore: now, ExpiresAt: now.Add(DefaultInvitationTTL),
		Version: InvitationVersion,
	}
	parser := newInvitationParser()
	claims := invitationClaims{
		TimeClaims: wire.TimeClaims{Issuer: inv.Issuer, ID: inv.ID, IssuedAt: jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(inv.ExpiresAt)},
		Version: 1, Connection: inv.Connection, Name: inv.Name, Description: inv.Description,
		InitiatorName: inv.InitiatorName, AcceptorName: inv.AcceptorName, Mode: inv.Mode, Endpoint: inv.Endpoint,
		Key: base64.RawURLEncoding.EncodeToString(pub),
	}
	jwtParser := jwt.NewParser(jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithTimeFunc(func() time.Time { return now }))
	keyfunc := func(*jwt.Token) (any, error) { return pub, nil }

	var tetherTime, jwtTime time.Duration
	var codeLen int
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		code, err := encodeInvitation(inv, key)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := parser.decode("bench", code, now, nil); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, &claims).SignedString(priv)
		if err != nil {
			b.Fatal(err)
		}
		var out invitationClaims
		if _, err := jwtParser.ParseWithClaims(s, &out, keyfunc); err != nil {
			b.Fatal(err)
		}
		end := time.Now()
		tetherTime += mid.Sub(start)
		jwtTime += end.Sub(mid)
		codeLen = len(code)
	}
	b.ReportMetric(float64(tetherTime.Nanoseconds())/float64(b.N), "tether-ns/op")
	b.ReportMetric(float64(jwtTime.Nanoseconds())/float64(b.N), "jwt-ns/op")
	b.ReportMetric(float64(tetherTime)/float64(jwtTime), "ratio")
	b.ReportMetric(float64(codeLen), "code-chars")
}
