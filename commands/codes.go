package commands

import (
	"crypto/subtle"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// newBackupCodes draws a fresh set; the plain codes go back to the user once, only
// their keyed hashes go to the domain.
func (s *Service) newBackupCodes(tenantID, userID string, n int) (codes []string, hashes [][]byte, err error) {
	stream := eventstore.UserStream(tenantID, userID)
	for i := 0; i < n; i++ {
		var raw [domain.BackupCodeLength]byte
		if err := s.readRandom(raw[:]); err != nil {
			return nil, nil, err
		}
		code := domain.BackupCodeFromRandom(raw)
		codes = append(codes, domain.FormatBackupCode(code))
		hashes = append(hashes, s.codes.Hash(stream, code))
	}
	return codes, hashes, nil
}

// newNumericCode draws a uniform one-time code of n digits (rejection sampling
// keeps every digit equally likely).
func (s *Service) newNumericCode(n int) (string, error) {
	out := make([]byte, 0, n)
	buf := make([]byte, n*2)
	for len(out) < n {
		if err := s.readRandom(buf); err != nil {
			return "", err
		}
		for _, b := range buf {
			if b < 250 && len(out) < n {
				out = append(out, '0'+b%10)
			}
		}
	}
	return string(out), nil
}

func equalCodes(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
