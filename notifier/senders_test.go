package notifier_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twofactor/twofactor/notifier"
)

// testTLS returns a server certificate for 127.0.0.1 and a client config trusting it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12},
		&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

func testMail(to string) notifier.Mail {
	return notifier.Mail{
		MessageID: "<0192-id.otp_code@acme.test>", FromName: "Acme", From: "no-reply@acme.test", To: to,
		Subject: "Your Acme sign-in code", Text: "Your sign-in code is 123456.\n", HTML: "<p>123456</p>", Kind: notifier.KindOTPCode,
	}
}

func securedServer(t *testing.T, implicit bool) (*smtpServer, *tls.Config) {
	serverTLS, clientTLS := testTLS(t)
	s := &smtpServer{t: t, changed: make(chan struct{}), tlsConfig: serverTLS, implicit: implicit, user: "mailer", pass: "s3cret"}
	s.start("127.0.0.1:0")
	t.Cleanup(s.stop)
	return s, clientTLS
}

func TestSMTPWithSTARTTLSAndAuth(t *testing.T) {
	s, clientTLS := securedServer(t, false)
	m, err := notifier.NewSMTPMailer("smtp://mailer:s3cret@"+s.addr, notifier.SMTPOptions{TLSConfig: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(m.String(), "s3cret") {
		t.Errorf("String() shows the password: %s", m)
	}
	if err := m.SendMail(context.Background(), testMail("ann@example.com")); err != nil {
		t.Fatal(err)
	}
	got := s.messages()
	if len(got) != 1 || got[0].To[0] != "ann@example.com" || got[0].MessageID != "<0192-id.otp_code@acme.test>" ||
		got[0].Subject != "Your Acme sign-in code" || !strings.Contains(got[0].Text, "123456") || !strings.Contains(got[0].HTML, "<p>123456</p>") {
		t.Fatalf("received %+v", got)
	}
	// Wrong password: refused, and the error does not show it.
	bad, err := notifier.NewSMTPMailer("smtp://mailer:wrong-pass@"+s.addr, notifier.SMTPOptions{TLSConfig: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.SendMail(context.Background(), testMail("ann@example.com")); err == nil || strings.Contains(err.Error(), "wrong-pass") {
		t.Fatalf("wrong password: %v", err)
	}
	// Without trusting the certificate: refused, nothing sent in clear.
	untrusted, err := notifier.NewSMTPMailer("smtp://mailer:s3cret@"+s.addr, notifier.SMTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := untrusted.SendMail(context.Background(), testMail("ann@example.com")); err == nil {
		t.Fatal("sent over a TLS connection to an untrusted certificate")
	}
	if len(s.messages()) != 1 {
		t.Fatal("a refused send delivered something")
	}
}

func TestSMTPS(t *testing.T) {
	s, clientTLS := securedServer(t, true)
	m, err := notifier.NewSMTPMailer("smtps://mailer:s3cret@"+s.addr, notifier.SMTPOptions{TLSConfig: clientTLS})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SendMail(context.Background(), testMail("ann@example.com")); err != nil {
		t.Fatal(err)
	}
	if len(s.messages()) != 1 {
		t.Fatal("nothing received over smtps")
	}
}

func TestSMTPCredentialsNeverGoInClear(t *testing.T) {
	s := newSMTPServer(t) // no STARTTLS
	s.user, s.pass = "mailer", "s3cret"
	m, err := notifier.NewSMTPMailer("smtp://mailer:s3cret@"+s.addr, notifier.SMTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SendMail(context.Background(), testMail("ann@example.com")); err == nil {
		t.Fatal("credentials were sent to a server without STARTTLS")
	}
	// tls=opportunistic allows no TLS, but then only challenge-response auth, which this server lacks.
	m, err = notifier.NewSMTPMailer("smtp://mailer:s3cret@"+s.addr+"?tls=opportunistic", notifier.SMTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.SendMail(context.Background(), testMail("ann@example.com")); err == nil {
		t.Fatal("PLAIN auth was used without TLS")
	}
	if len(s.messages()) != 0 {
		t.Fatal("something was delivered")
	}
}

func TestSMTPURLs(t *testing.T) {
	for _, bad := range []string{
		"http://host", "smtp://", "smtp://host:0", "smtp://host:99999", "smtp://host?tls=maybe",
		"smtps://host?tls=none", "smtp://host?auth=plain", "smtp://u:p@host?auth=magic", "smtp://host?verify=no",
	} {
		if _, err := notifier.NewSMTPMailer(bad, notifier.SMTPOptions{}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := notifier.NewSMTPMailer("smtp://u:pw@host?tls=maybe", notifier.SMTPOptions{}); err == nil || strings.Contains(err.Error(), "pw") {
		t.Errorf("an error shows the password: %v", err)
	}
	for _, good := range []string{"smtp://mailpit:1025", "smtp://u:p@mail.example.com:587?auth=login", "smtps://u:p@mail.example.com", "smtp://localhost?tls=none"} {
		if _, err := notifier.NewSMTPMailer(good, notifier.SMTPOptions{}); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
}

func TestHTTPSMSProvider(t *testing.T) {
	var mu sync.Mutex
	status := http.StatusOK
	var got []byte
	var header http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		got, _ = io.ReadAll(r.Body)
		header = r.Header.Clone()
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"echo": "your code is 654321 for +15550100002"}`))
	}))
	defer srv.Close()
	p, err := notifier.NewHTTPSMS(srv.URL+"/send", "Bearer k", "Acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	msg := notifier.SMS{ID: "ev.otp_code", To: "+15550100002", Body: "Acme sign-in code: 654321."}
	if err := p.SendSMS(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	if string(got) != `{"id":"ev.otp_code","to":"+15550100002","from":"Acme","body":"Acme sign-in code: 654321."}` ||
		header.Get("Authorization") != "Bearer k" || header.Get("Idempotency-Key") != "ev.otp_code" {
		t.Fatalf("request %s %v", got, header)
	}
	mu.Lock()
	status = http.StatusBadGateway
	mu.Unlock()
	err = p.SendSMS(context.Background(), msg)
	if err == nil || !strings.Contains(err.Error(), "502") || strings.Contains(err.Error(), "654321") || strings.Contains(err.Error(), "5550100002") {
		t.Fatalf("a failed send: %v", err)
	}
	if _, err := notifier.NewHTTPSMS("ftp://x", "", "", nil); err == nil {
		t.Error("an ftp URL was accepted")
	}
}

func TestTwilioCompatibleProvider(t *testing.T) {
	var form url.Values
	var path, user, pass, idem string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		form, path, idem = r.PostForm, r.URL.Path, r.Header.Get("I-Twilio-Idempotency-Token")
		user, pass, _ = r.BasicAuth()
		w.WriteHeader(http.StatusCreated)
	}))
	defer srv.Close()
	p, err := notifier.NewTwilioSMS(srv.URL, "AC123", "tok", "+15550000000", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.SendSMS(context.Background(), notifier.SMS{ID: "ev.reset", To: "+15550100003", Body: "hello"}); err != nil {
		t.Fatal(err)
	}
	if path != "/2010-04-01/Accounts/AC123/Messages.json" || user != "AC123" || pass != "tok" || idem != "ev.reset" ||
		form.Get("To") != "+15550100003" || form.Get("From") != "+15550000000" || form.Get("Body") != "hello" {
		t.Fatalf("request %s %s:%s %v", path, user, pass, form)
	}
	svc, err := notifier.NewTwilioSMS(srv.URL, "AC123", "tok", "MG999", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.SendSMS(context.Background(), notifier.SMS{To: "+15550100003", Body: "x"}); err != nil || form.Get("MessagingServiceSid") != "MG999" || form.Has("From") {
		t.Fatalf("messaging service sender: %v %v", err, form)
	}
	if _, err := notifier.NewTwilioSMS("", "AC1", "", "+1", nil); err == nil {
		t.Error("Twilio without a token was accepted")
	}
}

func TestFileSink(t *testing.T) {
	for _, dev := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "mail")
		var logs bytes.Buffer
		sink, err := notifier.NewFileSink(dir, dev, slog.New(slog.NewJSONHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		if err := sink.SendMail(context.Background(), testMail("ann@example.com")); err != nil {
			t.Fatal(err)
		}
		if err := sink.SendSMS(context.Background(), notifier.SMS{ID: "ev.otp_code", To: "+15550100004", Body: "code: 777888.", Kind: notifier.KindOTPCode}); err != nil {
			t.Fatal(err)
		}
		files, _ := filepath.Glob(filepath.Join(dir, "*"))
		if len(files) != 2 {
			t.Fatalf("files %v", files)
		}
		var all string
		for _, f := range files {
			b, _ := os.ReadFile(f)
			all += string(b)
			if fi, _ := os.Stat(f); fi.Mode().Perm() != 0o600 {
				t.Errorf("%s has mode %v", f, fi.Mode().Perm())
			}
		}
		if !strings.Contains(all, "123456") || !strings.Contains(all, "777888") || !strings.Contains(all, "Subject: Your Acme sign-in code") {
			t.Errorf("file content %q", all)
		}
		leaked := strings.Contains(logs.String(), "123456") || strings.Contains(logs.String(), "777888") || strings.Contains(logs.String(), "ann@example.com")
		if leaked != dev {
			t.Errorf("dev=%v: codes in the log: %v\n%s", dev, leaked, logs.String())
		}
		if !strings.Contains(logs.String(), "written to a file") {
			t.Errorf("the sink did not log the file")
		}
	}
}

func TestSenderConfig(t *testing.T) {
	dir := t.TempDir()
	s, err := notifier.SenderConfig{MailDir: dir}.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Mail.(*notifier.FileSink); !ok {
		t.Errorf("mail sender %T without SMTP settings, want the file sink", s.Mail)
	}
	if _, ok := s.SMS.(*notifier.FileSink); !ok {
		t.Errorf("SMS sender %T without SMS settings, want the file sink", s.SMS)
	}
	s, err = notifier.SenderConfig{SMTPURL: "smtps://u:p@mail.example.com", SMSProvider: "twilio", SMSAuth: "AC1:tok", SMSFrom: "+1555"}.Build(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Mail.(*notifier.SMTPMailer); !ok {
		t.Errorf("mail sender %T", s.Mail)
	}
	if _, ok := s.SMS.(*notifier.TwilioSMS); !ok {
		t.Errorf("SMS sender %T", s.SMS)
	}
	for _, bad := range []notifier.SenderConfig{
		{SMSProvider: "carrier-pigeon", MailDir: dir}, {SMSProvider: "twilio", SMSAuth: "no-colon", MailDir: dir},
		{SMSProvider: "http", SMSURL: "not a url", MailDir: dir}, {SMTPURL: "smtp://host?tls=maybe", MailDir: dir},
	} {
		if _, err := bad.Build(nil); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
