package notifier

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// SenderConfig selects the email and SMS transports from configuration
// (TWOFACTOR_SMTP_URL, TWOFACTOR_SMS_*, TWOFACTOR_MAIL_DIR).
type SenderConfig struct {
	// SMTPURL: smtp://user:pass@host:port or smtps://…; see SMTPMailer. Empty: the file sink.
	SMTPURL string
	// SMSProvider: "http" (generic JSON POST), "twilio", or empty for the file sink.
	SMSProvider string
	// SMSURL: the endpoint (http) or the API base URL (twilio; default https://api.twilio.com).
	SMSURL string
	// SMSAuth: the Authorization header value (http) or "ACCOUNT_SID:AUTH_TOKEN" (twilio).
	SMSAuth string
	// SMSFrom: the sender number or id (required for twilio).
	SMSFrom string
	// MailDir is the file sink's folder (default: twofactor-mail in the temporary folder).
	MailDir string
	// Dev: the file sink also logs each message's text, codes included.
	Dev bool
	// SMTP carries the settings a URL cannot (a private CA, timeouts).
	SMTP SMTPOptions
	// HTTPClient is used by the SMS providers (default: 30 s timeout).
	HTTPClient *http.Client
}

// Senders are the transports of a notifier.
type Senders struct {
	Mail Mailer
	SMS  SMSSender
}

// Build returns the configured transports. Whatever is not configured goes to the
// file sink, and a warning says so: outside development mode that writes one-time
// codes to disk instead of delivering them.
func (c SenderConfig) Build(logger *slog.Logger) (Senders, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var s Senders
	var sink *FileSink
	fileSink := func() (*FileSink, error) {
		if sink != nil {
			return sink, nil
		}
		dir := c.MailDir
		if dir == "" {
			dir = filepath.Join(os.TempDir(), "twofactor-mail")
		}
		var err error
		sink, err = NewFileSink(dir, c.Dev, logger.With("component", "notifier"))
		return sink, err
	}
	if c.SMTPURL != "" {
		m, err := NewSMTPMailer(c.SMTPURL, c.SMTP)
		if err != nil {
			return s, err
		}
		s.Mail = m
	} else {
		fs, err := fileSink()
		if err != nil {
			return s, err
		}
		s.Mail = fs
		warnSink(logger, c.Dev, "TWOFACTOR_SMTP_URL", fs.Dir)
	}
	switch strings.ToLower(c.SMSProvider) {
	case "":
		fs, err := fileSink()
		if err != nil {
			return s, err
		}
		s.SMS = fs
		warnSink(logger, c.Dev, "TWOFACTOR_SMS_PROVIDER", fs.Dir)
	case "http":
		h, err := NewHTTPSMS(c.SMSURL, c.SMSAuth, c.SMSFrom, c.HTTPClient)
		if err != nil {
			return s, err
		}
		s.SMS = h
	case "twilio":
		sid, token, ok := strings.Cut(c.SMSAuth, ":")
		if !ok {
			return s, errors.New("notifier: TWOFACTOR_SMS_AUTH must be ACCOUNT_SID:AUTH_TOKEN for twilio")
		}
		t, err := NewTwilioSMS(c.SMSURL, sid, token, c.SMSFrom, c.HTTPClient)
		if err != nil {
			return s, err
		}
		s.SMS = t
	default:
		return s, fmt.Errorf("notifier: TWOFACTOR_SMS_PROVIDER must be http or twilio, not %q", c.SMSProvider)
	}
	return s, nil
}

func warnSink(logger *slog.Logger, dev bool, setting, dir string) {
	if dev {
		logger.Warn("DEVELOPMENT: messages are written to files and to the log, codes included", "unset", setting, "dir", dir)
		return
	}
	logger.Warn("messages are written to files instead of being delivered; set "+setting+" in production", "dir", dir)
}
