package notifier

import (
	"bytes"
	"fmt"
	htmltemplate "html/template"
	"strings"
	"text/template"
	"time"
	"unicode"

	"github.com/twofactor/twofactor/domain"
)

// Every message is written once, as a subject, paragraphs and a short SMS text.
// The email's plain-text part joins the paragraphs; its HTML part puts the same
// paragraphs through html/template, so nothing a tenant configured (issuer name,
// support contact) can inject markup. No message carries a link, a secret or a
// backup code; the code messages carry only their code, its lifetime and a warning.
type content struct {
	subject string
	// codeIntro names the code of a code message: the text part reads
	// "<intro> is 123456.", the HTML part shows the code in a box below "<intro>:".
	codeIntro  string
	paragraphs []string
	sms        string
}

const notYou = `If this was not you, contact {{.Contact}} at once.`

var contents = map[Kind]content{
	KindRequirementWaived: {
		subject: `You chose to sign in without two-factor authentication`,
		paragraphs: []string{
			`On {{.When}} you chose to sign in to your {{.Issuer}} account without two-factor authentication, so it is no longer asked of you at sign-in.`,
			`Your password alone now protects this account. You can set up two-factor authentication again at any time.`,
			notYou,
		},
		sms: `{{.Issuer}}: you chose to sign in without two-factor authentication; your password alone now protects your account. Not you? Contact {{.Contact}}.`,
	},
	KindOTPCode: {
		subject:   `Your {{.Issuer}} sign-in code`,
		codeIntro: `Your sign-in code`,
		paragraphs: []string{
			`It is valid for {{.Lifetime}} and works once. Never share it with anyone: {{.Issuer}} never asks you for it.`,
			`{{if .SetupApp}}Your sign-in method was switched to an authenticator app. This code signs you in one more time; right after it you will be asked to set up the app: scan the QR code shown with it, enter its first code, and keep the new backup codes shown to you. Codes by {{.Destination}} stop working once the app is set up.{{end}}`,
			`If you did not just try to sign in, someone may know your password. Do not use the code; change your password and contact {{.Contact}}.`,
		},
		sms: `{{.Issuer}} sign-in code: {{.Code}}. Valid {{.Lifetime}}. Never share it.{{if .SetupApp}} Then set up your authenticator app.{{end}} Not you? Contact {{.Contact}}.`,
	},
	KindSetupCode: {
		subject:   `Confirm your {{.Destination}} for {{.Issuer}}`,
		codeIntro: `Your confirmation code`,
		paragraphs: []string{
			`Enter it to confirm this {{.Destination}} for two-factor authentication. It is valid for {{.Lifetime}} and works once.`,
			`If you did not ask for this code, do not use it, and contact {{.Contact}}.`,
		},
		sms: `{{.Issuer}} confirmation code: {{.Code}}. Valid {{.Lifetime}}. Not you? Contact {{.Contact}}.`,
	},
	KindEnabled: {
		subject: `Two-factor authentication is on`,
		paragraphs: []string{
			`Two-factor authentication was switched on for your {{.Issuer}} account on {{.When}}, with {{.ToName}}.`,
			`From now on, signing in takes your password and a second factor. Keep your backup codes somewhere safe: each of them signs you in once if you lose your second factor.`,
			notYou,
		},
		sms: `{{.Issuer}}: two-factor authentication is now on for your account. Not you? Contact {{.Contact}}.`,
	},
	KindDisabled: {
		subject: `Two-factor authentication is off`,
		paragraphs: []string{
			`{{if eq .Reason "recovery_code_used"}}A backup code was used to sign in to your {{.Issuer}} account on {{.When}} and, as your organisation's policy requires, this switched two-factor authentication off. You will be asked to set it up again at your next sign-in: scan the QR code shown with your authenticator app (or confirm your email address or phone number with the code sent to it), then keep the new backup codes shown to you somewhere safe.` +
				`{{else if .ByAdmin}}An administrator switched two-factor authentication off for your {{.Issuer}} account on {{.When}}.` +
				`{{else}}Two-factor authentication was switched off for your {{.Issuer}} account on {{.When}}.{{end}}`,
			`All your backup codes are void, and your second factor no longer protects this account.`,
			`If you did not expect this, contact {{.Contact}} at once.`,
		},
		sms: `{{.Issuer}}: {{if eq .Reason "recovery_code_used"}}a backup code was used to sign in, which switched two-factor authentication off; your backup codes are void. Set it up again at your next sign-in.{{else}}two-factor authentication was switched off for your account and your backup codes are void.{{end}} Not you? Contact {{.Contact}}.`,
	},
	KindReset: {
		subject: `Your two-factor authentication was reset`,
		paragraphs: []string{
			`An administrator reset two-factor authentication for your {{.Issuer}} account on {{.When}}. Your authenticator app, registered codes and backup codes were removed from it.`,
			`At your next sign-in you will be asked to set up two-factor authentication again.`,
			`If you did not ask for this, contact {{.Contact}}.`,
		},
		sms: `{{.Issuer}}: an administrator reset your two-factor authentication; set it up again at your next sign-in. Questions? Contact {{.Contact}}.`,
	},
	KindMethodSwitched: {
		subject: `Your sign-in method was changed`,
		paragraphs: []string{
			`{{if .Cancelled}}The pending switch of your {{.Issuer}} account to an authenticator app was cancelled on {{.When}}; you keep signing in with {{.ToName}}.` +
				`{{else}}{{if .ByAdmin}}An administrator{{else}}You{{end}} switched the second factor of your {{.Issuer}} account from {{.FromName}} to {{.ToName}} on {{.When}}.{{end}}`,
			`{{if .Cancelled}}Nothing changes for you.` +
				`{{else if eq .To "totp"}}What to do next: at your next sign-in you will be asked to set up an authenticator app. Scan the QR code shown with the app, enter its first code, and save the new backup codes shown to you. Until then you sign in as before.` +
				`{{else if eq .To "email"}}What to do next: nothing. From now on your sign-in codes arrive by email, and the authenticator app is no longer needed for this account; you may delete its entry from the app.` +
				`{{else}}What to do next: nothing. From now on your sign-in codes arrive by text message to your registered phone number, and the authenticator app is no longer needed for this account; you may delete its entry from the app.{{end}}`,
			`If you did not expect this change, contact {{.Contact}} at once.`,
		},
		sms: `{{.Issuer}}: {{if .Cancelled}}the switch to an authenticator app was cancelled.{{else}}your sign-in method is now {{.ToName}}.{{if eq .To "totp"}} Set up the app at your next sign-in.{{end}}{{end}} Not you? Contact {{.Contact}}.`,
	},
	KindAuthenticatorReplaced: {
		subject: `A new authenticator app was set up`,
		paragraphs: []string{
			`A new authenticator app was set up for your {{.Issuer}} account on {{.When}}. The app you used before no longer works for this account.`,
			`Your old backup codes are void: a new set was issued with the new app. Keep it somewhere safe.`,
			notYou,
		},
		sms: `{{.Issuer}}: a new authenticator app was set up for your account; your old backup codes are void. Not you? Contact {{.Contact}}.`,
	},
	KindAppSetUp: {
		subject: `Your authenticator app is set up`,
		paragraphs: []string{
			`The authenticator app for your {{.Issuer}} account was set up on {{.When}}, completing the switch of your sign-in method. From now on you sign in with codes from the app.`,
			`Your old backup codes are void: a new set was issued with the app. Keep it somewhere safe.`,
			notYou,
		},
		sms: `{{.Issuer}}: your authenticator app is set up and your old backup codes are void. Not you? Contact {{.Contact}}.`,
	},
	KindBackupCodesRegenerated: {
		subject: `New backup codes were generated`,
		paragraphs: []string{
			`A new set of backup codes was generated for your {{.Issuer}} account on {{.When}}. Your previous backup codes no longer work.`,
			notYou,
		},
		sms: `{{.Issuer}}: new backup codes were generated for your account; the old ones no longer work. Not you? Contact {{.Contact}}.`,
	},
	KindBackupCodeUsed: {
		subject: `A backup code was used to sign in`,
		paragraphs: []string{
			`A backup code was used to sign in to your {{.Issuer}} account on {{.When}}. Each code works once; {{.Remaining}} unused {{plural .Remaining "code remains" "codes remain"}}.`,
			`If you lost your phone, set up your authenticator app again once you are signed in.`,
			`If this was not you, someone has one of your backup codes and your password: change your password and contact {{.Contact}} at once.`,
		},
		sms: `{{.Issuer}}: a backup code was used to sign in to your account; {{.Remaining}} left. Not you? Contact {{.Contact}}.`,
	},
	KindBackupCodesLow: {
		subject: `{{if eq .Remaining 0}}No backup codes left{{else}}Only {{.Remaining}} backup {{plural .Remaining "code" "codes"}} left{{end}}`,
		paragraphs: []string{
			`{{if eq .Remaining 0}}Your {{.Issuer}} account has no unused backup codes left.{{else}}Only {{.Remaining}} unused backup {{plural .Remaining "code remains" "codes remain"}} for your {{.Issuer}} account.{{end}}`,
			`Please generate a new set in your account's security settings and keep it somewhere safe. The new set replaces the old one.`,
			`If you did not use your backup codes yourself, contact {{.Contact}} at once.`,
		},
		sms: `{{.Issuer}}: {{if eq .Remaining 0}}no backup codes left{{else}}only {{.Remaining}} backup {{plural .Remaining "code" "codes"}} left{{end}}. Please generate a new set in your security settings.`,
	},
	KindLocked: {
		subject: `Sign-in verification is locked`,
		paragraphs: []string{
			`After repeated wrong codes, two-factor verification of your {{.Issuer}} account is locked until {{.Until}}.`,
			`If these attempts were not yours, someone knows your password: change it, and contact {{.Contact}}.`,
		},
		sms: `{{.Issuer}}: verification of your account is locked until {{.Until}} after repeated wrong codes. Not you? Contact {{.Contact}}.`,
	},
	KindCodeReplayed: {
		subject: `An authenticator code was used twice`,
		paragraphs: []string{
			`On {{.When}}, someone tried to sign in to your {{.Issuer}} account with an authenticator code that had already been used. It was refused.`,
			`If this was not you, someone may have seen one of your codes and knows your password: change your password and contact {{.Contact}} at once.`,
		},
		sms: `{{.Issuer}}: someone tried an already used authenticator code on your account. Not you? Change your password and contact {{.Contact}}.`,
	},
	KindSecurityKeyAdded: {
		subject: `A security key was added`,
		paragraphs: []string{
			`A security key was added to your {{.Issuer}} account on {{.When}}. It can now be used as your second factor.`,
			notYou,
		},
		sms: `{{.Issuer}}: a security key was added to your account. Not you? Contact {{.Contact}}.`,
	},
	KindSecurityKeyRemoved: {
		subject: `A security key was removed`,
		paragraphs: []string{
			`{{if .ByAdmin}}An administrator removed{{else}}You removed{{end}} a security key from your {{.Issuer}} account on {{.When}}. It no longer signs you in{{if eq .Remaining 0}}; no security key is left on the account{{end}}.`,
			`If you did not expect this, contact {{.Contact}} at once.`,
		},
		sms: `{{.Issuer}}: a security key was removed from your account. Not you? Contact {{.Contact}}.`,
	},
	KindSecurityKeyCloned: {
		subject: `Your security key may have been copied`,
		paragraphs: []string{
			`On {{.When}}, a security key of your {{.Issuer}} account signed in with a signature counter lower than one it had shown before. A genuine key never does this, so a copy of the key may exist.` +
				`{{if .Refused}} The sign-in was refused.{{else}} Your organisation's policy let the sign-in through.{{end}}`,
			`Remove that security key from your account once you are signed in with another method, and contact {{.Contact}} at once.`,
		},
		sms: `{{.Issuer}}: one of your security keys may have been copied{{if .Refused}}; the sign-in was refused{{end}}. Remove it and contact {{.Contact}}.`,
	},
}

