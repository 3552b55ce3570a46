module github.com/tetherkit/tether

go 1.25.0

require (
	github.com/golang-jwt/jwt/v5 v5.3.1
	github.com/google/go-cmp v0.7.0
	golang.org/x/oauth2 v0.36.0
)
