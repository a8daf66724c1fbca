package main

import (
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/twofactor/twofactor/notifier"
	"github.com/twofactor/twofactor/secrets"
)

// Config is every setting of twofactord. This file is the only place that reads
// the environment; each setting is also a flag of the subcommands that use it.
type Config struct {
	DatabaseURL string
	HTTPAddr    string
	MasterKeys  string
	CodeKey     string
	OperatorKey string
	SMTPURL     string
	MailFrom    string
	Bus         string
	NATSURL     string
	// NATSStream, NATSSubject and NATSPartitions place the events on NATS
	// JetStream with --bus nats (messaging.NATSConfig).
	NATSStream     string
	NATSSubject    string
	NATSPartitions int
	Dev            bool
	// DevDataDir holds the private PostgreSQL that `serve --dev` starts when
	// nothing answers at the database URL.
	DevDataDir string
	// TrustedProxies (comma-separated IPs/CIDRs) may set X-Forwarded-For; none by default.
	TrustedProxies string
	// KeyRate and IPRate are the API's requests per second per API key and per
	// client IP (0: the defaults; negative: off).
	KeyRate float64
	IPRate  float64
	// Consumers: serve also runs the projectors and the notifier (off for API-only
	// processes when workers run them).
	Consumers bool
	// WorkerAddr serves /healthz, /readyz and /metrics of `twofactord worker`.
	WorkerAddr string
	// SMS provider: "http" (generic JSON) or "twilio"; URL, Authorization value
	// (or SID:TOKEN for Twilio) and sender.
	SMSProvider string
	SMSURL      string
	SMSAuth     string
	SMSFrom     string
	// MailDir is the development sink's folder, used when SMTP or SMS is not configured.
	MailDir string
	// SendTimeout bounds one SMTP or SMS send; NotifyLease is how long a worker
	// holds a notification it claimed, so how soon another worker sends what a
	// dead one had claimed (notifier.Config).
	SendTimeout time.Duration
	NotifyLease time.Duration
	// WebUI serves the reference web UI under /ui/ (always on with --dev).
	WebUI bool
}

// DefaultConfig holds the documented defaults.
func DefaultConfig() Config {
	return Config{
		DatabaseURL: "postgres://postgres@127.0.0.1:5432/twofactor?sslmode=disable",
		HTTPAddr:    "127.0.0.1:8080",
		MailFrom:    "twofactor@localhost",
		Bus:         "postgres",
		NATSURL:     "nats://127.0.0.1:4222",
		// NATSStream, NATSSubject, NATSPartitions: see natsDefaults (forwarder.go).
		NATSStream:     natsDefaults.Stream,
		NATSSubject:    natsDefaults.Subject,
		NATSPartitions: natsDefaults.Partitions,
		DevDataDir:     ".dev/postgres",
		Consumers:      true,
		WorkerAddr:     "127.0.0.1:9090",
		SendTimeout:    notifier.DefaultConfig().SendTimeout,
		NotifyLease:    notifier.DefaultConfig().Lease,
	}
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok && v != "" {
		return v
	}
	return def
}

