package tether_test

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
)

// declaredCodes parses errors.go and returns every Code constant's name
// and value, and for each sentinel variable the name of the Code constant
// it carries, so that a code added without a sentinel fails the tests.
func declaredCodes(t *testing.T) (codes map[string]tether.Code, sentinels map[string]string) {
	t.Helper()
	file, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	codes, sentinels = map[string]tether.Code{}, map[string]string{}
	for _, d := range file.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, spec := range g.Specs {
			v, ok := spec.(*ast.ValueSpec)
			if !ok {
				continue
			}
			for i, name := range v.Names {
				if typ, ok := v.Type.(*ast.Ident); ok && typ.Name == "Code" && g.Tok == token.CONST {
					lit := v.Values[i].(*ast.BasicLit)
					s, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					codes[name.Name] = tether.Code(s)
				}
				if g.Tok != token.VAR || i >= len(v.Values) {
					continue
				}
				if u, ok := v.Values[i].(*ast.UnaryExpr); ok {
					if lit, ok := u.X.(*ast.CompositeLit); ok && len(lit.Elts) == 1 {
						if typ, ok := lit.Type.(*ast.Ident); ok && typ.Name == "sentinel" {
							sentinels[name.Name] = lit.Elts[0].(*ast.Ident).Name
						}
					}
				}
			}
		}
	}
	if len(codes) < 20 {
		t.Fatalf("found only %d codes in errors.go: the parsing is broken", len(codes))
	}
	return codes, sentinels
}

// Every code has a sentinel named after it; the sentinels below are all of
// them, and each matches its code only, through wrapping.
func TestErrorSentinels(t *testing.T) {
	codes, declared := declaredCodes(t)
	want := map[string]string{}
	for name := range codes {
		want["Err"+strings.TrimPrefix(name, "Code")] = name
	}
	if diff := cmp.Diff(want, declared); diff != "" {
		t.Fatalf("sentinels in errors.go (-want +got):\n%s", diff)
	}

	sentinels := map[tether.Code]error{
		tether.CodeInternal:          tether.ErrInternal,
		tether.CodeInvalid:           tether.ErrInvalid,
		tether.CodeNotFound:          tether.ErrNotFound,
		tether.CodeAlreadyExists:     tether.ErrAlreadyExists,
		tether.CodeConflict:          tether.ErrConflict,
		tether.CodeInvalidTransition: tether.ErrInvalidTransition,
		tether.CodeModeFixed:         tether.ErrModeFixed,
		tether.CodeBothPrivate:       tether.ErrBothPrivate,
		tether.CodeDamagedCode:       tether.ErrDamagedCode,
		tether.CodeMalformed:         tether.ErrMalformed,
		tether.CodeBadSignature:      tether.ErrBadSignature,
		tether.CodeUnknownKey:        tether.ErrUnknownKey,
		tether.CodeExpired:           tether.ErrExpired,
		tether.CodeNotYetValid:       tether.ErrNotYetValid,
		tether.CodeAlreadyUsed:       tether.ErrAlreadyUsed,
		tether.CodeRevoked:           tether.ErrRevoked,
		tether.CodeURLRefused:        tether.ErrURLRefused,
		tether.CodeKeyMismatch:       tether.ErrKeyMismatch,
		tether.CodeUnauthenticated:   tether.ErrUnauthenticated,
		tether.CodeUnavailable:       tether.ErrUnavailable,
		tether.CodeProtocol:          tether.ErrProtocol,
		tether.CodeTooLarge:          tether.ErrTooLarge,
		tether.CodeNotConnected:      tether.ErrNotConnected,
		tether.CodePaused:            tether.ErrPaused,
		tether.CodeGone:              tether.ErrGone,
		tether.CodeClockSkew:         tether.ErrClockSkew,
		tether.CodeCanceled:          tether.ErrCanceled,
		tether.CodeDeadlineExceeded:  tether.ErrDeadlineExceeded,
		tether.CodeOrgTaken:          tether.ErrOrgTaken,
	}
	if len(sentinels) != len(codes) {
		t.Fatalf("this test lists %d sentinels, errors.go declares %d codes", len(sentinels), len(codes))
	}
	for _, c := range codes {
		sentinel, ok := sentinels[c]
		if !ok {
			t.Errorf("code %q: no sentinel in this test", c)
			continue
		}
		if got := tether.ErrorCode(sentinel); got != c {
			t.Errorf("ErrorCode(%v) = %q, want %q", sentinel, got, c)
		}
		err := fmt.Errorf("host: %w", &tether.Error{Code: c, Op: "tether: test"})
		for other, s := range sentinels {
			if got := errors.Is(err, s); got != (other == c) {
				t.Errorf("errors.Is(%q error, sentinel of %q) = %v", c, other, got)
			}
		}
	}
}

// errorsTable returns the rows of the code table in doc.go's "# Errors"
// section: code to HTTP status.
func errorsTable(t *testing.T) map[tether.Code]int {
	t.Helper()
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(src), "// # Errors\n")
	if !ok {
		t.Fatal(`doc.go has no "# Errors" section`)
	}
	section, _, _ = strings.Cut(section, "\n// #")
	row := regexp.MustCompile(`(?m)^//\t([a-z_]+) +(\d{3})  \S`)
	table := map[tether.Code]int{}
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		status, _ := strconv.Atoi(m[2])
		table[tether.Code(m[1])] = status
	}
	return table
}

// The package documentation lists every code with its HTTP status.
func TestErrorCodesDocumented(t *testing.T) {
	codes, _ := declaredCodes(t)
	want := map[tether.Code]int{}
	for _, c := range codes {
		want[c] = tether.HTTPStatus(c)
	}
	if diff := cmp.Diff(want, errorsTable(t)); diff != "" {
		t.Fatalf(`doc.go "# Errors" table (-want +got):`+"\n%s", diff)
	}
}

func TestErrorHTTPStatus(t *testing.T) {
	want := map[tether.Code]int{
		tether.CodeInternal:          500,
		tether.CodeInvalid:           400,
		tether.CodeNotFound:          404,
		tether.CodeAlreadyExists:     409,
		tether.CodeConflict:          409,
		tether.CodeInvalidTransition: 409,
		tether.CodeModeFixed:         409,
		tether.CodeBothPrivate:       400,
		tether.CodeDamagedCode:       400,
		tether.CodeMalformed:         400,
		tether.CodeBadSignature:      401,
		tether.CodeUnknownKey:        401,
		tether.CodeExpired:           410,
		tether.CodeNotYetValid:       400,
		tether.CodeAlreadyUsed:       409,
		tether.CodeRevoked:           410,
		tether.CodeURLRefused:        403,
		tether.CodeKeyMismatch:       401,
		tether.CodeUnauthenticated:   401,
		tether.CodeUnavailable:       503,
		tether.CodeProtocol:          400,
		tether.CodeTooLarge:          413,
		tether.CodeNotConnected:      409,
		tether.CodePaused:            503,
		tether.CodeGone:              410,
		tether.CodeClockSkew:         400,
		tether.CodeCanceled:          503,
		tether.CodeDeadlineExceeded:  504,
		tether.CodeOrgTaken:          409,
		"":                           500,
		"no_such_code":               500,
	}
	codes, _ := declaredCodes(t)
	for _, c := range codes {
		if _, ok := want[c]; !ok {
			t.Errorf("code %q: no expected status in this test", c)
		}
	}
	for c, status := range want {
		if got := tether.HTTPStatus(c); got != status {
			t.Errorf("HTTPStatus(%q) = %d, want %d", c, got, status)
		}
	}
}
