// Package testmail is a real SMTP server on a loopback port for tests: the
// service sends to it as it would to any relay, and a test reads back what a
// person would find in their inbox.
package testmail

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// Mailbox keeps every message it receives, one Email per recipient.
type Mailbox struct {
	Addr string // host:port to give the service as its SMTP relay
	mu   sync.Mutex
	msgs []Email
}

// Email is one recipient's copy of a message, its text/plain part decoded.
type Email struct {
	To      string
	Subject string
	Text    string
}

// Start listens on a loopback port until the test ends.
func Start(t testing.TB) *Mailbox {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	box := &Mailbox{Addr: ln.Addr().String()}
	srv := smtp.NewServer(box)
	srv.Domain = "localhost"
	srv.AllowInsecureAuth = true
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return box
}

// Await waits up to timeout for the n-th message (1-based) to `to` whose
// subject contains subject, and fails the test with what did arrive if none.
func (b *Mailbox) Await(t testing.TB, to, subject string, n int, timeout time.Duration) Email {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m, ok := b.find(to, subject, n); ok {
			return m
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	var got []string
	for _, m := range b.msgs {
		got = append(got, fmt.Sprintf("%s %q", m.To, m.Subject))
	}
	t.Fatalf("no message %d %q to %s within %v; received: %v", n, subject, to, timeout, got)
	return Email{}
}

func (b *Mailbox) find(to, subject string, n int) (Email, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	seen := 0
	for _, m := range b.msgs {
		if strings.Contains(m.Subject, subject) && m.To == to {
			if seen++; seen == n {
				return m, true
			}
		}
	}
	return Email{}, false
}

// Count is how many copies to `to` (any recipient if empty) have a subject
// containing subject.
func (b *Mailbox) Count(to, subject string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, m := range b.msgs {
		if strings.Contains(m.Subject, subject) && (to == "" || m.To == to) {
			n++
		}
	}
	return n
}

var sixDigits = regexp.MustCompile(`(?m)(^|[^0-9])([0-9]{6})([^0-9]|$)`)

// Code is the first six-digit code in the message's text.
func (m Email) Code(t testing.TB) string {
	t.Helper()
	match := sixDigits.FindStringSubmatch(m.Text)
	if match == nil {
		t.Fatalf("no code in %q:\n%s", m.Subject, m.Text)
	}
	return match[2]
}

// NewSession is go-smtp's hook for each connection.
func (b *Mailbox) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{box: b}, nil }

type session struct {
	box *Mailbox
	to  []string
}

func (s *session) Reset()                               { s.to = nil }
func (s *session) Logout() error                        { return nil }
func (s *session) Mail(string, *smtp.MailOptions) error { return nil }
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return err
	}
	subject, _ := new(mime.WordDecoder).DecodeHeader(m.Header.Get("Subject"))
	text, err := plainText(m.Header.Get("Content-Type"), m.Header.Get("Content-Transfer-Encoding"), m.Body)
	if err != nil {
		return err
	}
	s.box.mu.Lock()
	defer s.box.mu.Unlock()
	for _, to := range s.to {
		s.box.msgs = append(s.box.msgs, Email{To: to, Subject: subject, Text: text})
	}
	return nil
}

// plainText finds the text/plain part of a message, the one a person reads.
func plainText(contentType, encoding string, body io.Reader) (string, error) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(mt, "multipart/") {
		mr := multipart.NewReader(body, params["boundary"])
		for {
			p, err := mr.NextRawPart()
			if err != nil {
				return "", err
			}
			if t, err := plainText(p.Header.Get("Content-Type"), p.Header.Get("Content-Transfer-Encoding"), p); err == nil && t != "" {
				return t, nil
			}
		}
	}
	if mt != "text/plain" {
		return "", nil
	}
	if strings.EqualFold(encoding, "quoted-printable") {
		body = quotedprintable.NewReader(body)
	}
	b, err := io.ReadAll(body)
	return string(b), err
}