// fromEnv overlays TWOFACTOR_* variables on the defaults.
func fromEnv(c Config) Config {
	c.DatabaseURL = envOr("TWOFACTOR_DATABASE_URL", c.DatabaseURL)
	c.HTTPAddr = envOr("TWOFACTOR_HTTP_ADDR", c.HTTPAddr)
	c.MasterKeys = envOr("TWOFACTOR_MASTER_KEYS", c.MasterKeys)
	c.CodeKey = envOr("TWOFACTOR_CODE_KEY", c.CodeKey)
	c.OperatorKey = envOr("TWOFACTOR_OPERATOR_KEY", c.OperatorKey)
	c.SMTPURL = envOr("TWOFACTOR_SMTP_URL", c.SMTPURL)
	c.MailFrom = envOr("TWOFACTOR_MAIL_FROM", c.MailFrom)
	c.Bus = envOr("TWOFACTOR_BUS", c.Bus)
	c.NATSURL = envOr("TWOFACTOR_NATS_URL", c.NATSURL)
	c.NATSStream = envOr("TWOFACTOR_NATS_STREAM", c.NATSStream)
	c.NATSSubject = envOr("TWOFACTOR_NATS_SUBJECT", c.NATSSubject)
	if v, err := strconv.Atoi(envOr("TWOFACTOR_NATS_PARTITIONS", strconv.Itoa(c.NATSPartitions))); err == nil {
		c.NATSPartitions = v
	}
	if v, err := strconv.ParseBool(envOr("TWOFACTOR_DEV", "false")); err == nil {
		c.Dev = v
	}
	c.DevDataDir = envOr("TWOFACTOR_DEV_DATA_DIR", c.DevDataDir)
	c.TrustedProxies = envOr("TWOFACTOR_TRUSTED_PROXIES", c.TrustedProxies)
	if v, err := strconv.ParseFloat(envOr("TWOFACTOR_KEY_RATE", "0"), 64); err == nil {
		c.KeyRate = v
	}
	if v, err := strconv.ParseFloat(envOr("TWOFACTOR_IP_RATE", "0"), 64); err == nil {
		c.IPRate = v
	}
	if v, err := strconv.ParseBool(envOr("TWOFACTOR_CONSUMERS", strconv.FormatBool(c.Consumers))); err == nil {
		c.Consumers = v
	}
	c.WorkerAddr = envOr("TWOFACTOR_WORKER_ADDR", c.WorkerAddr)
	c.SMSProvider = envOr("TWOFACTOR_SMS_PROVIDER", c.SMSProvider)
	c.SMSURL = envOr("TWOFACTOR_SMS_URL", c.SMSURL)
	c.SMSAuth = envOr("TWOFACTOR_SMS_AUTH", c.SMSAuth)
	c.SMSFrom = envOr("TWOFACTOR_SMS_FROM", c.SMSFrom)
	c.MailDir = envOr("TWOFACTOR_MAIL_DIR", c.MailDir)
	if v, err := time.ParseDuration(envOr("TWOFACTOR_SEND_TIMEOUT", c.SendTimeout.String())); err == nil {
		c.SendTimeout = v
	}
	if v, err := time.ParseDuration(envOr("TWOFACTOR_NOTIFY_LEASE", c.NotifyLease.String())); err == nil {
		c.NotifyLease = v
	}
	if v, err := strconv.ParseBool(envOr("TWOFACTOR_WEB_UI", "false")); err == nil {
		c.WebUI = v
	}
	return c
}

// bindDatabase and bindKeys register the flags a subcommand needs, defaulting to
// the environment.
func (c *Config) bindDatabase(fs *flag.FlagSet) {
	fs.StringVar(&c.DatabaseURL, "database-url", c.DatabaseURL, "PostgreSQL URL (TWOFACTOR_DATABASE_URL); the database is created if missing")
}

func (c *Config) bindKeys(fs *flag.FlagSet) {
	fs.StringVar(&c.MasterKeys, "master-keys", c.MasterKeys, "id:base64 master keys, comma-separated, first encrypts (TWOFACTOR_MASTER_KEYS)")
	fs.StringVar(&c.CodeKey, "code-key", c.CodeKey, "base64 HMAC key for backup codes, >= 32 bytes (TWOFACTOR_CODE_KEY)")
	fs.BoolVar(&c.Dev, "dev", c.Dev, "development mode: throwaway keys when none are set (TWOFACTOR_DEV)")
}

