package load

import (
	"bufio"
	"fmt"
	"io"
	"mime"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// Sink is a minimal SMTP server on loopback that accepts every message and
// remembers when it arrived, for whom and its subject. It speaks what an SMTP
// client needs without TLS or AUTH (twofactord's smtp://host:port?tls=none).
// Hold makes new connections wait before the greeting, so a backlog builds up
// in the notifier's ledger; Release lets them through.
type Sink struct {
	ln net.Listener

	mu       sync.Mutex
	held     chan struct{} // closed when released; nil when not held
	messages []Mail
	closed   chan struct{}
	conns    sync.WaitGroup
}

// Mail is one message the sink accepted.
type Mail struct {
	At      time.Time
	To      []string
	Subject string
}

// StartSink listens on addr (127.0.0.1:0 for any free port).
func StartSink(addr string) (*Sink, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &Sink{ln: ln, closed: make(chan struct{})}
	go s.serve()
	return s, nil
}

// Addr is host:port of the sink.
func (s *Sink) Addr() string { return s.ln.Addr().String() }

// URL is the TWOFACTOR_SMTP_URL that points twofactord at the sink.
func (s *Sink) URL() string { return "smtp://" + s.Addr() + "?tls=none" }

// Close stops accepting and ends every connection.
func (s *Sink) Close() error {
	s.Release()
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	err := s.ln.Close()
	s.conns.Wait()
	return err
}

// Hold makes connections opened from now on wait before the greeting.
func (s *Sink) Hold() {
	s.mu.Lock()
	if s.held == nil {
		s.held = make(chan struct{})
	}
	s.mu.Unlock()
}

// Release lets waiting and new connections through.
func (s *Sink) Release() {
	s.mu.Lock()
	if s.held != nil {
		close(s.held)
		s.held = nil
	}
	s.mu.Unlock()
}

// Count is how many messages arrived so far.
func (s *Sink) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.messages)
}

// Since returns the messages that arrived at or after t.
func (s *Sink) Since(t time.Time) []Mail {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Mail
	for _, m := range s.messages {
		if !m.At.Before(t) {
			out = append(out, m)
		}
	}
	return out
}

func (s *Sink) serve() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.conns.Add(1)
		go func() {
			defer s.conns.Done()
			defer conn.Close()
			s.mu.Lock()
			held := s.held
			s.mu.Unlock()
			if held != nil {
				select {
				case <-held:
				case <-s.closed:
					return
				}
			}
			s.session(conn)
		}()
	}
}

// session runs one SMTP conversation (RFC 5321, the subset clients use).
func (s *Sink) session(conn net.Conn) {
	tp := textproto.NewConn(conn)
	reply := func(format string, args ...any) bool {
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		return tp.PrintfLine(format, args...) == nil
	}
	if !reply("220 twofactor-bench sink ESMTP") {
		return
	}
	var to []string
	for {
		_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		line, err := tp.ReadLine()
		if err != nil {
			return
		}
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			if !reply("250-twofactor-bench\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760") {
				return
			}
		case "HELO", "NOOP":
			reply("250 OK")
		case "RSET":
			to = nil
			reply("250 OK")
		case "MAIL":
			to = nil
			reply("250 OK")
		case "RCPT":
			if _, a, ok := strings.Cut(arg, ":"); ok {
				a = strings.TrimSpace(a)
				if i := strings.IndexByte(a, '>'); i >= 0 {
					a = a[:i]
				}
				to = append(to, strings.TrimPrefix(a, "<"))
			}
			reply("250 OK")
		case "DATA":
			if !reply("354 end with <CRLF>.<CRLF>") {
				return
			}
			body, err := tp.ReadDotBytes()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.messages = append(s.messages, Mail{At: time.Now(), To: to, Subject: subject(body)})
			s.mu.Unlock()
			to = nil
			reply("250 OK queued")
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 command not implemented")
		}
	}
}

// subject reads the decoded Subject header of a message.
func subject(msg []byte) string {
	r := textproto.NewReader(bufio.NewReader(strings.NewReader(string(msg))))
	h, err := r.ReadMIMEHeader()
	if err != nil && err != io.EOF && len(h) == 0 {
		return ""
	}
	dec := new(mime.WordDecoder)
	s, err := dec.DecodeHeader(h.Get("Subject"))
	if err != nil {
		return h.Get("Subject")
	}
	return s
}

// String describes the sink for logs.
func (s *Sink) String() string { return fmt.Sprintf("SMTP sink on %s", s.Addr()) }
