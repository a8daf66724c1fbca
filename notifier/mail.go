package notifier

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	gomail "github.com/wneessen/go-mail"
)

// Mail is one email, rendered.
type Mail struct {
	// MessageID is stable for a notification ("<event-id.kind@sender-domain>"), so
	// the rare duplicate of an at-least-once delivery can be recognised downstream.
	MessageID string
	FromName  string
	From      string
	To        string
	Subject   string
	Text      string
	HTML      string
	// Kind is for logs and file names only.
	Kind Kind
}

// Mailer sends an email. An error means the message may not have been accepted;
// it will be tried again.
type Mailer interface {
	SendMail(ctx context.Context, m Mail) error
}

// buildMsg turns a Mail into a MIME message (multipart/alternative: text, HTML).
func buildMsg(m Mail) (*gomail.Msg, error) {
	msg := gomail.NewMsg(gomail.WithNoDefaultUserAgent())
	if m.FromName != "" {
		if err := msg.FromFormat(m.FromName, m.From); err != nil {
			return nil, fmt.Errorf("sender address: %w", err)
		}
	} else if err := msg.From(m.From); err != nil {
		return nil, fmt.Errorf("sender address: %w", err)
	}
	if err := msg.To(m.To); err != nil {
		return nil, errors.New("recipient address is not valid")
	}
	msg.Subject(m.Subject)
	if m.MessageID != "" {
		msg.SetMessageIDWithValue(strings.Trim(m.MessageID, "<>"))
	}
	msg.SetDate()
	msg.SetGenHeader("Auto-Submitted", "auto-generated")
	msg.SetBodyString(gomail.TypeTextPlain, m.Text)
	if m.HTML != "" {
		msg.AddAlternativeString(gomail.TypeTextHTML, m.HTML)
	}
	return msg, nil
}

// SMTPOptions are the settings of an SMTP mailer that a URL cannot carry.
type SMTPOptions struct {
	// TLSConfig overrides the TLS settings (e.g. a private CA); ServerName defaults
	// to the URL's host.
	TLSConfig *tls.Config
	// Timeout bounds connecting; the send itself is bounded by the caller's context.
	Timeout time.Duration
	// HELO is the name announced to the server (default: this host's name).
	HELO string
}

// SMTPMailer sends through an SMTP server configured by URL:
//
//	smtp://[user:pass@]host[:port][?tls=starttls|opportunistic|none][&auth=MECH]
//	smtps://[user:pass@]host[:port][?auth=MECH]
//
// smtps is TLS from the first byte (default port 465). smtp defaults to port 25
// and to STARTTLS: required when credentials are given (they are never sent in
// clear), used if offered otherwise; tls=none turns it off (a local mail catcher).
// auth names a mechanism (plain, login, cram-md5, scram-sha-1, scram-sha-256,
// xoauth2); by default the strongest one the server offers is used, and over an
// unencrypted connection only challenge-response mechanisms are.
type SMTPMailer struct {
	host     string
	port     int
	ssl      bool
	policy   gomail.TLSPolicy
	user     string
	pass     string
	auth     gomail.SMTPAuthType
	opts     SMTPOptions
	redacted string
}

