package webui_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"

	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/internal/testmail"
	"github.com/twofactor/twofactor/secrets"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

// stack is the real service (`twofactord serve --web-ui`, built from this
// tree) with a loopback SMTP server, and a headless Chromium.
type stack struct {
	base    string // http://127.0.0.1:port
	box     *mailbox
	browser context.Context
	shots   string // where screenshots go
	smsDir  string // the file sink's folder: text messages land here (no SMS provider)
}

// chromiumPath finds Debian's Chromium; the browser tests fail without it.
func chromiumPath(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the browser tests need Chromium: install Debian's package `chromium` (apt-get install -y chromium); .ci/run installs it")
	return ""
}

func startStack(t *testing.T) *stack {
	t.Helper()
	if _, err := exec.LookPath("zbarimg"); err != nil {
		t.Fatal("the browser tests read the QR code with zbarimg: install Debian's package `zbar-tools`")
	}
	chrome := chromiumPath(t)
	box := startMailbox(t)
	bin := filepath.Join(t.TempDir(), "twofactord")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/twofactord").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	mk, err := secrets.GenerateMasterKey(rand.Reader, "k1")
	if err != nil {
		t.Fatal(err)
	}
	code := make([]byte, 32)
	_, _ = rand.Read(code)
	addr := "127.0.0.1:" + freePort(t)
	smsDir := t.TempDir()
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TWOFACTOR_") {
			env = append(env, kv)
		}
	}
	env = append(env, "TWOFACTOR_DATABASE_URL="+testdb.Fresh(t), "TWOFACTOR_MASTER_KEYS="+mk.String(),
		"TWOFACTOR_CODE_KEY="+base64.StdEncoding.EncodeToString(code), "TWOFACTOR_WEB_UI=true",
		"TWOFACTOR_SMTP_URL=smtp://"+box.addr+"?tls=none", "TWOFACTOR_MAIL_FROM=security@acme.test",
		// The UI calls the API from one address, as a host product's backend does.
		"TWOFACTOR_IP_RATE=-1", "TWOFACTOR_MAIL_DIR="+smsDir)
	logs := &lockedBuffer{}
	cmd := exec.Command(bin, "serve", "--http-addr", addr)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("twofactord logs:\n%s", logs.String())
		}
	})
	base := "http://" + addr
	for deadline := time.Now().Add(60 * time.Second); ; {
		if resp, err := http.Get(base + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("twofactord exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("twofactord never ready\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome),
		chromedp.NoSandbox, // root in CI
		chromedp.DisableGPU, chromedp.WindowSize(1280, 900), chromedp.Flag("lang", "en-US"))
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	if err := chromedp.Run(browser); err != nil {
		t.Fatalf("starting Chromium (%s): %v", chrome, err)
	}
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	shots := t.TempDir()
	if os.Getenv("UPDATE_SCREENSHOTS") != "" {
		shots = filepath.Join("..", "docs", "screenshots")
		if err := os.MkdirAll(shots, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &stack{base: base, box: box, browser: browser, shots: shots, smsDir: smsDir}
}

func freePort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// page is one person's browser: a browser context of its own (its own
// cookies), so people in one test never share a session.
type page struct {
	t   *testing.T
	s   *stack
	ctx context.Context
	// base is where this browser reaches the UI: the stack's address, or
	// http://localhost:port where a security key needs a domain name.
	base string
}

func (s *stack) person(t *testing.T) *page {
	t.Helper()
	// A browser context of its own, opened in a window: Chromium's headless
	// mode refuses a tab in a new browser context without one.
	var tid target.ID
	err := chromedp.Run(s.browser, chromedp.ActionFunc(func(ctx context.Context) error {
		ex := cdp.WithExecutor(ctx, chromedp.FromContext(ctx).Browser)
		bc, err := target.CreateBrowserContext().WithDisposeOnDetach(true).Do(ex)
		if err != nil {
			return err
		}
		tid, err = target.CreateTarget("about:blank").WithBrowserContextID(bc).WithNewWindow(true).Do(ex)
		return err
	}))
	if err != nil {
		t.Fatalf("opening a browser window: %v", err)
	}
	ctx, cancel := chromedp.NewContext(s.browser, chromedp.WithTargetID(tid))
	t.Cleanup(cancel)
	// Attach with this context itself: the context of the first Run owns the
	// tab, and run's bounded contexts would close it when they end.
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("attaching to the browser window: %v", err)
	}
	return &page{t: t, s: s, ctx: ctx, base: s.base}
}

// run runs browser actions with a bound, failing the test on error.
func (p *page) run(what string, actions ...chromedp.Action) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v\npage:\n%s", what, err, p.textNow())
	}
}