const footer = `This is an automatic security message from {{.Issuer}}; it never contains a link to sign in. Questions: contact {{.Contact}}.`

const htmlLayout = `<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>{{.Subject}}</title></head>
<body style="margin:0;padding:24px;background:#f4f5f7;font-family:Helvetica,Arial,sans-serif;color:#1f2328">
<div style="max-width:560px;margin:0 auto;background:#ffffff;border-radius:8px;padding:24px">
<p style="margin:0 0 16px;font-size:13px;color:#57606a">{{.Issuer}}</p>
<h1 style="margin:0 0 16px;font-size:20px">{{.Subject}}</h1>
{{if .Code}}<p style="margin:0 0 8px">{{.CodeIntro}}:</p>
<p style="margin:0 0 16px;font-family:Menlo,Consolas,monospace;font-size:28px;letter-spacing:6px;font-weight:bold">{{.Code}}</p>
{{end}}{{range .Paragraphs}}<p style="margin:0 0 12px;line-height:1.5">{{.}}</p>
{{end}}<p style="margin:24px 0 0;font-size:12px;color:#57606a">{{.Footer}}</p>
</div>
</body>
</html>
`

// msgData is everything a template may use.
type msgData struct {
	Issuer  string
	Contact string
	// Code and Lifetime: code messages only.
	Code        string
	Lifetime    string
	Destination string // "email address" or "phone number"
	When        string
	Until       string
	ByAdmin     bool
	Reason      string
	From, To    domain.Method
	FromName    string
	ToName      string
	Cancelled   bool
	Remaining   int
	// SetupApp: a login code sent while the user is to set up the app after a switch.
	SetupApp bool
	// Refused: a possibly cloned key's sign-in was refused.
	Refused bool
}

