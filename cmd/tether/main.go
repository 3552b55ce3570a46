// Command tether inspects invitation codes and makes sealing keys.
//
//	tether inspect [CODE]   verify a code (read from standard input when
//	                        not given) and print what it says; -json for JSON
//	tether keygen           print a new random 32-byte sealing key in hex,
//	                        which tether.ParseSealingKey reads back
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
	"strings"
	"time"

	"github.com/tetherkit/tether"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, time.Now()))
}

const usage = `usage:
  tether inspect [-json] [CODE]   verify an invitation code and print it
  tether keygen                   print a new sealing key (hex)
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