// bindConsumers registers what the projectors and the notifier need (serve and worker).
func (c *Config) bindConsumers(fs *flag.FlagSet) {
	c.bindDatabase(fs)
	c.bindKeys(fs)
	fs.StringVar(&c.SMTPURL, "smtp-url", c.SMTPURL, "smtp://user:pass@host:port or smtps://… (TWOFACTOR_SMTP_URL)")
	fs.StringVar(&c.MailFrom, "mail-from", c.MailFrom, "sender address (TWOFACTOR_MAIL_FROM)")
	fs.StringVar(&c.SMSProvider, "sms-provider", c.SMSProvider, "http or twilio (TWOFACTOR_SMS_PROVIDER)")
	fs.StringVar(&c.SMSURL, "sms-url", c.SMSURL, "SMS endpoint, or the Twilio base URL (TWOFACTOR_SMS_URL)")
	fs.StringVar(&c.SMSAuth, "sms-auth", c.SMSAuth, "Authorization header value, or SID:TOKEN for Twilio (TWOFACTOR_SMS_AUTH)")
	fs.StringVar(&c.SMSFrom, "sms-from", c.SMSFrom, "SMS sender number or id (TWOFACTOR_SMS_FROM)")
	fs.StringVar(&c.MailDir, "mail-dir", c.MailDir, "folder of the development sink used without SMTP/SMS settings (TWOFACTOR_MAIL_DIR)")
	fs.DurationVar(&c.SendTimeout, "send-timeout", c.SendTimeout, "bound of one SMTP or SMS send (TWOFACTOR_SEND_TIMEOUT)")
	fs.DurationVar(&c.NotifyLease, "notify-lease", c.NotifyLease, "how long a worker holds a claimed notification before another may send it; longer than --send-timeout (TWOFACTOR_NOTIFY_LEASE)")
	fs.StringVar(&c.Bus, "bus", c.Bus, "event bus: postgres or nats (TWOFACTOR_BUS)")
	c.bindNATS(fs)
}

// bindNATS registers the NATS settings (serve, worker, forwarder).
func (c *Config) bindNATS(fs *flag.FlagSet) {
	fs.StringVar(&c.NATSURL, "nats-url", c.NATSURL, "NATS URL for --bus nats (TWOFACTOR_NATS_URL)")
	fs.StringVar(&c.NATSStream, "nats-stream", c.NATSStream, "JetStream stream of the events with --bus nats (TWOFACTOR_NATS_STREAM)")
	fs.StringVar(&c.NATSSubject, "nats-subject", c.NATSSubject, "subject prefix of the events with --bus nats (TWOFACTOR_NATS_SUBJECT)")
	fs.IntVar(&c.NATSPartitions, "nats-partitions", c.NATSPartitions, "per-stream partitions of the parallel consumers with --bus nats (TWOFACTOR_NATS_PARTITIONS)")
}

func (c *Config) bindServe(fs *flag.FlagSet) {
	c.bindConsumers(fs)
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "HTTP listen address (TWOFACTOR_HTTP_ADDR)")
	fs.StringVar(&c.OperatorKey, "operator-key", c.OperatorKey, "key of the operator endpoints (TWOFACTOR_OPERATOR_KEY)")
	fs.BoolVar(&c.Consumers, "consumers", c.Consumers, "also run the projectors and the notifier; false for API-only processes beside workers (TWOFACTOR_CONSUMERS)")
	fs.StringVar(&c.DevDataDir, "dev-data-dir", c.DevDataDir, "with --dev: folder of the private PostgreSQL started when nothing answers at the database URL (TWOFACTOR_DEV_DATA_DIR)")
	fs.StringVar(&c.TrustedProxies, "trusted-proxies", c.TrustedProxies, "comma-separated proxy IPs/CIDRs allowed to set X-Forwarded-For (TWOFACTOR_TRUSTED_PROXIES)")
	fs.Float64Var(&c.KeyRate, "key-rate", c.KeyRate, "API requests per second per API key; 0 default (50), negative off (TWOFACTOR_KEY_RATE)")
	fs.BoolVar(&c.WebUI, "web-ui", c.WebUI, "serve the reference web UI under /ui/ (a demo sign-in: never on a public address; always on with --dev) (TWOFACTOR_WEB_UI)")
	fs.Float64Var(&c.IPRate, "ip-rate", c.IPRate, "API requests per second per client IP; 0 default (20), negative off (TWOFACTOR_IP_RATE)")
}

