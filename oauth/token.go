package oauth

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tetherkit/tether"
)

// record is a connection's grant as the Store keeps it, sealed: its
// tokens, and where they were issued, so that refresh and revocation go
// to the issuing host (a Salesforce sandbox's My Domain, a Microsoft
// tenant), never to a default.
type record struct {
	Access  string    `json:"access"`
	Refresh string    `json:"refresh"`
	Expiry  time.Time `json:"expiry,omitzero"`
	// TokenURL and RevokeURL are the issuing host's endpoints (the
	// provider's when empty); RevokeURL stays empty for a provider without
	// revocation (Microsoft).
	TokenURL  string `json:"token_url,omitempty"`
	RevokeURL string `json:"revoke_url,omitempty"`
	// Host is the login host of the org (Salesforce): a refreshed
	// sandbox keeps it.
	Host string `json:"host,omitempty"`
	// Scope, when set, is sent with every refresh: a Microsoft refresh
	// token is redeemed for one resource, the chosen environment.
	Scope string `json:"scope,omitempty"`
	// Renewed is when the grant was last issued or refreshed: a
	// provider's idle expiry counts from it.
	Renewed time.Time `json:"renewed,omitzero"`
	// Failures counts refreshes in a row that failed for a reason that
	// may pass (the provider unreachable); FailingSince is when the first
	// of them failed.
	Failures     int       `json:"failures,omitempty"`
	FailingSince time.Time `json:"failing_since,omitzero"`
	// Warned is set once EventAuthFailing was recorded for the failures
	// under way: the refresh that works again records EventAuthRecovered.
	Warned bool `json:"warned,omitempty"`
}

// grant is a token endpoint's answer.
type grant struct {
	Access  string
	Refresh string // empty: the refresh token was not rotated
	Expires time.Duration
}

// tokenAnswer is the part of a token endpoint's JSON answer tether reads
// (RFC 6749 §5.1, §5.2).
type tokenAnswer struct {
	AccessToken  string          `json:"access_token"`
	RefreshToken string          `json:"refresh_token"`
	TokenType    string          `json:"token_type"`
	ExpiresIn    json.RawMessage `json:"expires_in"`
	Error        string          `json:"error"`
}

// grantError is a token or revocation endpoint's refusal or failure.
// Permanent ones (the grant is gone: invalid_grant,
// interaction_required) need a new login; the others may pass.
type grantError struct {
	Status     int    // HTTP status; 0 when no answer came
	Code       string // the OAuth error field, sanitized
	RetryAfter time.Duration
	Permanent  bool
	Cause      error
}

func (e *grantError) Error() string { return "oauth: " + e.describe() }

// describe says what happened, without a prefix.
func (e *grantError) describe() string {
	switch {
	case e.Code != "":
		return "the provider refused: " + e.Code
	case e.Status != 0:
		return "the provider answered " + strconv.Itoa(e.Status)
	}
	return "the provider could not be reached"
}

func (e *grantError) Unwrap() error { return e.Cause }

// permanentCodes are the OAuth errors after which only a new login helps.
var permanentCodes = map[string]bool{"invalid_grant": true, "interaction_required": true}

