package commands_test

import (
	"encoding/base32"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
)

// RFC 6238 Appendix B. The SHA-256 and SHA-512 rows use 32- and 64-byte seeds.
func TestRFC6238Vectors(t *testing.T) {
	seeds := map[string]string{
		"SHA1":   "12345678901234567890",
		"SHA256": "12345678901234567890123456789012",
		"SHA512": "1234567890123456789012345678901234567890123456789012345678901234",
	}
	vectors := []struct {
		unix int64
		alg  string
		code string
	}{
		{59, "SHA1", "94287082"}, {59, "SHA256", "46119246"}, {59, "SHA512", "90693936"},
		{1111111109, "SHA1", "07081804"}, {1111111109, "SHA256", "68084774"}, {1111111109, "SHA512", "25091201"},
		{1111111111, "SHA1", "14050471"}, {1111111111, "SHA256", "67062674"}, {1111111111, "SHA512", "99943326"},
		{1234567890, "SHA1", "89005924"}, {1234567890, "SHA256", "91819424"}, {1234567890, "SHA512", "93441116"},
		{2000000000, "SHA1", "69279037"}, {2000000000, "SHA256", "90698825"}, {2000000000, "SHA512", "38618901"},
		{20000000000, "SHA1", "65353130"}, {20000000000, "SHA256", "77737706"}, {20000000000, "SHA512", "47863826"},
	}
	for _, v := range vectors {
		secret := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString([]byte(seeds[v.alg]))
		p := domain.TOTPParams{Algorithm: v.alg, Digits: 8, PeriodSecs: 30}
		now := time.Unix(v.unix, 0)
		steps, err := commands.MatchTOTP(secret, p, 0, v.code, now)
		if err != nil {
			t.Fatal(err)
		}
		if len(steps) != 1 || steps[0] != v.unix/30 {
			t.Errorf("%s at %d: code %s matched steps %v, want [%d]", v.alg, v.unix, v.code, steps, v.unix/30)
		}
		wrong := []byte(v.code)
		wrong[7] = '0' + (wrong[7]-'0'+1)%10
		if steps, _ := commands.MatchTOTP(secret, p, 1, string(wrong), now); len(steps) != 0 {
			t.Errorf("%s at %d: altered code matched %v", v.alg, v.unix, steps)
		}
	}
}

// oathtool computes the code independently of pquerna/otp.
func oathtool(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	path, err := exec.LookPath("oathtool")
	if err != nil {
		t.Fatal("oathtool is required by this test: apt-get install oathtool (.ci/run installs it)")
	}
	out, err := exec.Command(path, "--totp", "--base32", "--now", at.UTC().Format("2006-01-02 15:04:05 UTC"), secret).Output()
	if err != nil {
		t.Fatalf("oathtool: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func TestOathtoolCodesEnrolAndLogIn(t *testing.T) {
	f := newFixture(t, nil)
	enrol, err := f.Svc.StartTOTPEnrollment(ctx, as("olive"), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: "olive"})
	if err != nil {
		t.Fatal(err)
	}
	if raw, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(enrol.Secret); err != nil || len(raw)*8 < 160 {
		t.Fatalf("secret has %d bits (%v), want at least 160", len(raw)*8, err)
	}
	if !strings.HasPrefix(enrol.URI, "otpauth://totp/") || !strings.Contains(enrol.URI, "issuer=twofactor") {
		t.Errorf("uri = %s", enrol.URI)
	}
	if len(enrol.QRCodePNG) < 8 || string(enrol.QRCodePNG[1:4]) != "PNG" {
		t.Error("QR code is not a PNG")
	}
	act, err := f.Svc.ConfirmTOTPEnrollment(ctx, as("olive"), commands.ConfirmTOTPEnrollment{TenantID: f.Tenant, UserID: "olive", Code: oathtool(t, enrol.Secret, f.Clock.Now())})
	if err != nil {
		t.Fatalf("oathtool's code was refused at enrolment: %v", err)
	}
	if len(act.BackupCodes) != 10 {
		t.Errorf("got %d backup codes, want 10", len(act.BackupCodes))
	}
	f.Clock.Advance(30 * time.Second)
	if _, err := f.Svc.VerifyTOTP(ctx, as("olive"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "olive", Code: oathtool(t, enrol.Secret, f.Clock.Now())}); err != nil {
		t.Fatalf("oathtool's code was refused at login: %v", err)
	}
}

func TestSkewWindowAndReplay(t *testing.T) {
	f := newFixture(t, nil)
	secret, _ := f.EnrolTOTP("sam") // accepted step: now
	verify := func(code string) error {
		_, err := f.Svc.VerifyTOTP(ctx, as("sam"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "sam", Code: code})
		return err
	}
	f.Clock.Advance(5 * time.Minute)

	for _, offset := range []time.Duration{-60 * time.Second, 60 * time.Second} {
		err := verify(f.CodeAt(secret, offset))
		wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode)
	}
	if err := verify(f.CodeAt(secret, -30*time.Second)); err != nil {
		t.Fatalf("step -1 refused: %v", err)
	}
	if err := verify(f.CodeAt(secret, -30*time.Second)); err == nil {
		t.Fatal("the same code was accepted twice")
	}
	if err := verify(f.CodeAt(secret, 30*time.Second)); err != nil {
		t.Fatalf("step +1 refused: %v", err)
	}
	// After a newer step succeeded, an older code still inside the window is refused.
	err := verify(f.CodeAt(secret, 0))
	de := wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode)
	if de.Detail != "invalid code" {
		t.Errorf("a replay must look like a wrong code, detail %q", de.Detail)
	}
	recs := f.Records("sam")
	last := recs[len(recs)-1].Event.(*domain.TOTPCheckFailed)
	if !last.Replayed {
		t.Error("the replay was not recorded as one")
	}
}

