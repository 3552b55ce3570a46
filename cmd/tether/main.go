// Command tether inspects invitation codes, makes sealing keys and writes
// sqlstore's schema migrations.
//
//	tether inspect [CODE]   verify a code (read from standard input when
//	                        not given) and print what it says; -json for JSON
//	tether keygen           print a new random 32-byte sealing key in hex,
//	                        which tether.ParseSealingKey reads back
//	tether migrations -dialect sqlite|postgres -out DIR
//	                        write sqlstore's migrations, NNNN_name.sql,
//	                        for hosts that apply them with their own tool
//
// inspect exits 0 for a valid code and 1 for an invalid one, printing why
// (a typo gives "damaged"); it makes no network request.
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, time.Now()))
}

const usage = `usage:
  tether inspect [-json] [CODE]   verify an invitation code and print it
  tether keygen                   print a new sealing key (hex)
  tether migrations -dialect sqlite|postgres -out DIR
                                  write sqlstore's schema migrations into DIR
`

func run(args []string, stdin io.Reader, stdout, stderr io.Writer, now time.Time) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "inspect":
		return inspect(args[1:], stdin, stdout, stderr, now)
	case "keygen":
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			fmt.Fprintln(stderr, "tether keygen:", err)
			return 1
		}
		fmt.Fprintln(stdout, hex.EncodeToString(key))
		return 0
	case "migrations":
		return migrations(args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, usage)
	return 2
}

func inspect(args []string, stdin io.Reader, stdout, stderr io.Writer, now time.Time) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var code string
	switch fs.NArg() {
	case 0:
		r := bufio.NewReader(io.LimitReader(stdin, tether.MaxInvitationCodeLen+2))
		line, err := r.ReadString('\n')
		if err != nil && err != io.EOF {
			fmt.Fprintln(stderr, "tether inspect:", err)
			return 1
		}
		code = strings.TrimRight(line, "\r\n")
	case 1:
		code = fs.Arg(0)
	default:
		fmt.Fprint(stderr, usage)
		return 2
	}
	inv, err := tether.ParseInvitation(code, now)
	if err != nil {
		fmt.Fprintf(stderr, "invalid invitation (%s): %v\n", tether.ErrorCode(err), err)
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(inv); err != nil {
			fmt.Fprintln(stderr, "tether inspect:", err)
			return 1
		}
		return 0
	}
	where := func(u string) string {
		if u == "" {
			return "private (no URL)"
		}
		return u
	}
	fmt.Fprintf(stdout, "valid invitation from %s (instance %s, key %s)\n", inv.InitiatorName, inv.Issuer, inv.KeyID)
	fmt.Fprintf(stdout, "connection:  %q (%s)\n", inv.Name, inv.Connection)
	if inv.Description != "" {
		fmt.Fprintf(stdout, "description: %s\n", inv.Description)
	}
	fmt.Fprintf(stdout, "mode:        %s\n", inv.Mode)
	fmt.Fprintf(stdout, "acceptor:    %q\n", inv.AcceptorName)
	fmt.Fprintf(stdout, "initiator:   %s\n", where(inv.Endpoint))
	fmt.Fprintf(stdout, "destination: %s\n", where(inv.Destination))
	fmt.Fprintf(stdout, "expires:     %s (in %s)\n", inv.ExpiresAt.Format(time.RFC3339), inv.ExpiresAt.Sub(now).Round(time.Minute))
	return 0
}

// migrations writes the dialect's migration files into a directory, which
// it creates; it does not overwrite a file that differs.
func migrations(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("tether migrations", flag.ContinueOnError)
	fl.SetOutput(stderr)
	dialect := fl.String("dialect", "", "sqlite or postgres")
	out := fl.String("out", "", "the directory to write the files into")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if *out == "" || fl.NArg() != 0 || (*dialect != string(sqlstore.SQLite) && *dialect != string(sqlstore.PostgreSQL)) {
		fmt.Fprint(stderr, usage)
		return 2
	}
	all, err := sqlstore.Migrations(sqlstore.Dialect(*dialect))
	if err == nil {
		err = os.MkdirAll(*out, 0o755)
	}
	for _, m := range all {
		if err != nil {
			break
		}
		name := filepath.Join(*out, fmt.Sprintf("%04d_%s.sql", m.Version, m.Name))
		if old, rerr := os.ReadFile(name); rerr == nil {
			if string(old) != m.SQL {
				err = fmt.Errorf("%s exists and differs: not overwritten", name)
			}
			continue
		}
		if err = os.WriteFile(name, []byte(m.SQL), 0o644); err == nil {
			fmt.Fprintln(stdout, name)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "tether migrations:", err)
		return 1
	}
	return 0
}
