package domain

import "strings"

// BackupCodeAlphabet: Crockford's base32 letters (no i, l, o, u). Input maps the
// look-alikes i/l→1 and o→0, so a code read aloud or off paper still works.
const BackupCodeAlphabet = "0123456789abcdefghjkmnpqrstvwxyz"

// BackupCodeLength is 10 symbols of 5 bits: 50 bits per code.
const BackupCodeLength = 10

// BackupCodeFromRandom turns 10 random bytes into a code; 256 is a multiple of 32,
// so taking 5 bits of each byte is unbiased.
func BackupCodeFromRandom(random [BackupCodeLength]byte) string {
	var b strings.Builder
	for _, r := range random {
		b.WriteByte(BackupCodeAlphabet[r&31])
	}
	return b.String()
}

// FormatBackupCode shows a normalised code as xxxxx-xxxxx.
func FormatBackupCode(code string) string {
	if len(code) != BackupCodeLength {
		return code
	}
	return code[:5] + "-" + code[5:]
}

// NormaliseBackupCode accepts case, dashes and spaces, and refuses anything else
// before any cryptographic work is done.
func NormaliseBackupCode(input string) (string, error) {
	if len(input) > 4*BackupCodeLength {
		return "", Invalid(CodeMalformedCode, "a backup code has 10 characters")
	}
	var b strings.Builder
	for i := 0; i < len(input); i++ {
		c := input[i]
		switch {
		case c == '-' || c == ' ':
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		}
		switch c {
		case 'i', 'l':
			c = '1'
		case 'o':
			c = '0'
		}
		if strings.IndexByte(BackupCodeAlphabet, c) < 0 {
			return "", Invalid(CodeMalformedCode, "a backup code has 10 characters")
		}
		b.WriteByte(c)
	}
	if b.Len() != BackupCodeLength {
		return "", Invalid(CodeMalformedCode, "a backup code has 10 characters")
	}
	return b.String(), nil
}

// ValidateNumericCode accepts exactly `digits` ASCII digits: no Unicode digits,
// no spaces, no signs.
func ValidateNumericCode(code string, digits int) error {
	if len(code) != digits {
		return Invalid(CodeMalformedCode, "the code must be exactly the configured number of digits")
	}
	for i := 0; i < len(code); i++ {
		if code[i] < '0' || code[i] > '9' {
			return Invalid(CodeMalformedCode, "the code must be exactly the configured number of digits")
		}
	}
	return nil
}
