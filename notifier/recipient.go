package notifier

import (
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/secrets"
)

// Channel is how a message travels.
type Channel string

const (
	ChannelEmail Channel = "email"
	ChannelSMS   Channel = "sms"
)

// target is where a message goes, still sealed.
type target struct {
	channel Channel
	sealed  string
}

func (t target) purpose() secrets.Purpose {
	if t.channel == ChannelSMS {
		return secrets.PurposePhone
	}
	return secrets.PurposeEmail
}

func methodChannel(m domain.Method) (Channel, bool) {
	switch m {
	case domain.MethodEmail:
		return ChannelEmail, true
	case domain.MethodSMS:
		return ChannelSMS, true
	}
	return "", false
}

// resolveTarget decides where the notification of kind about stream[at] goes:
//
//   - a one-time code goes exactly where the event says it was issued for;
//   - "enabled" goes to the address the user has just proved (state after the event);
//   - every other message is about a change, and goes to the address registered
//     before the change: the state before the command that recorded the event (all
//     events of one command share a transaction), so that whoever changed the
//     address or removed the method cannot keep the message from its owner. Only
//     when there was none (an admin switched an app-only user to email) does it go
//     to the address registered by the change.
//
// Email is preferred; a user who only has a phone gets a text message.
func resolveTarget(kind Kind, tenantID, userID string, stream []*eventstore.Record, at int) (target, bool) {
	switch e := stream[at].Event.(type) {
	case *domain.OTPChallengeIssued:
		if c, ok := methodChannel(e.Method); ok && e.SealedDestination != "" {
			return target{channel: c, sealed: e.SealedDestination}, true
		}
		return target{}, false
	case *domain.OTPMethodSetupStarted:
		if c, ok := methodChannel(e.Method); ok && e.SealedDestination != "" {
			return target{channel: c, sealed: e.SealedDestination}, true
		}
		return target{}, false
	}
	if kind == KindEnabled {
		return contactOf(fold(tenantID, userID, stream[:at+1]))
	}
	start, end := at, at
	for start > 0 && stream[start-1].TransactionID == stream[at].TransactionID {
		start--
	}
	for end+1 < len(stream) && stream[end+1].TransactionID == stream[at].TransactionID {
		end++
	}
	if t, ok := contactOf(fold(tenantID, userID, stream[:start])); ok {
		return t, true
	}
	return contactOf(fold(tenantID, userID, stream[:end+1]))
}

func fold(tenantID, userID string, records []*eventstore.Record) *domain.UserTwoFactor {
	u := domain.NewUserTwoFactor(tenantID, userID)
	for _, r := range records {
		u.Apply(r.Event, r.RecordedAt)
	}
	return u
}

// contactOf: by email unless the user only has a phone. A method's address comes
// before the registered contact address of the same channel.
func contactOf(u *domain.UserTwoFactor) (target, bool) {
	for _, c := range []struct {
		method  domain.Method
		channel Channel
	}{{domain.MethodEmail, ChannelEmail}, {domain.MethodSMS, ChannelSMS}} {
		if d, ok := u.SealedDestination(c.method); ok && d != "" {
			return target{channel: c.channel, sealed: d}, true
		}
		if d, ok := u.SealedContactAddress(c.method); ok && d != "" {
			return target{channel: c.channel, sealed: d}, true
		}
	}
	return target{}, false
}
