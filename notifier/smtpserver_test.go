package notifier_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// smtpServer is a real SMTP server on a loopback port (emersion/go-smtp) that
// keeps what it receives. It can be stopped (connections refused) and started
// again on the same port, fail on purpose, and call a hook after storing a message
// and before answering 250.
type smtpServer struct {
	t    *testing.T
	addr string

	// Settings, read by sessions; set before use or under mu.
	tlsConfig  *tls.Config
	implicit   bool // TLS from the first byte (smtps)
	user, pass string

	mu       sync.Mutex
	srv      *smtp.Server
	msgs     []received
	sessions int
	// rejectRcpt returns an SMTP error for a recipient (permanent failures).
	rejectRcpt func(to string) error
	// failData returns an error instead of accepting a message (temporary or
	// permanent failures of the message it is given).
	failData func(r received) error
	// afterStore runs once a message is stored, before the server answers.
	afterStore func(r received)
	changed    chan struct{}
}

type received struct {
	From      string
	To        []string
	Raw       []byte
	Header    mail.Header
	MessageID string
	Subject   string
	Text      string
	HTML      string
	At        time.Time
}

func newSMTPServer(t *testing.T) *smtpServer {
	t.Helper()
	s := &smtpServer{t: t, changed: make(chan struct{})}
	s.start("127.0.0.1:0")
	t.Cleanup(s.stop)
	return s
}

func (s *smtpServer) start(addr string) {
	s.t.Helper()
	var ln net.Listener
	var err error
	// The port was ours a moment ago; on a busy machine rebinding may need a retry.
	for i := 0; i < 50; i++ {
		ln, err = net.Listen("tcp", addr)
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("smtp server: listen %s: %v", addr, err)
	}
	if s.implicit {
		ln = tls.NewListener(ln, s.tlsConfig)
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		s.mu.Lock()
		s.sessions++
		s.mu.Unlock()
		return &session{s: s}, nil
	}))
	srv.Domain = "localhost"
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	srv.MaxMessageBytes = 1 << 20
	srv.AllowInsecureAuth = s.tlsConfig == nil
	if !s.implicit {
		srv.TLSConfig = s.tlsConfig
	}
	s.mu.Lock()
	s.srv = srv
	s.addr = ln.Addr().String()
	s.mu.Unlock()
	go srv.Serve(ln) //nolint:errcheck // ends with Close
}

// stop closes the listener and every connection: new connections are refused.
func (s *smtpServer) stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// restart listens again on the same port.
func (s *smtpServer) restart() { s.start(s.addr) }

func (s *smtpServer) url() string { return "smtp://" + s.addr + "?tls=none" }

func (s *smtpServer) set(f func(s *smtpServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *smtpServer) messages() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.msgs...)
}

// wait returns once cond holds for the messages received, or fails the test.
func (s *smtpServer) wait(timeout time.Duration, what string, cond func([]received) bool) []received {
	s.t.Helper()
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		msgs := append([]received(nil), s.msgs...)
		ch := s.changed
		s.mu.Unlock()
		if cond(msgs) {
			return msgs
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			s.t.Fatalf("smtp server: timed out waiting for %s; have %d messages: %v", what, len(msgs), summary(msgs))
		}
	}
}

func summary(msgs []received) []string {
	var out []string
	for _, m := range msgs {
		out = append(out, strings.Join(m.To, ",")+" "+m.Subject+" "+m.MessageID)
	}
	return out
}

type session struct {
	s      *smtpServer
	from   string
	to     []string
	authed bool
}

func (se *session) AuthMechanisms() []string {
	if se.s.user == "" {
		return nil
	}
	return []string{sasl.Plain}
}

func (se *session) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != se.s.user || pass != se.s.pass {
			return smtp.ErrAuthFailed
		}
		se.authed = true
		return nil
	}), nil
}

func (se *session) Mail(from string, _ *smtp.MailOptions) error {
	if se.s.user != "" && !se.authed {
		return smtp.ErrAuthRequired
	}
	se.from = from
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	se.s.mu.Lock()
	reject := se.s.rejectRcpt
	se.s.mu.Unlock()
	if reject != nil {
		if err := reject(to); err != nil {
			return err
		}
	}
	se.to = append(se.to, to)
	return nil
}

func (se *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	msg := parseReceived(se.s.t, raw)
	msg.From, msg.To, msg.At = se.from, append([]string(nil), se.to...), time.Now()
	se.s.mu.Lock()
	fail := se.s.failData
	se.s.mu.Unlock()
	if fail != nil {
		if err := fail(msg); err != nil {
			return err
		}
	}
	se.s.mu.Lock()
	se.s.msgs = append(se.s.msgs, msg)
	close(se.s.changed)
	se.s.changed = make(chan struct{})
	hook := se.s.afterStore
	se.s.mu.Unlock()
	if hook != nil {
		hook(msg)
	}
	return nil
}

func (se *session) Reset()        { se.from, se.to = "", nil }
func (se *session) Logout() error { return nil }

var errTemporary = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}

// parseReceived decodes headers and the text and HTML parts.
func parseReceived(t *testing.T, raw []byte) received {
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Errorf("smtp server: unreadable message: %v", err)
		return received{Raw: raw}
	}
	dec := new(mime.WordDecoder)
	subject, err := dec.DecodeHeader(m.Header.Get("Subject"))
	if err != nil {
		t.Errorf("smtp server: subject: %v", err)
	}
	r := received{Raw: raw, Header: m.Header, MessageID: m.Header.Get("Message-Id"), Subject: subject}
	mediaType, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil {
		t.Errorf("smtp server: content type: %v", err)
		return r
	}
	if !strings.HasPrefix(mediaType, "multipart/") {
		r.Text = decodePart(t, m.Header.Get("Content-Transfer-Encoding"), m.Body)
		return r
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Errorf("smtp server: part: %v", err)
			break
		}
		ct, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		// multipart.Reader decodes quoted-printable itself and drops the header.
		body := decodePart(t, p.Header.Get("Content-Transfer-Encoding"), p)
		switch ct {
		case "text/plain":
			r.Text = body
		case "text/html":
			r.HTML = body
		}
	}
	return r
}

func decodePart(t *testing.T, encoding string, r io.Reader) string {
	var b []byte
	var err error
	switch strings.ToLower(encoding) {
	case "quoted-printable":
		b, err = io.ReadAll(quotedprintable.NewReader(r))
	default:
		b, err = io.ReadAll(r)
	}
	if err != nil {
		t.Errorf("smtp server: body: %v", err)
	}
	return strings.ReplaceAll(string(b), "\r\n", "\n")
}