// Validate refuses settings that cannot work.
func (c Config) Validate() error {
	if c.DatabaseURL == "" {
		return errors.New("TWOFACTOR_DATABASE_URL is empty")
	}
	if c.Bus != "postgres" && c.Bus != "nats" {
		return fmt.Errorf("TWOFACTOR_BUS must be postgres or nats, not %q", c.Bus)
	}
	if c.Bus == "nats" {
		if err := c.natsConfig().Validate(); err != nil {
			return fmt.Errorf("TWOFACTOR_NATS_*: %w", err)
		}
	}
	return nil
}

// devMasterKeyID is the id of the throwaway master key of --dev.
const devMasterKeyID = "dev"

// throwawayMasterKey and throwawayCodeKey: keys takes this key from the
// development keys file (--dev without it).
func (c Config) throwawayMasterKey() bool { return c.Dev && c.MasterKeys == "" }
func (c Config) throwawayCodeKey() bool   { return c.Dev && c.CodeKey == "" }

// devKeysFile keeps the keys --dev generates beside the development database's
// folder, so that the next `serve --dev` opens what the last one sealed.
func (c Config) devKeysFile() string { return filepath.Join(filepath.Dir(c.DevDataDir), "keys") }

// keys returns the keyring and the backup-code hasher. Without keys the service
// refuses to start, except in development mode, which uses the keys of its
// keys file (made on first use) and says so loudly.
func (c Config) keys(log *slog.Logger) (*secrets.Keyring, *secrets.CodeHasher, error) {
	if c.MasterKeys == "" || c.CodeKey == "" {
		if !c.Dev {
			return nil, nil, errors.New("TWOFACTOR_MASTER_KEYS and TWOFACTOR_CODE_KEY are required (or --dev for throwaway keys)")
		}
		master, code, created, err := devKeys(c.devKeysFile())
		if err != nil {
			return nil, nil, fmt.Errorf("--dev keys file %s: %w", c.devKeysFile(), err)
		}
		log.Warn("DEVELOPMENT MODE: throwaway keys, kept in plain text in the development keys file; never use --dev in production",
			"keys_file", c.devKeysFile(), "created", created)
		if c.MasterKeys == "" {
			c.MasterKeys = master
		}
		if c.CodeKey == "" {
			c.CodeKey = code
		}
	}
	ring, err := secrets.ParseMasterKeys(c.MasterKeys)
	if err != nil {
		return nil, nil, fmt.Errorf("TWOFACTOR_MASTER_KEYS: %w", err)
	}
	hasher, err := secrets.ParseCodeKey(c.CodeKey)
	if err != nil {
		return nil, nil, fmt.Errorf("TWOFACTOR_CODE_KEY: %w", err)
	}
	return ring, hasher, nil
}

// devKeys reads the development keys file, or makes it (mode 0600) with new
// keys: a master key line and a code key line.
func devKeys(path string) (master, code string, created bool, err error) {
	if b, err := os.ReadFile(path); err == nil {
		lines := strings.Fields(string(b))
		if len(lines) != 2 {
			return "", "", false, errors.New("want two lines, a master key (id:base64) and a code key (base64); delete the file for new keys")
		}
		return lines[0], lines[1], false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", "", false, err
	}
	mk, err := secrets.GenerateMasterKey(rand.Reader, devMasterKeyID)
	if err != nil {
		return "", "", false, err
	}
	ck, err := secrets.GenerateMasterKey(rand.Reader, "code")
	if err != nil {
		return "", "", false, err
	}
	master, code = mk.String(), ck.String()[len("code:"):]
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", "", false, err
	}
	// O_EXCL: two processes starting at once agree on the first one's keys.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		time.Sleep(100 * time.Millisecond)
		return devKeys(path)
	}
	if err != nil {
		return "", "", false, err
	}
	if _, err := fmt.Fprintf(f, "%s\n%s\n", master, code); err != nil {
		f.Close()
		return "", "", false, err
	}
	return master, code, true, f.Close()
}
