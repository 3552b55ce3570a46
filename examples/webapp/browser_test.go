package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tetherkit/tether/internal/oauthtest"
)

// The end-to-end test: the web app driven in headless Chromium. Tenant A
// initiates with "I don't have a URL", copies the code, the private agent
// (examples/agent, built and run as a program) accepts it and the page
// turns Active by itself; A sends a message, pauses, activates and
// deletes, and the history shows each step; tenant B cannot see the
// connection; an org connection runs against the real OAuth test server,
// including access withdrawn at the provider, Inactive shown,
// Re-authorize, Active. A screenshot of each step goes to
// $TETHER_ARTIFACTS/webapp/, or artifacts/ here.
func TestBrowser(t *testing.T) {
	exe := chromium()
	if exe == "" {
		if os.Getenv("TETHER_REQUIRE_CHROMIUM") == "1" {
			t.Fatal("examples/webapp: browser test needs chromium (apt-get install -y chromium), and TETHER_REQUIRE_CHROMIUM=1 is set")
		}
		t.Skip("examples/webapp: browser test needs chromium (apt-get install -y chromium); .ci/run installs it")
	}
	agentBin := buildAgent(t)
	a := startApp(t, config{
		AllowPrivateNetwork: true,
		DemoOAuth:           oauthtest.Unavailable() == nil, // the org part is skipped (or fails) without it
		OrgCheckEvery:       250 * time.Millisecond,
	})
	b := newBrowser(t, exe, a.cfg.PublicURL)

	var id, code string
	t.Run("peer", func(t *testing.T) {
		b.t = t
		b.do(chromedp.Navigate(b.base + "/signin"))
		b.wait("#signin-acme")
		b.shot("signin")
		b.click("signin-acme")
		b.wait("#initiate")
		b.shot("connections-empty")

		b.click("initiate")
		b.wait("#no-url")
		b.click("no-url")
		b.wait("#destination:disabled")
		b.shot("initiate-destination")
		b.click("next")
		b.wait("#mode-script")
		b.click("mode-script")
		b.shot("initiate-mode")
		b.click("next")
		b.wait("#remote-name")
		b.do(
			chromedp.Clear(chromedp.ID("remote-name")), chromedp.SendKeys(chromedp.ID("remote-name"), "Field Agent"),
			chromedp.SendKeys(chromedp.ID("name"), "Acme to Field"),
			chromedp.SendKeys(chromedp.ID("description"), "Escalated tickets for the field team"),
		)
		b.shot("initiate-details")
		b.click("initiate-submit")
		b.wait("#invitation-code")

		// Copy: the button copies the textarea's value, which is what is
		// read here (a headless browser's clipboard is not reliable).
		b.click("copy-code")
		b.wait(`#copy-code[data-copied="true"]`)
		code = b.value("#invitation-code")
		loc := b.location()
		id = strings.TrimSuffix(loc[strings.LastIndex(loc, "/connections/")+len("/connections/"):], "/invitation")
		b.shot("invitation-code")
		if !strings.HasPrefix(code, "tether_inv_") {
			t.Fatalf("the page's code is %q", code)
		}

		ag := runAgent(t, agentBin, "-data", t.TempDir(), "-invite", code, "-allow-private-network", "-name", "Field Agent")
		ag.expect(`^connection \S+ active$`)
		// No reload: the page hears of the acceptance on its event stream.
		b.wait(`#live [data-status="active"]`)
		b.wait(`[data-testid="accepted"]`)
		b.shot("invitation-accepted")

		b.click("open-connection")
		b.wait("#pause")
		b.do(chromedp.SendKeys(chromedp.ID("message"), "Ticket 42 escalated"))
		b.click("send")
		b.waitText(`[data-testid="flash"]`, "Message sent")
		ag.expect(`^received \S+: Ticket 42 escalated$`)
		b.shot("details-active")

		b.click("pause")
		b.wait(`#live [data-status="paused"]`)
		ag.expect(`^connection \S+ paused$`)
		b.shot("paused")
		b.click("activate")
		b.wait("#pause")
		ag.expect(`^connection \S+ active$`)
		b.shot("activated")
		b.click("delete")
		b.wait("#confirm-delete")
		b.shot("delete-confirm")
		b.click("confirm-delete")
		b.wait(`#live [data-status="deleted"]`)
		ag.expect(`^connection \S+ deleted$`)
		b.shot("deleted-history")
		got := b.eval(`Array.from(document.querySelectorAll('#history [data-testid=event]')).map(e => e.dataset.type).join(' ')`)
		if !isSubsequence([]string{"deleted", "activated", "paused", "accepted", "created"}, strings.Fields(got)) {
			t.Fatalf("history (newest first): %s", got)
		}
	})

	t.Run("tenants", func(t *testing.T) {
		b.t = t
		if id == "" {
			t.Fatal("the peer part failed before it made a connection: nothing to check here")
		}
		b.do(chromedp.Navigate(b.base + "/connections?show=deleted"))
		b.wait(fmt.Sprintf(`[data-testid="connection"][data-id=%q]`, id))
		b.click("signout")
		b.wait("#signin-globex")
		b.click("signin-globex")
		b.wait("#initiate")
		b.do(chromedp.Navigate(b.base + "/connections?show=deleted"))
		b.wait("#empty")
		if text := b.eval(`document.body.innerText`); strings.Contains(text, "Acme to Field") || !strings.Contains(text, "Globex Help Desk") {
			t.Fatalf("tenant B's list:\n%s", text)
		}
		b.shot("globex-list")
		b.do(chromedp.Navigate(b.base + "/connections/" + id))
		b.waitText(`[data-testid="error"]`, "There is no such connection.")
		b.shot("globex-not-found")
		b.click("signout")
		b.wait("#signin-acme")
	})

	t.Run("org", func(t *testing.T) {
		b.t = t
		oauthtest.Require(t)
		b.do(chromedp.Navigate(b.base + "/signin"))
		b.click("signin-acme")
		b.wait("#new-org")
		b.click("new-org")
		b.wait("#connect-demo")
		b.do(chromedp.Clear(chromedp.ID("demo-name")), chromedp.SendKeys(chromedp.ID("demo-name"), "Acme CRM"))
		b.shot("org-new")
		// Connect opens the provider's login in a popup; its callback
		// tells this page, which opens the new connection.
		b.click("connect-demo")
		b.wait(`#live [data-status="active"]`)
		b.waitText("#connection-name", "Acme CRM")
		// Check now calls the org's API with the connection's token.
		b.click("check")
		b.waitText(`[data-testid="flash"]`, "The org's API: OK.")
		b.waitText(`[data-testid="health"]`, "OK · checked")
		b.shot("org-active")

		if err := a.demo.Withdraw(context.Background(), "acme"); err != nil {
			t.Fatal(err)
		}
		// The app's checks find the access withdrawn; the page shows it
		// without a reload.
		b.wait(`#live [data-status="inactive"]`)
		b.wait("#reauthorize")
		b.shot("org-inactive")
		b.click("reauthorize")
		b.wait(`#live [data-status="active"]`)
		got := b.eval(`Array.from(document.querySelectorAll('#history [data-testid=event]')).map(e => e.dataset.type).join(' ')`)
		if !isSubsequence([]string{"reauthorized", "auth_lost", "created"}, strings.Fields(got)) {
			t.Fatalf("history (newest first): %s", got)
		}
		b.shot("org-reauthorized")
	})
}

