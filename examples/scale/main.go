package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var usage usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "scale:", err)
		os.Exit(1)
	}
}

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// options are the command line's.
type options struct {
	store        string
	conns        int
	private      int
	measure      time.Duration
	settle       time.Duration
	startTimeout time.Duration
	postgres     string
	schema       string
	sqlite       string
	peerSQLite   string
	reuse        bool
	json         bool

	// The private peers' process.
	role   string
	target string
	codes  string
}

// hiddenFlags are those the program passes to its own child process.
var hiddenFlags = map[string]bool{"role": true, "target": true, "codes": true}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("scale", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.store, "store", "memstore", "the public node's `store`: memstore, sqlite or postgres")
	fs.IntVar(&o.conns, "conns", 1000, "active connections to idle public peers")
	fs.IntVar(&o.private, "private", 0, "private peers, each holding a long-poll, in a child process")
	fs.DurationVar(&o.measure, "measure", 10*time.Second, "how long the idle figures are measured")
	fs.DurationVar(&o.settle, "settle", 5*time.Second, "how long to wait before measuring, after the start and after the private peers are polling")
	fs.DurationVar(&o.startTimeout, "start-timeout", 12*time.Minute, "how long to wait for the first message after Run is called")
	fs.StringVar(&o.postgres, "postgres", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "PostgreSQL `URL` for -store postgres")
	fs.StringVar(&o.schema, "schema", "", "PostgreSQL `schema` (default tether_scale_<conns>_<private>; dropped and created afresh without -reuse)")
	fs.StringVar(&o.sqlite, "sqlite", "", "SQLite database `path` for -store sqlite (default: a temporary file, removed at exit)")
	fs.StringVar(&o.peerSQLite, "peer-sqlite", "", "SQLite database `path` of the in-process peer with -store sqlite or postgres (default: beside -sqlite, or in the temporary directory)")
	fs.BoolVar(&o.reuse, "reuse", false, "use the connections the SQLite file or PostgreSQL schema holds already; create them only when there are none")
	fs.BoolVar(&o.json, "json", false, "also print every figure as one JSON object at the end")
	fs.StringVar(&o.role, "role", "", "")
	fs.StringVar(&o.target, "target", "", "")
	fs.StringVar(&o.codes, "codes", "", "")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: scale -store memstore|sqlite|postgres -conns N -private P [flags]")
		fs.VisitAll(func(f *flag.Flag) {
			if hiddenFlags[f.Name] {
				return
			}
			name, usage := flag.UnquoteUsage(f)
			fmt.Fprintf(fs.Output(), "  -%s %s\n    \t%s (default %q)\n", f.Name, name, usage, f.DefValue)
		})
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usageError{err.Error()}
	}
	switch {
	case fs.NArg() > 0:
		return nil, usageError{"unexpected argument " + fs.Arg(0)}
	case o.role != "" && o.role != "private":
		return nil, usageError{"unknown -role " + o.role}
	case o.role == "private" && (o.target == "" || o.codes == ""):
		return nil, usageError{"-role private needs -target and -codes"}
	case o.store != "memstore" && o.store != "sqlite" && o.store != "postgres":
		return nil, usageError{"-store must be memstore, sqlite or postgres"}
	case o.conns < 0 || o.private < 0:
		return nil, usageError{"-conns and -private must not be negative"}
	case o.measure <= 0 || o.settle < 0 || o.startTimeout <= 0:
		return nil, usageError{"-measure and -start-timeout must be positive, -settle not negative"}
	}
	return o, nil
}

// run is the program: the public node's measurement, or, with -role
// private, the private peers' process it starts.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	// Written from several goroutines: the nodes' logger, progress, and
	// the copy of the child's standard error.
	stdout, stderr = &lockedWriter{w: stdout}, &lockedWriter{w: stderr}
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if err := raiseFileLimit(); err != nil {
		fmt.Fprintln(stderr, "scale: raising the open file limit:", err)
	}
	if o.role == "private" {
		return runPrivate(ctx, o, os.Stdin, stdout, stderr)
	}
	return runPublic(ctx, o, stdout, stderr)
}

// lockedWriter writes to w one goroutine at a time.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
