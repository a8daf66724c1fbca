package notifier

import (
	"context"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// Kind names one notification an event calls for.
// WARNING: durable: kinds key the ledger together with the event id. Renaming one
// makes an event redelivered after the rename send its message a second time.
type Kind string

// WARNING: durable names, see Kind.
const (
	// KindOTPCode is the emailed or texted login code (OTPChallengeIssued).
	KindOTPCode Kind = "otp_code"
	// KindSetupCode confirms a new email address or phone number (OTPMethodSetupStarted).
	KindSetupCode Kind = "setup_code"
	// KindEnabled confirms that 2FA is on (TwoFactorEnabled: never for an enrolment
	// that failed or expired, since those record no such event).
	KindEnabled Kind = "enabled"
	// KindDisabled: 2FA is off and every backup code is void.
	KindDisabled Kind = "disabled"
	// KindReset: an admin wiped the setup; enrol again at the next login.
	KindReset Kind = "reset"
	// KindMethodSwitched: the method changed, with what to do next.
	KindMethodSwitched Kind = "method_switched"
	// KindAuthenticatorReplaced: a new app replaced the old one; old backup codes are void.
	KindAuthenticatorReplaced Kind = "authenticator_replaced"
	// KindAppSetUp: the app was set up after a switch to it; new backup codes.
	KindAppSetUp Kind = "app_set_up"
	// KindBackupCodesRegenerated: a new set replaced the old one.
	KindBackupCodesRegenerated Kind = "backup_codes_regenerated"
	// KindBackupCodeUsed: a backup code logged the user in.
	KindBackupCodeUsed Kind = "backup_code_used"
	// KindBackupCodesLow: the set reached the tenant's warning threshold (once per set).
	KindBackupCodesLow Kind = "backup_codes_low"
	// KindLocked: verification is locked after repeated failures.
	KindLocked Kind = "locked"
	// KindCodeReplayed: an authenticator code that was already used was tried again.
	KindCodeReplayed Kind = "code_replayed"
	// KindRequirementWaived: the user switched "use 2FA" off for themself without
	// disabling anything (at the enrolment prompt); a disable says it already.
	KindRequirementWaived Kind = "requirement_waived"
)

// Kinds lists every kind, for templates, tests and tooling.
func Kinds() []Kind {
	return []Kind{
		KindOTPCode, KindSetupCode, KindEnabled, KindDisabled, KindReset, KindMethodSwitched,
		KindAuthenticatorReplaced, KindAppSetUp, KindBackupCodesRegenerated, KindBackupCodeUsed,
		KindBackupCodesLow, KindLocked, KindCodeReplayed, KindRequirementWaived,
	}
}

// isCode: the message carries a one-time code, someone waits for it, and it goes
// to the destination named in the event rather than to the registered address.
func (k Kind) isCode() bool { return k == KindOTPCode || k == KindSetupCode }

func (k Kind) priority() int {
	if k.isCode() {
		return 0
	}
	return 1
}

// reactions maps an event of a user stream to the notifications it calls for.
func (n *Notifier) reactions(ctx context.Context, rec *eventstore.Record) ([]Kind, error) {
	switch e := rec.Event.(type) {
	case *domain.OTPChallengeIssued:
		return []Kind{KindOTPCode}, nil
	case *domain.OTPMethodSetupStarted:
		return []Kind{KindSetupCode}, nil
	case *domain.TwoFactorEnabled:
		return []Kind{KindEnabled}, nil
	case *domain.TwoFactorDisabled:
		return []Kind{KindDisabled}, nil
	case *domain.TwoFactorReset:
		return []Kind{KindReset}, nil
	case *domain.MethodSwitched:
		return []Kind{KindMethodSwitched}, nil
	case *domain.TOTPEnrollmentConfirmed:
		if e.Replacement {
			return []Kind{KindAuthenticatorReplaced}, nil
		}
	case *domain.BackupCodesGenerated:
		// "enabled" and "authenticator_replaced" already say that a new set was issued.
		if e.Reason == domain.BackupReasonMethodSwitched {
			return []Kind{KindAppSetUp}, nil
		}
	case *domain.BackupCodesRegenerated:
		return []Kind{KindBackupCodesRegenerated}, nil
	case *domain.BackupCodeConsumed:
		kinds := []Kind{KindBackupCodeUsed}
		if e.Remaining > e.LowThreshold {
			return kinds, nil
		}
		stream, err := n.store.Load(ctx, rec.StreamID)
		if err != nil {
			return nil, err
		}
		if lowCodesDue(stream, rec.EventID) {
			kinds = append(kinds, KindBackupCodesLow)
		}
		return kinds, nil
	case *domain.TwoFactorLocked:
		return []Kind{KindLocked}, nil
	case *domain.TOTPCheckFailed:
		if e.Replayed {
			return []Kind{KindCodeReplayed}, nil
		}
	case *domain.TwoFactorRequirementChanged:
		if e.Required || !e.ByUser() {
			return nil, nil
		}
		stream, err := n.store.Load(ctx, rec.StreamID)
		if err != nil {
			return nil, err
		}
		if !disabledAlongside(stream, rec) {
			return []Kind{KindRequirementWaived}, nil
		}
	}
	return nil, nil
}

// disabledAlongside: the command that recorded rec also switched 2FA off, whose
// message tells the user already.
func disabledAlongside(stream []*eventstore.Record, rec *eventstore.Record) bool {
	var tx uint64
	for _, r := range stream {
		if r.EventID == rec.EventID {
			tx = r.TransactionID
		}
	}
	for _, r := range stream {
		if _, off := r.Event.(*domain.TwoFactorDisabled); off && tx != 0 && r.TransactionID == tx {
			return true
		}
	}
	return false
}

// lowCodesDue says whether the consumption eventID is the first of its backup-code
// set to leave the set at or below the warning threshold in force at that time:
// the warning goes once per set, never again for the last codes, and is not lost
// when the tenant raises the threshold mid-set. No warning when the same command
// switched 2FA off (a recovery-code policy): the codes are void anyway.
func lowCodesDue(stream []*eventstore.Record, eventID string) bool {
	at := -1
	for i, r := range stream {
		if r.EventID == eventID {
			at = i
			break
		}
	}
	if at < 0 {
		return false
	}
	consumed, ok := stream[at].Event.(*domain.BackupCodeConsumed)
	if !ok || consumed.Remaining > consumed.LowThreshold {
		return false
	}
	for _, r := range stream[at+1:] {
		if r.TransactionID != stream[at].TransactionID {
			break
		}
		if _, off := r.Event.(*domain.TwoFactorDisabled); off {
			return false
		}
	}
	for i := at - 1; i >= 0; i-- {
		switch e := stream[i].Event.(type) {
		case *domain.BackupCodesGenerated, *domain.BackupCodesRegenerated, *domain.TwoFactorDisabled,
			*domain.TwoFactorReset, *domain.UserForgotten:
			return true
		case *domain.BackupCodeConsumed:
			if e.Remaining <= e.LowThreshold {
				return false
			}
		}
	}
	return true
}