type templates struct {
	subject    map[Kind]*template.Template
	codeIntro  map[Kind]string
	paragraphs map[Kind][]*template.Template
	sms        map[Kind]*template.Template
	footer     *template.Template
	html       *htmltemplate.Template
}

var templateFuncs = template.FuncMap{
	"plural": func(n int, one, many string) string {
		if n == 1 {
			return one
		}
		return many
	},
}

func parseTemplates() (*templates, error) {
	t := &templates{
		subject:    map[Kind]*template.Template{},
		codeIntro:  map[Kind]string{},
		paragraphs: map[Kind][]*template.Template{},
		sms:        map[Kind]*template.Template{},
	}
	parse := func(name, text string) (*template.Template, error) {
		return template.New(name).Funcs(templateFuncs).Option("missingkey=error").Parse(text)
	}
	var err error
	for _, k := range Kinds() {
		c, ok := contents[k]
		if !ok {
			return nil, fmt.Errorf("notifier: no template for %s", k)
		}
		if t.subject[k], err = parse(string(k)+".subject", c.subject); err != nil {
			return nil, err
		}
		if t.sms[k], err = parse(string(k)+".sms", c.sms); err != nil {
			return nil, err
		}
		if k.isCode() != (c.codeIntro != "") {
			return nil, fmt.Errorf("notifier: %s: exactly the code messages have a code", k)
		}
		t.codeIntro[k] = c.codeIntro
		for i, p := range c.paragraphs {
			pt, err := parse(fmt.Sprintf("%s.p%d", k, i), p)
			if err != nil {
				return nil, err
			}
			t.paragraphs[k] = append(t.paragraphs[k], pt)
		}
	}
	if t.footer, err = parse("footer", footer); err != nil {
		return nil, err
	}
	if t.html, err = htmltemplate.New("layout").Option("missingkey=error").Parse(htmlLayout); err != nil {
		return nil, err
	}
	return t, nil
}

