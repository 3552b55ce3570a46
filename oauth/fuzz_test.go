package oauth

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// FuzzParseUserinfo feeds arbitrary provider answers to the userinfo
// parser: it accepts only an object with a usable sub, and refuses
// everything else with CodeProtocol, never panicking.
func FuzzParseUserinfo(f *testing.F) {
	for _, s := range []string{`{"sub":"u1","name":"Ada"}`, `{"sub":""}`, `{}`, `[]`, `null`, `{"sub":1}`, `{"sub":"a\nb"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		u, err := parseUserinfo(body)
		if err != nil {
			var e *tether.Error
			if !errors.As(err, &e) || e.Code != tether.CodeProtocol {
				t.Fatalf("refusal is not a protocol error: %v", err)
			}
			return
		}
		if u.Sub == "" || len(u.Sub) > 255 || len(u.Name) > 255 {
			t.Fatalf("accepted %+v", u)
		}
	})
}

// FuzzParseTokenAnswer feeds arbitrary token endpoint answers (status,
// body, Retry-After) to their parser. It never panics. What it accepts
// came with 200, has an access token within bounds and a lifetime of at
// most ten years; what it refuses is a *grantError, whose code is a
// sanitized OAuth error code and which is permanent only for
// invalid_grant or interaction_required below 500, or a CodeProtocol
// error.
func FuzzParseTokenAnswer(f *testing.F) {
	for _, s := range []struct {
		status     int
		body       string
		retryAfter string
	}{
		{200, `{"access_token":"at","refresh_token":"rt","token_type":"Bearer","expires_in":3600}`, ""},
		{200, `{"access_token":"00Dxx!AQ4","instance_url":"https://acme.my.salesforce.com","id":"https://login.salesforce.com/id/00D/005","token_type":"Bearer","issued_at":"1700000000000","signature":"x"}`, ""},
		{200, `{"access_token":"at","token_type":"bearer","expires_in":"3599","ext_expires_in":"3599"}`, ""},
		{200, `{"access_token":"at","token_type":"mac"}`, ""},
		{200, `{"access_token":"","expires_in":60}`, ""},
		{200, `{"access_token":"at","expires_in":-1}`, ""},
		{200, `{"access_token":"at","expires_in":1e400}`, ""},
		{200, `{"access_token":"at","expires_in":null}`, ""},
		{200, `{"access_tok`, ""},
		{200, `{"error":"invalid_grant"}`, ""},
		{400, `{"error":"invalid_grant","error_description":"expired access/refresh token"}`, ""},
		{400, `{"error":"interaction_required","error_description":"AADSTS50076"}`, ""},
		{400, `{"error":"temporarily_unavailable"}`, "30"},
		{401, `{"error":"invalid_client"}`, ""},
		{429, ``, "120"},
		{503, `<html>down</html>`, "Wed, 21 Oct 2015 07:28:00 GMT"},
		{500, `{"error":"invalid_grant"}`, "-5"},
		{400, `{"error":"bad\u0000\"code\\"}`, "99999999999999999999"},
	} {
		f.Add(s.status, []byte(s.body), s.retryAfter)
	}
	f.Fuzz(func(t *testing.T, status int, body []byte, retryAfter string) {
		g, err := parseTokenAnswer(status, body, retryAfter)
		if err == nil {
			if status != http.StatusOK || g.Access == "" || len(g.Access) > 16<<10 || len(g.Refresh) > 16<<10 ||
				g.Expires < 0 || g.Expires > 10*365*24*time.Hour {
				t.Fatalf("accepted status %d: %+v", status, g)
			}
			return
		}
		var ge *grantError
		var te *tether.Error
		switch {
		case errors.As(err, &ge):
			if ge.Status != status || ge.RetryAfter < 0 || ge.RetryAfter > time.Hour || len(ge.Code) > 64 || strings.ContainsAny(ge.Code, "\"\\\x00\r\n") {
				t.Fatalf("refusal %+v", ge)
			}
			if ge.Permanent && (status >= 500 || ge.Code != "invalid_grant" && ge.Code != "interaction_required") {
				t.Fatalf("permanent refusal %+v", ge)
			}
		case errors.As(err, &te):
			if te.Code != tether.CodeProtocol || status != http.StatusOK {
				t.Fatalf("refusal of a status %d answer: %v", status, err)
			}
		default:
			t.Fatalf("refusal of another type: %T %v", err, err)
		}
	})
}
