package notifier

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// FileSink is the development sink: each message becomes a file in Dir (.eml for
// email, .sms.txt for text messages), readable only by the service's user, and a
// log line says where. With LogContent (development mode only) the log line also
// carries the message text, so a developer sees the codes; otherwise no log line
// ever carries content.
type FileSink struct {
	Dir        string
	LogContent bool
	Logger     *slog.Logger
	Clock      func() time.Time
}

// NewFileSink creates dir (0700) if needed.
func NewFileSink(dir string, logContent bool, logger *slog.Logger) (*FileSink, error) {
	if dir == "" {
		return nil, fmt.Errorf("notifier: the mail folder is not set")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("notifier: mail folder: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &FileSink{Dir: dir, LogContent: logContent, Logger: logger, Clock: time.Now}, nil
}

func (f *FileSink) SendMail(ctx context.Context, m Mail) error {
	msg, err := buildMsg(m)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if _, err := msg.WriteTo(&b); err != nil {
		return err
	}
	path, err := f.write(m.Kind, m.MessageID, ".eml", b.Bytes())
	if err != nil {
		return err
	}
	if f.LogContent {
		f.Logger.InfoContext(ctx, "DEVELOPMENT: email written to a file instead of sent", "kind", m.Kind, "path", path,
			"to", m.To, "subject", m.Subject, "text", m.Text)
	} else {
		f.Logger.InfoContext(ctx, "email written to a file instead of sent", "kind", m.Kind, "path", path)
	}
	return nil
}

func (f *FileSink) SendSMS(ctx context.Context, s SMS) error {
	body := fmt.Sprintf("To: %s\nID: %s\n\n%s\n", s.To, s.ID, s.Body)
	path, err := f.write(s.Kind, s.ID, ".sms.txt", []byte(body))
	if err != nil {
		return err
	}
	if f.LogContent {
		f.Logger.InfoContext(ctx, "DEVELOPMENT: text message written to a file instead of sent", "kind", s.Kind, "path", path,
			"to", s.To, "text", s.Body)
	} else {
		f.Logger.InfoContext(ctx, "text message written to a file instead of sent", "kind", s.Kind, "path", path)
	}
	return nil
}

// write stores a message atomically (temporary file, then rename), so a reader
// never sees half of one; the same id overwrites its earlier copy.
func (f *FileSink) write(kind Kind, id, ext string, content []byte) (string, error) {
	clock := f.Clock
	if clock == nil {
		clock = time.Now
	}
	name := clock().UTC().Format("20060102T150405") + "-" + safeName(string(kind)) + "-" + safeName(id) + ext
	tmp, err := os.CreateTemp(f.Dir, ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("mail folder: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return "", fmt.Errorf("mail folder: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("mail folder: %w", err)
	}
	path := filepath.Join(f.Dir, name)
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("mail folder: %w", err)
	}
	return path, nil
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, strings.Trim(s, "<>"))
}