func execute(t *template.Template, data msgData) (string, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return "", err
	}
	return b.String(), nil
}

// rendered is a message's text, ready for a channel.
type rendered struct {
	subject, text, html, sms string
}

func (t *templates) render(k Kind, data msgData) (rendered, error) {
	var r rendered
	var err error
	if r.subject, err = execute(t.subject[k], data); err != nil {
		return r, err
	}
	r.subject = oneLine(r.subject)
	if r.sms, err = execute(t.sms[k], data); err != nil {
		return r, err
	}
	var paragraphs []string
	for _, pt := range t.paragraphs[k] {
		p, err := execute(pt, data)
		if err != nil {
			return r, err
		}
		if p == "" {
			continue // a paragraph that applies only sometimes
		}
		paragraphs = append(paragraphs, p)
	}
	foot, err := execute(t.footer, data)
	if err != nil {
		return r, err
	}
	text := paragraphs
	if intro := t.codeIntro[k]; intro != "" {
		if data.Code == "" {
			return r, fmt.Errorf("notifier: %s without its code", k)
		}
		text = append([]string{intro + " is " + data.Code + "."}, paragraphs...)
	}
	r.text = strings.Join(text, "\n\n") + "\n\n-- \n" + foot + "\n"
	var h bytes.Buffer
	err = t.html.Execute(&h, struct {
		Subject, Issuer, CodeIntro, Code, Footer string
		Paragraphs                               []string
	}{r.subject, data.Issuer, t.codeIntro[k], data.Code, foot, paragraphs})
	if err != nil {
		return r, err
	}
	r.html = h.String()
	return r, nil
}

// oneLine keeps tenant-configured text from breaking a header or an SMS.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

func methodName(m domain.Method) string {
	switch m {
	case domain.MethodTOTP:
		return "an authenticator app"
	case domain.MethodEmail:
		return "codes by email"
	case domain.MethodSMS:
		return "codes by text message"
	case domain.MethodWebAuthn:
		return "a security key"
	}
	return "your previous method"
}

func formatLifetime(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return plural(int(d/time.Hour), "hour")
	case d >= time.Minute && d%time.Minute == 0:
		return plural(int(d/time.Minute), "minute")
	case d >= time.Minute:
		return plural(int(d.Round(time.Minute)/time.Minute), "minute")
	}
	return plural(int(d/time.Second), "second")
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

func formatTime(t time.Time) string { return t.UTC().Format("2 January 2006 at 15:04 UTC") }
