package handlers

import (
	"testing"

	"github.com/oapi-codegen/runtime"

	"github.com/twofactor/twofactor/handlers/api"
)

// TestADecodedBodyBindsWithoutASecondDecode: the value decodeObject builds is
// what the generated layer binds (runtime.BindJSONValue, before it would
// decode the body itself), members and numbers included; only a value that
// does not fit the type falls back to encoding/json, which names the error.
func TestADecodedBodyBindsWithoutASecondDecode(t *testing.T) {
	obj, err := decodeObject([]byte(`{"name": "Beta", "policy": {"backup_code_count": 12, "totp_digits": 8, "disable_by": "superadmins", "issuer_name": "B"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var req api.CreateTenantRequest
	if err := runtime.BindJSONValue(obj, &req); err != nil {
		t.Fatalf("bind: %v", err)
	}
	p := req.Policy
	if req.Name != "Beta" || p == nil || *p.BackupCodeCount != 12 || *p.TotpDigits != 8 || *p.DisableBy != api.PolicyPatchDisableBySuperadmins || *p.IssuerName != "B" || p.MailFrom != nil {
		t.Fatalf("bound %+v %+v", req, p)
	}
	for _, body := range []string{`{"backup_code_count": 12.5}`, `{"backup_code_count": 1e3}`, `{"backup_code_count": "12"}`, `{"issuer_name": 5}`} {
		obj, err := decodeObject([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		var pp api.PolicyPatch
		if err := runtime.BindJSONValue(obj, &pp); err == nil {
			t.Errorf("%s binds: %+v", body, pp)
		}
	}
}
