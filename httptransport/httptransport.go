package httptransport

import (
	"math"
	"net/http"
	"regexp"
	"strconv"
	"time"
)

// DefaultMaxBody bounds request and response bodies when no limit is set.
// It covers a node's default MaxBody (about 1.4 MiB); raise it together with
// tether.Config.MaxPayload.
const DefaultMaxBody = 4 << 20

const (
	authScheme   = "Tether "
	authHeader   = "Authorization"
	answerHeader = "Tether-Auth"
	contentType  = "application/json"
	pathVersion  = "v1" // the segment before the operation in tether.OpURL
	maxErrorBody = 64 << 10
)

// codeName matches what a code from the other side must look like to be
// kept: a few lowercase letters and underscores, never free text.
var codeName = regexp.MustCompile(`^[a-z_]{1,32}$`)

// setRetryAfter sets the Retry-After header, in whole seconds rounded up,
// when d is positive.
func setRetryAfter(h http.Header, d time.Duration) {
	if d > 0 {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
	}
}
