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
	// KindSecurityKeyAdded: a further security key was registered (the first
	// one's message is "enabled", which names it).
	KindSecurityKeyAdded Kind = "security_key_added"
	// KindSecurityKeyRemoved: a security key no longer signs in.
	KindSecurityKeyRemoved Kind = "security_key_removed"
	// KindSecurityKeyCloned: a key's signature counter went back: it may have been copied.
	KindSecurityKeyCloned Kind = "security_key_possibly_cloned"
)

// Kinds lists every kind, for templates, tests and tooling.
func Kinds() []Kind {
	return []Kind{
		KindOTPCode, KindSetupCode, KindEnabled, KindDisabled, KindReset, KindMethodSwitched,
		KindAuthenticatorReplaced, KindAppSetUp, KindBackupCodesRegenerated, KindBackupCodeUsed,
		KindBackupCodesLow, KindLocked, KindCodeReplayed, KindRequirementWaived,
		KindSecurityKeyAdded, KindSecurityKeyRemoved, KindSecurityKeyCloned,
	}
}

// isCode: the message carries a one-time code, someone waits for it, and it goes
// to the destination named in the event rather than to the registered address.
func (k Kind) isCode() bool { return k == KindOTPCode || k == KindSetupCode }

// priority 0 (codes) is claimed first and stays out of the per-user order of
// the notices (priority 1); the claim and migrations/0011 rely on these values.
func (k Kind) priority() int {
	if k.isCode() {
		return 0
	}
	return 1
}

// notifyingTypes are the event types reactions has a case for; an event of any
// other type calls for nothing and is not even decoded (handleMessage).
// WARNING: a new case in reactions needs its type here
// (TestOnlyNotifyingTypesNotify checks the others call for nothing).
var notifyingTypes = map[string]bool{}

func init() {
	for _, e := range []domain.Event{&domain.OTPChallengeIssued{}, &domain.OTPMethodSetupStarted{}, &domain.TwoFactorEnabled{},
		&domain.TwoFactorDisabled{}, &domain.TwoFactorReset{}, &domain.MethodSwitched{}, &domain.TOTPEnrollmentConfirmed{},
		&domain.BackupCodesGenerated{}, &domain.BackupCodesRegenerated{}, &domain.BackupCodeConsumed{}, &domain.TwoFactorLocked{},
		&domain.TOTPCheckFailed{}, &domain.TwoFactorRequirementChanged{}, &domain.SecurityKeyRegistered{},
		&domain.SecurityKeyRemoved{}, &domain.SecurityKeyCloneSuspected{}} {
		notifyingTypes[e.EventType()] = true
	}
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
		stream, err := n.store.Load(ctx, rec.StreamID)
		if err != nil {
			return nil, err
		}
		return consumptionNotices(stream, rec.EventID), nil
	case *domain.TwoFactorLocked:
		return []Kind{KindLocked}, nil
	case *domain.TOTPCheckFailed:
		if e.Replayed {
			return []Kind{KindCodeReplayed}, nil
		}
	case *domain.SecurityKeyRegistered:
		stream, err := n.store.Load(ctx, rec.StreamID)
		if err != nil {
			return nil, err
		}
		if at := indexOf(stream, rec.EventID); at < 0 || !enabledWith(stream, at) {
			return []Kind{KindSecurityKeyAdded}, nil
		}
	case *domain.SecurityKeyRemoved:
		return []Kind{KindSecurityKeyRemoved}, nil
	case *domain.SecurityKeyCloneSuspected:
		return []Kind{KindSecurityKeyCloned}, nil
	case *domain.TwoFactorRequirementChanged:
		if e.Required || !e.ByUser() {
			return nil, nil
		}
		stream, err := n.store.Load(ctx, rec.StreamID)
		if err != nil {
			return nil, err
		}
		if at := indexOf(stream, rec.EventID); at >= 0 && !switchedOffWith(stream, at) {
			return []Kind{KindRequirementWaived}, nil
		}
	}
	return nil, nil
}

// consumptionNotices are the notices of the backup-code login eventID. When a
// recovery-code policy switched 2FA off in the same command, that one event
// decides both, and only "disabled" is true: "a code was used, 9 left" would
// contradict it (the codes are void), so it says the code was used instead.
func consumptionNotices(stream []*eventstore.Record, eventID string) []Kind {
	at := indexOf(stream, eventID)
	if at < 0 {
		// A committed event is always in its stream; should it be missing, say
		// what the event itself says.
		return []Kind{KindBackupCodeUsed}
	}
	if switchedOffWith(stream, at) {
		return nil
	}
	if lowCodesDue(stream, at) {
		return []Kind{KindBackupCodeUsed, KindBackupCodesLow}
	}
	return []Kind{KindBackupCodeUsed}
}

func indexOf(stream []*eventstore.Record, eventID string) int {
	for i, r := range stream {
		if r.EventID == eventID {
			return i
		}
	}
	return -1
}

// switchedOffWith: the command that recorded stream[at] also switched 2FA off
// (its events share a transaction), whose message then tells the user already.
func switchedOffWith(stream []*eventstore.Record, at int) bool {
	for _, r := range stream {
		if _, off := r.Event.(*domain.TwoFactorDisabled); off && r.TransactionID == stream[at].TransactionID {
			return true
		}
	}
	return false
}

// enabledWith: the command that recorded stream[at] also switched 2FA on,
// whose message already names the new method.
func enabledWith(stream []*eventstore.Record, at int) bool {
	for _, r := range stream {
		if _, on := r.Event.(*domain.TwoFactorEnabled); on && r.TransactionID == stream[at].TransactionID {
			return true
		}
	}
	return false
}

// lowCodesDue says whether the consumption stream[at] is the first of its
// backup-code set to leave the set at or below the warning threshold in force at
// that time: the warning goes once per set, never again for the last codes, and
// is not lost when the tenant raises the threshold mid-set.
func lowCodesDue(stream []*eventstore.Record, at int) bool {
	consumed, ok := stream[at].Event.(*domain.BackupCodeConsumed)
	if !ok || consumed.Remaining > consumed.LowThreshold {
		return false
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