// chromium returns the path of a Chromium or Chrome, "" when there is
// none.
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// buildAgent builds examples/agent, with -race when this test has it (so
// that the build reuses the test's compiled packages).
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "agent")
	args := []string{"build", "-o", bin}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building examples/agent: %v", err)
	}
	cmd := exec.Command(goBin, append(args, "../agent")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build examples/agent: %v\n%s", err, out)
	}
	return bin
}

// agentProc is a running agent and the lines it printed.
type agentProc struct {
	t     *testing.T
	mu    sync.Mutex
	lines []string
	seen  int // lines before this one were matched by expect
	more  chan struct{}
	ended chan struct{}
}

func runAgent(t *testing.T, bin string, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProc{t: t, more: make(chan struct{}, 1), ended: make(chan struct{})}
	go func() {
		defer close(p.ended)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
			select {
			case p.more <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan error, 1)
		go func() { <-p.ended; done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		t.Logf("agent output:\n%s%s", strings.Join(p.lines, "\n"), stderr.String())
	})
	return p
}

// expect waits for a line matching expr after the lines already matched.
func (p *agentProc) expect(expr string) {
	p.t.Helper()
	re := regexp.MustCompile(expr)
	deadline := time.After(30 * time.Second)
	for {
		p.mu.Lock()
		for i := p.seen; i < len(p.lines); i++ {
			if re.MatchString(p.lines[i]) {
				p.seen = i + 1
				p.mu.Unlock()
				return
			}
		}
		p.mu.Unlock()
		select {
		case <-p.more:
		case <-p.ended:
			p.t.Fatalf("the agent ended without printing %s", expr)
		case <-deadline:
			p.t.Fatalf("the agent did not print %s within 30 s", expr)
		}
	}
}