// textNow is what the page shows, for failure messages.
func (p *page) textNow() string {
	ctx, cancel := context.WithTimeout(p.ctx, 3*time.Second)
	defer cancel()
	var s string
	_ = chromedp.Run(ctx, chromedp.Text("body", &s, chromedp.ByQuery))
	return s
}

func (p *page) open(path string) {
	p.t.Helper()
	p.run("open "+path, chromedp.Navigate(p.base+path), chromedp.WaitReady("body", chromedp.ByQuery))
}

// text is the visible text of the first element matching sel.
func (p *page) text(sel string) string {
	p.t.Helper()
	var s string
	p.run("read "+sel, chromedp.WaitVisible(sel, chromedp.ByQuery), chromedp.Text(sel, &s, chromedp.ByQuery))
	return s
}

// sees asserts the page shows each text.
func (p *page) sees(want ...string) {
	p.t.Helper()
	body := p.text("main")
	for _, w := range want {
		if !strings.Contains(body, w) {
			p.t.Fatalf("the page does not show %q; it shows:\n%s", w, body)
		}
	}
}

func (p *page) notSees(unwanted string) {
	p.t.Helper()
	if body := p.text("main"); strings.Contains(body, unwanted) {
		p.t.Fatalf("the page shows %q:\n%s", unwanted, body)
	}
}

// fill types into a field found by its label's for= id.
func (p *page) fill(id, value string) {
	p.t.Helper()
	sel := "#" + id
	p.run("fill "+id, chromedp.WaitVisible(sel, chromedp.ByQuery),
		chromedp.Evaluate(fmt.Sprintf(`document.querySelector(%q).value = ""`, sel), nil),
		chromedp.SendKeys(sel, value, chromedp.ByQuery))
}

// press clicks the button with this text and waits for the next page.
func (p *page) press(label string) {
	p.t.Helper()
	sel := fmt.Sprintf(`//button[normalize-space(.)=%q]`, label)
	p.run("press "+label, chromedp.WaitVisible(sel, chromedp.BySearch), chromedp.Click(sel, chromedp.BySearch),
		chromedp.Sleep(50*time.Millisecond), chromedp.WaitReady("body", chromedp.ByQuery))
	p.waitLoaded()
}

// follow clicks the link with this text.
func (p *page) follow(label string) {
	p.t.Helper()
	sel := fmt.Sprintf(`//a[normalize-space(.)=%q]`, label)
	p.run("follow "+label, chromedp.WaitVisible(sel, chromedp.BySearch), chromedp.Click(sel, chromedp.BySearch),
		chromedp.Sleep(50*time.Millisecond))
	p.waitLoaded()
}

