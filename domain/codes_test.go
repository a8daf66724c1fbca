package domain

import (
	"strings"
	"testing"
)

func TestNormaliseBackupCode_Accepts(t *testing.T) {
	for input, want := range map[string]string{
		"ABCDE-FGH12":         "abcdefgh12",
		" abcde fgh12 ":       "abcdefgh12",
		"abcdefgh12":          "abcdefgh12",
		"AbCdE - fGh12":       "abcdefgh12",
		"oOiIl-23456":         "0011123456",
		"0O1IL-ZYXWV":         "00111zyxwv",
		"a-b-c-d-e-f-g-h-1-2": "abcdefgh12",
		"qrstv-wxyz9":         "qrstvwxyz9",
	} {
		got, err := NormaliseBackupCode(input)
		if err != nil {
			t.Errorf("NormaliseBackupCode(%q): %v", input, err)
			continue
		}
		if got != want {
			t.Errorf("NormaliseBackupCode(%q) = %q, want %q", input, got, want)
		}
	}
}

func TestNormaliseBackupCode_MapsLookAlikes(t *testing.T) {
	got, err := NormaliseBackupCode("ooooo-iiill")
	wantNoError(t, err)
	if got != "0000011111" {
		t.Fatalf("got %q, want o→0 and i/l→1", got)
	}
}

func TestNormaliseBackupCode_Refuses(t *testing.T) {
	for name, input := range map[string]string{
		"fullwidth letters":    "ａｂｃｄｅ-ｆｇｈ１２",
		"fullwidth one symbol": "abcde-fgh1２",
		"cyrillic a":           "\u0430bcde-fgh12",
		"greek omicron":        "abcde-fgh1\u03bf",
		"dotless i":            "abcde-fgh1\u0131",
		"kelvin sign":          "abcde-fgh1\u212a",
		"arabic-indic digit":   "abcde-fgh1\u0662",
		"non-breaking space":   "abcde\u00a0fgh12",
		"too short":            "abcde-fgh1",
		"too long":             "abcde-fgh123",
		"empty":                "",
		"only dashes":          "----------",
		"u is not a symbol":    "abcde-fgh1u",
		"punctuation":          "abcde.fgh12",
		"underscore":           "abcde_fgh12",
		"tab":                  "abcde\tfgh12",
		"newline":              "abcde\nfgh12",
		"nul":                  "abcde\x00fgh12",
		"invalid utf-8":        "abcde\xfffgh12",
		"huge":                 strings.Repeat("-", 1<<20) + "abcdefgh12",
		"41 bytes of padding":  strings.Repeat(" ", 31) + "abcdefgh12",
		"sql":                  "'; DROP TABLE",
	} {
		got, err := NormaliseBackupCode(input)
		if err == nil {
			t.Errorf("%s: NormaliseBackupCode(%q) = %q, want an error", name, input, got)
			continue
		}
		wantErr(t, err, KindInvalid, CodeMalformedCode)
		if got != "" {
			t.Errorf("%s: returned %q with the error", name, got)
		}
	}
}

func TestNormaliseBackupCode_AcceptsUpToFortyBytes(t *testing.T) {
	input := strings.Repeat(" ", 30) + "abcdefgh12"
	if _, err := NormaliseBackupCode(input); err != nil {
		t.Fatalf("40 bytes refused: %v", err)
	}
}

func TestBackupCodeAlphabet(t *testing.T) {
	if len(BackupCodeAlphabet) != 32 {
		t.Fatalf("alphabet has %d symbols, want 32", len(BackupCodeAlphabet))
	}
	seen := map[rune]bool{}
	for _, r := range BackupCodeAlphabet {
		if seen[r] {
			t.Fatalf("%q twice", r)
		}
		seen[r] = true
		if strings.ContainsRune("ilou", r) {
			t.Fatalf("look-alike %q in the alphabet", r)
		}
	}
}

func TestBackupCodeFromRandom_OnlyAlphabetLettersAndUnbiased(t *testing.T) {
	counts := map[byte]int{}
	var random [BackupCodeLength]byte
	for b := 0; b < 256; b++ {
		for i := range random {
			random[i] = byte(b)
		}
		code := BackupCodeFromRandom(random)
		if len(code) != BackupCodeLength {
			t.Fatalf("code %q has %d symbols", code, len(code))
		}
		for i := 0; i < len(code); i++ {
			if strings.IndexByte(BackupCodeAlphabet, code[i]) < 0 {
				t.Fatalf("code %q has %q, not in the alphabet", code, code[i])
			}
		}
		counts[code[0]]++
	}
	// Every byte value maps to one symbol, and every symbol takes exactly 256/32 of them.
	if len(counts) != 32 {
		t.Fatalf("%d distinct symbols reached, want 32", len(counts))
	}
	for sym, n := range counts {
		if n != 256/32 {
			t.Fatalf("symbol %q is produced by %d byte values, want 8", sym, n)
		}
	}
}

func TestBackupCodeFromRandom_UsesEveryByte(t *testing.T) {
	random := [BackupCodeLength]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 31}
	if got := BackupCodeFromRandom(random); got != "012345678z" {
		t.Fatalf("got %q", got)
	}
	random = [BackupCodeLength]byte{32, 33, 34, 35, 36, 37, 38, 39, 40, 255}
	if got := BackupCodeFromRandom(random); got != "012345678z" {
		t.Fatalf("got %q", got)
	}
}

func TestBackupCode_FormatAndNormaliseRoundTrip(t *testing.T) {
	for seed := 0; seed < 64; seed++ {
		var random [BackupCodeLength]byte
		for i := range random {
			random[i] = byte(seed*7 + i*13)
		}
		code := BackupCodeFromRandom(random)
		shown := FormatBackupCode(code)
		if len(shown) != 11 || shown[5] != '-' {
			t.Fatalf("shown as %q", shown)
		}
		for _, typed := range []string{shown, strings.ToUpper(shown), " " + strings.ReplaceAll(shown, "-", " ") + " "} {
			back, err := NormaliseBackupCode(typed)
			if err != nil || back != code {
				t.Fatalf("NormaliseBackupCode(%q) = %q, %v; want %q", typed, back, err, code)
			}
		}
	}
	if got := FormatBackupCode("short"); got != "short" {
		t.Fatalf("FormatBackupCode of a wrong length = %q", got)
	}
}

func TestValidateNumericCode(t *testing.T) {
	for _, tc := range []struct {
		code   string
		digits int
		ok     bool
	}{
		{"012345", 6, true},
		{"999999", 6, true},
		{"00000000", 8, true},
		{"12345", 6, false},
		{"1234567", 6, false},
		{"12 456", 6, false},
		{"123456 ", 6, false},
		{" 123456", 6, false},
		{"١٢٣٤٥٦", 6, false}, // Arabic-Indic digits
		{"１２", 6, false},     // two fullwidth digits are six bytes
		{"۱۲۳", 6, false},    // Extended Arabic-Indic, six bytes
		{"12345６", 6, false}, // one fullwidth digit
		{"+12345", 6, false},
		{"-12345", 6, false},
		{"12345a", 6, false},
		{"0x1234", 6, false},
		{"", 6, false},
		{"123456", 8, false},
		{"12\x0034", 5, false},
		{"123456\n", 6, false},
	} {
		err := ValidateNumericCode(tc.code, tc.digits)
		if tc.ok {
			if err != nil {
				t.Errorf("ValidateNumericCode(%q, %d): %v", tc.code, tc.digits, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("ValidateNumericCode(%q, %d) accepted", tc.code, tc.digits)
			continue
		}
		wantErr(t, err, KindInvalid, CodeMalformedCode)
	}
}
