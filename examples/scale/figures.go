package main

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// report collects the figures of a run: each is printed as a
// "name value unit" line when it is known, and all of them as one JSON
// object at the end with -json.
type report struct {
	mu     sync.Mutex
	w      io.Writer
	order  []string
	values map[string]any
}

func newReport(w io.Writer) *report { return &report{w: w, values: map[string]any{}} }

// add records a figure: a number (float64 or int) or a string.
func (r *report) add(name string, value any, unit string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.values[name]; !ok {
		r.order = append(r.order, name)
	}
	r.values[name] = value
	var s string
	switch v := value.(type) {
	case float64:
		d := decimals(v)
		if v == math.Trunc(v) {
			d = 0 // a count read back from the child
		}
		s = strconv.FormatFloat(v, 'f', d, 64)
	default:
		s = fmt.Sprint(v)
	}
	fmt.Fprintf(r.w, "%s %s %s\n", name, s, unit)
}

// decimals is how many decimals a figure is printed with: about three
// significant digits below 100, none above.
func decimals(v float64) int {
	switch a := max(v, -v); {
	case a >= 100:
		return 0
	case a >= 10:
		return 1
	case a >= 1:
		return 2
	}
	return 4
}

// writeJSON writes every figure as one JSON object.
func (r *report) writeJSON() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, err := json.Marshal(r.values)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(r.w, "%s\n", b)
	return err
}

// sample is what the process costs at one moment.
type sample struct {
	goroutines int
	heapStack  uint64 // bytes: heap spans in use and goroutine stacks
	rss        uint64 // bytes resident, from /proc/self/status
}

// idleSample collects garbage first, so that the heap holds what is
// live, then reads the goroutines, heap, stacks and RSS.
func idleSample() sample {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return sample{goroutines: runtime.NumGoroutine(), heapStack: m.HeapInuse + m.StackInuse, rss: residentBytes()}
}

// sampleNow reads the goroutines, heap and RSS without collecting
// garbage first.
func sampleNow() sample {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return sample{goroutines: runtime.NumGoroutine(), heapStack: m.HeapInuse + m.StackInuse, rss: residentBytes()}
}

// residentBytes is VmRSS from /proc/self/status, 0 where there is none.
func residentBytes() uint64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

const mib = 1 << 20

// cpuTime is the CPU time this process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTicks is the unit of utime and stime in /proc/PID/stat (USER_HZ),
// 100 per second on Linux.
const clockTicks = 100

// postgresTicks returns the CPU ticks (utime+stime) of every process
// whose name starts with "postgres", by PID.
func postgresTicks() map[int]int64 {
	ticks := map[int]int64{}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		pid, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(dir + "/comm")
		if err != nil || !bytes.HasPrefix(comm, []byte("postgres")) {
			continue
		}
		stat, err := os.ReadFile(dir + "/stat")
		if err != nil {
			continue
		}
		// The fields after the command's closing parenthesis start with
		// the state (field 3); utime and stime are fields 14 and 15.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, err1 := strconv.ParseInt(f[11], 10, 64)
		s, err2 := strconv.ParseInt(f[12], 10, 64)
		if err1 == nil && err2 == nil {
			ticks[pid] = u + s
		}
	}
	return ticks
}

// ticksSince is the CPU ticks the processes of now used since before: a
// process that started in between counts whole; one that ended in
// between is lost.
func ticksSince(before, now map[int]int64) int64 {
	var d int64
	for pid, t := range now {
		d += t - before[pid]
	}
	return d
}

// pgTransactions is the number of transactions the current database has
// committed and rolled back, as the server's statistics say.
func pgTransactions(ctx context.Context, db *sql.DB) (int64, error) {
	var n int64
	err := db.QueryRowContext(ctx, `SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()`).Scan(&n)
	return n, err
}

// raiseFileLimit raises the soft limit on open files to the hard limit:
// every held poll is a socket.
func raiseFileLimit() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	return nil
}