// parseTokenAnswer reads a token endpoint's answer of HTTP status status.
// The OAuth error field, not the description, classifies a refusal.
func parseTokenAnswer(status int, body []byte, retryAfter string) (grant, error) {
	var a tokenAnswer
	decoded := len(body) <= maxResponse && json.Unmarshal(body, &a) == nil
	if status != http.StatusOK || a.Error != "" {
		e := &grantError{Status: status, RetryAfter: parseRetryAfter(retryAfter)}
		if decoded {
			e.Code = sanitizeCode(a.Error)
		}
		e.Permanent = permanentCodes[e.Code] && status < 500
		return grant{}, e
	}
	if !decoded || a.AccessToken == "" || len(a.AccessToken) > 16<<10 || len(a.RefreshToken) > 16<<10 {
		return grant{}, &tether.Error{Code: tether.CodeProtocol, Op: "oauth: token", Message: "the token endpoint's answer has no usable access_token"}
	}
	if a.TokenType != "" && !strings.EqualFold(a.TokenType, "bearer") {
		return grant{}, &tether.Error{Code: tether.CodeProtocol, Op: "oauth: token", Message: "the token endpoint answered a token type other than Bearer"}
	}
	g := grant{Access: a.AccessToken, Refresh: a.RefreshToken}
	if len(a.ExpiresIn) > 0 && string(a.ExpiresIn) != "null" {
		// A number, or (Microsoft's v1 endpoints) a string of one.
		s := strings.Trim(string(a.ExpiresIn), `"`)
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 || n > 10*365*24*3600 {
			return grant{}, &tether.Error{Code: tether.CodeProtocol, Op: "oauth: token", Message: "the token endpoint's expires_in is not a number of seconds"}
		}
		g.Expires = time.Duration(n) * time.Second
	}
	return g, nil
}

// parseRetryAfter reads a Retry-After header given in seconds, at most an
// hour; zero when absent or in another form.
func parseRetryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0
	}
	return time.Duration(min(n, 3600)) * time.Second
}

// post sends form to endpoint with the app's credentials in the body
// (client_secret_post: Salesforce and Microsoft accept it, and it is never
// sent twice as x/oauth2's auto-detection may) and returns the answer.
func (m *Manager) post(ctx context.Context, p Provider, endpoint string, form url.Values) (int, []byte, http.Header, error) {
	form.Set("client_id", p.ClientID)
	if p.ClientSecret != "" {
		form.Set("client_secret", p.ClientSecret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, nil, nil, tether.Wrap(tether.CodeInvalid, "oauth: token", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := m.client.Do(req)
	if err != nil {
		return 0, nil, nil, &grantError{Cause: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return 0, nil, nil, &grantError{Cause: err} // cut mid-answer
	}
	return resp.StatusCode, body, resp.Header, nil
}

// redeem asks p's token endpoint (or the grant's issuing host) for a new
// access token with refresh token rt, naming scope when set.
func (m *Manager) redeem(ctx context.Context, p Provider, tokenURL, rt, scope string) (grant, error) {
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}
	if scope != "" {
		form.Set("scope", scope)
	}
	status, body, header, err := m.post(ctx, p, cmp.Or(tokenURL, p.TokenURL), form)
	if err != nil {
		return grant{}, err
	}
	return parseTokenAnswer(status, body, header.Get("Retry-After"))
}

// revoke revokes refresh token rt at the grant's revocation endpoint
// (RFC 7009); revoking a refresh token revokes its access tokens too. An
// answer of 200, or 400 invalid_token (already gone), is success.
func (m *Manager) revoke(ctx context.Context, p Provider, revokeURL, rt string) error {
	status, body, header, err := m.post(ctx, p, revokeURL, url.Values{"token": {rt}, "token_type_hint": {"refresh_token"}})
	if err != nil {
		return err
	}
	if status == http.StatusOK {
		return nil
	}
	_, err = parseTokenAnswer(status, body, header.Get("Retry-After"))
	if ge, ok := err.(*grantError); ok && ge.Code == "invalid_token" {
		return nil
	}
	return err
}

// asTether turns a token endpoint failure into the error callers get.
func asTether(op string, err error) error {
	ge, ok := err.(*grantError)
	if !ok {
		return err
	}
	switch {
	case ge.Permanent:
		return &tether.Error{Code: tether.CodeUnauthenticated, Op: op, Message: "the provider refused the grant (" + ge.Code + "): re-authorize the connection"}
	case ge.Code == "invalid_client" || ge.Code == "unauthorized_client":
		return &tether.Error{Code: tether.CodeUnauthenticated, Op: op, Message: "the provider refused the app's credentials (" + ge.Code + "): check the provider's client ID and secret"}
	}
	return &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: ge.describe(), Err: ge.Cause}
}