// browser is a headless Chromium tab on the app.
type browser struct {
	t    testing.TB
	ctx  context.Context
	base string
	dir  string // screenshots
	n    int
	t0   time.Time
}

func newBrowser(t *testing.T, exe, base string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.WindowSize(1280, 900), chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting %s: %v", exe, err)
	}
	dir := filepath.Join("artifacts")
	if a := os.Getenv("TETHER_ARTIFACTS"); a != "" {
		dir = filepath.Join(a, "webapp")
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	t.Logf("screenshots in %s", abs)
	return &browser{t: t, ctx: ctx, base: base, dir: dir, t0: time.Now()}
}

// stepTimeout bounds each step: generous, for a busy machine.
const stepTimeout = 30 * time.Second

func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.fail(err)
	}
}

// fail ends the test with a screenshot of where the page stood.
func (b *browser) fail(err error) {
	b.t.Helper()
	b.shot("failure")
	text, _ := chromedp.Run(b.ctx, chromedp.EvaluateAsDevTools[string](`document.location + "\n" + document.body.innerText`))
	b.t.Fatalf("%v\npage: %s", err, text)
}

// wait waits until an element matching the CSS selector is visible.
func (b *browser) wait(sel string) {
	b.t.Helper()
	b.do(chromedp.WaitVisible(chromedp.CSS(sel)))
}

// waitText waits until the element matching sel shows text, across the
// navigations a click may start.
func (b *browser) waitText(sel, text string) {
	b.t.Helper()
	b.until(fmt.Sprintf(`(function(){ var e = document.querySelector(%q); return !!e && e.innerText.includes(%q); })()`, sel, text),
		fmt.Sprintf("%q in %s", text, sel))
}

// click clicks the element with id once the page is in sync with the
// server: a live page has read, once its event stream was open, what
// happened since it was rendered, so no refresh replaces the element
// under the click.
func (b *browser) click(id string) {
	b.t.Helper()
	b.until(`!document.querySelector('[data-live]') || document.documentElement.getAttribute('data-live') === 'synced'`, "the page in sync")
	b.do(chromedp.Click(chromedp.ID(id)))
}

// until polls a JavaScript expression until it is true.
func (b *browser) until(js, what string) {
	b.t.Helper()
	deadline := time.Now().Add(stepTimeout)
	for {
		ok, err := chromedp.Run(b.ctx, chromedp.Poll[bool](js, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(2*time.Second)))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.fail(fmt.Errorf("waiting for %s: not within %v (%v)", what, stepTimeout, err))
		}
	}
}

func (b *browser) value(sel string) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Value(chromedp.CSS(sel)))
	if err != nil {
		b.fail(err)
	}
	return v
}

func (b *browser) location() string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Location())
	if err != nil {
		b.fail(err)
	}
	return v
}

func (b *browser) eval(js string) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](js))
	if err != nil {
		b.fail(err)
	}
	return v
}

// shot saves a screenshot of the whole page as the next numbered PNG.
func (b *browser) shot(name string) {
	b.t.Helper()
	b.n++
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	file := fmt.Sprintf("%02d-%s.png", b.n, name)
	if err := os.WriteFile(filepath.Join(b.dir, file), png, 0o644); err != nil {
		b.t.Error(err)
	}
	b.t.Logf("%5.1fs %s", time.Since(b.t0).Seconds(), file)
}