// waitLoaded waits for the navigation a click started to finish.
func (p *page) waitLoaded() {
	p.t.Helper()
	var state string
	for i := 0; i < 200; i++ {
		p.run("ready state", chromedp.Evaluate(`document.readyState`, &state))
		if state == "complete" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// check ticks a radio button or checkbox by its label text.
func (p *page) check(label string) {
	p.t.Helper()
	sel := fmt.Sprintf(`//label[contains(normalize-space(.), %q)]/input`, label)
	p.run("check "+label, chromedp.Click(sel, chromedp.BySearch))
}

func (p *page) selectOption(id, value string) {
	p.t.Helper()
	p.run("select "+id, chromedp.Evaluate(fmt.Sprintf(`document.getElementById(%q).value = %q`, id, value), nil))
}

func (p *page) attr(sel, name string) string {
	p.t.Helper()
	var v string
	var ok bool
	p.run("attribute "+name, chromedp.AttributeValue(sel, name, &v, &ok, chromedp.ByQuery))
	return v
}

// screenshot saves the page at a phone's width (375 px) or a desktop's.
func (p *page) screenshot(name string, width int64) {
	p.t.Helper()
	var buf []byte
	p.run("screenshot "+name,
		emulation.SetDeviceMetricsOverride(width, 800, 1, width < 500),
		chromedp.CaptureScreenshot(&buf), // the viewport, as PNG
		emulation.ClearDeviceMetricsOverride())
	if err := os.WriteFile(filepath.Join(p.s.shots, name+".png"), buf, 0o644); err != nil {
		p.t.Fatal(err)
	}
}

// noHorizontalScroll: nothing is wider than a 375 px phone's screen.
func (p *page) fitsPhone() {
	p.t.Helper()
	var wide bool
	p.run("width at 375 px",
		emulation.SetDeviceMetricsOverride(375, 800, 1, true),
		chromedp.Sleep(50*time.Millisecond),
		chromedp.Evaluate(`document.documentElement.scrollWidth > 375`, &wide),
		emulation.ClearDeviceMetricsOverride())
	if wide {
		p.t.Fatalf("the page is wider than 375 px:\n%s", p.textNow())
	}
}

// signIn is the demo password step, on the tenant the sign-in page lists by
// this name.
func (p *page) signIn(tenant, role, user string) {
	p.t.Helper()
	p.open("/ui/")
	p.check(tenant)
	p.signInAs(role, user)
}

// signInNew makes a new demo tenant with this name on the way.
func (p *page) signInNew(tenant, role, user string) {
	p.t.Helper()
	p.open("/ui/")
	p.check("A new demo tenant")
	p.fill("tenant_name", tenant)
	p.signInAs(role, user)
}

func (p *page) signInAs(role, user string) {
	p.t.Helper()
	p.check(map[string]string{"user": "User", "admin": "Admin", "superadmin": "Super admin", "auditor": "Auditor"}[role])
	p.fill("user", user)
	p.press("Sign in")
}

func (p *page) signOut() {
	p.t.Helper()
	p.press("Sign out")
	p.sees("Sign in")
}

// mailbox is the loopback SMTP server the binary under test sends to.
type mailbox struct {
	*testmail.Mailbox
	addr string
}

type email = testmail.Email

func startMailbox(t *testing.T) *mailbox {
	b := testmail.Start(t)
	return &mailbox{Mailbox: b, addr: b.Addr}
}

// await waits for the n-th message (1-based) to `to` whose subject contains subject.
func (b *mailbox) await(t *testing.T, to, subject string, n int) email {
	t.Helper()
	return b.Await(t, to, subject, n, 20*time.Second)
}

func codeIn(t *testing.T, m email) string {
	t.Helper()
	return m.Code(t)
}

// sms waits for the n-th text message (1-based, in order of writing) of this
// notification kind to a number, as the file sink wrote it, and returns its code.
func (s *stack) sms(t *testing.T, to, kind string, n int) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		entries, _ := os.ReadDir(s.smsDir)
		type msg struct {
			at   time.Time
			body string
		}
		var found []msg
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".sms.txt") || !strings.Contains(e.Name(), "-"+kind+"-") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(s.smsDir, e.Name()))
			info, ierr := e.Info()
			if err != nil || ierr != nil || !strings.HasPrefix(string(b), "To: "+to+"\n") {
				continue
			}
			found = append(found, msg{info.ModTime(), string(b)})
		}
		sort.Slice(found, func(i, j int) bool { return found[i].at.Before(found[j].at) })
		if len(found) >= n {
			// The text after the header (its ID line may hold digits too).
			_, text, _ := strings.Cut(found[n-1].body, "\n\n")
			return codeIn(t, email{Subject: kind, Text: text})
		}
		if time.Now().After(deadline) {
			t.Fatalf("no text message %d of kind %s to %s in %s", n, kind, to, s.smsDir)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