// NewSMTPMailer parses an SMTP URL. The URL's password never appears in errors or String().
func NewSMTPMailer(rawURL string, opts SMTPOptions) (*SMTPMailer, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, errors.New("notifier: SMTP URL does not parse")
	}
	m := &SMTPMailer{opts: opts, redacted: u.Redacted()}
	switch u.Scheme {
	case "smtp":
		m.port = 25
	case "smtps":
		m.ssl = true
		m.port = 465
	default:
		return nil, fmt.Errorf("notifier: SMTP URL %s: scheme must be smtp or smtps", m.redacted)
	}
	m.host = u.Hostname()
	if m.host == "" {
		return nil, fmt.Errorf("notifier: SMTP URL %s: host missing", m.redacted)
	}
	if p := u.Port(); p != "" {
		if m.port, err = strconv.Atoi(p); err != nil || m.port < 1 || m.port > 65535 {
			return nil, fmt.Errorf("notifier: SMTP URL %s: bad port", m.redacted)
		}
	}
	if u.User != nil {
		m.user = u.User.Username()
		m.pass, _ = u.User.Password()
	}
	q := u.Query()
	for key := range q {
		if key != "tls" && key != "auth" {
			return nil, fmt.Errorf("notifier: SMTP URL %s: unknown parameter %q", m.redacted, key)
		}
	}
	m.policy = gomail.TLSOpportunistic
	if m.user != "" {
		m.policy = gomail.TLSMandatory
	}
	switch tlsMode := q.Get("tls"); {
	case tlsMode == "":
	case m.ssl:
		return nil, fmt.Errorf("notifier: SMTP URL %s: tls= applies to smtp://, smtps:// is always TLS", m.redacted)
	case tlsMode == "starttls":
		m.policy = gomail.TLSMandatory
	case tlsMode == "opportunistic":
		m.policy = gomail.TLSOpportunistic
	case tlsMode == "none":
		m.policy = gomail.NoTLS
	default:
		return nil, fmt.Errorf("notifier: SMTP URL %s: tls must be starttls, opportunistic or none", m.redacted)
	}
	switch a := strings.ToLower(q.Get("auth")); a {
	case "":
		if m.user != "" {
			// The strongest mechanism offered; on an unencrypted connection
			// (tls=opportunistic or none) only challenge-response ones.
			m.auth = gomail.SMTPAuthAutoDiscover
		}
	case "plain", "login", "cram-md5", "scram-sha-1", "scram-sha-256", "xoauth2":
		if m.user == "" {
			return nil, fmt.Errorf("notifier: SMTP URL %s: auth needs a user name", m.redacted)
		}
		m.auth = gomail.SMTPAuthType(strings.ToUpper(a))
	default:
		return nil, fmt.Errorf("notifier: SMTP URL %s: unknown auth mechanism %q", m.redacted, a)
	}
	if m.opts.Timeout <= 0 {
		m.opts.Timeout = 15 * time.Second
	}
	return m, nil
}

// String names the server without its password.
func (m *SMTPMailer) String() string { return m.redacted }

// SendMail connects, sends one message and disconnects.
func (m *SMTPMailer) SendMail(ctx context.Context, mail Mail) error {
	msg, err := buildMsg(mail)
	if err != nil {
		return err
	}
	tlsConfig := &tls.Config{ServerName: m.host, MinVersion: tls.VersionTLS12}
	if m.opts.TLSConfig != nil {
		tlsConfig = m.opts.TLSConfig.Clone()
		if tlsConfig.ServerName == "" {
			tlsConfig.ServerName = m.host
		}
	}
	opts := []gomail.Option{
		gomail.WithPort(m.port),
		gomail.WithTimeout(m.opts.Timeout),
		gomail.WithTLSConfig(tlsConfig),
		gomail.WithTLSPolicy(m.policy),
	}
	if m.ssl {
		opts = append(opts, gomail.WithSSL())
	}
	if m.opts.HELO != "" {
		opts = append(opts, gomail.WithHELO(m.opts.HELO))
	}
	if m.auth != "" {
		opts = append(opts, gomail.WithSMTPAuth(m.auth), gomail.WithUsername(m.user), gomail.WithPassword(m.pass))
	}
	client, err := gomail.NewClient(m.host, opts...)
	if err != nil {
		return fmt.Errorf("smtp client: %w", err)
	}
	if err := client.DialAndSendWithContext(ctx, msg); err != nil {
		return smtpError(err)
	}
	return nil
}

// smtpError keeps what an operator needs (the SMTP reply code, temporary or not)
// and drops what could carry personal data (addresses echoed by the server).
func smtpError(err error) error {
	var se *gomail.SendError
	if errors.As(err, &se) {
		kind := "permanent"
		if se.IsTemp() {
			kind = "temporary"
		}
		code := se.ErrorCode()
		if esc := se.EnhancedStatusCode(); esc != "" {
			return fmt.Errorf("smtp: %s failure (%d %s, %s)", kind, code, esc, se.Reason)
		}
		return fmt.Errorf("smtp: %s failure (%d, %s)", kind, code, se.Reason)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return errors.New("smtp: timeout")
	}
	return fmt.Errorf("smtp: %w", err)
}