func TestMalformedCodesAreRejectedBeforeAnyWork(t *testing.T) {
	f := newFixture(t, nil)
	f.EnrolTOTP("mal")
	before := len(f.Records("mal"))
	for _, code := range []string{"", "12345", "1234567", "12 456", "１２３４５６", "١٢٣٤٥٦", "+12345", "12345a"} {
		_, err := f.Svc.VerifyTOTP(ctx, as("mal"), commands.VerifyTOTP{TenantID: f.Tenant, UserID: "mal", Code: code})
		wantErr(t, err, domain.KindInvalid, domain.CodeMalformedCode)
	}
	for _, code := range []string{"", "abc", "abcde-fghij-k", "ａｂｃｄｅｆｇｈｊｋ", "abcde_fghjk"} {
		_, err := f.Svc.ConsumeBackupCode(ctx, as("mal"), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: "mal", Code: code})
		wantErr(t, err, domain.KindInvalid, domain.CodeMalformedCode)
	}
	if after := len(f.Records("mal")); after != before {
		t.Errorf("malformed input appended %d events", after-before)
	}
	if s := f.Status("mal"); s.AttemptsRemaining != 5 {
		t.Errorf("malformed input counted as failures: %d attempts remain", s.AttemptsRemaining)
	}
}

// The QR code, decoded by an independent reader, is the otpauth URI.
func TestQRCodeDecodesToTheOtpauthURI(t *testing.T) {
	f := newFixture(t, nil)
	enrol, err := f.Svc.StartTOTPEnrollment(ctx, as("quinn"), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: "quinn", AccountName: "quinn@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	zbarimg, err := exec.LookPath("zbarimg")
	if err != nil {
		t.Fatal("zbarimg is required by this test: apt-get install zbar-tools (.ci/run installs it)")
	}
	png := filepath.Join(t.TempDir(), "qr.png")
	if err := os.WriteFile(png, enrol.QRCodePNG, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(zbarimg, "--raw", "-q", png).Output()
	if err != nil {
		t.Fatalf("zbarimg: %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != enrol.URI {
		t.Fatalf("QR code holds %q, want %q", got, enrol.URI)
	}
	u, err := url.Parse(enrol.URI)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if u.Path != "/twofactor:quinn@example.com" || q.Get("secret") != enrol.Secret || q.Get("issuer") != "twofactor" ||
		q.Get("digits") != "6" || q.Get("period") != "30" || q.Get("algorithm") != "SHA1" {
		t.Fatalf("otpauth URI = %s", enrol.URI)
	}
}
