package handlers

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/domain"
)

// The contract's constraints on a request (the types, ranges, lengths, enums
// and patterns of its path, query and header parameters and of its body) are
// checked by kin-openapi against handlers/openapi.yaml, not by hand:
// checkParams before the generated layer's handler reads the parameters, and
// checkBody on the value bodyShape decoded once. What the validator refuses
// becomes a problem in one place, contractProblem, which names the parameter
// or field in invalid_params and keeps the codes the contract documents.
// Handlers and the domain keep what a schema cannot say (which event types
// exist, an id's length in bytes, the policy's cross-field rules).

// validateOptions: a default is the handler's to apply, where the validator
// would rewrite the query string to hold it.
var validateOptions = &openapi3filter.Options{SkipSettingDefaults: true}

// checkParams validates the parameters of the request against its operation,
// found by Gin's route (no second router), with the values Gin decoded from
// the path.
//
// Parameter by parameter (openapi3filter.ValidateParameter), not the whole
// request (ValidateRequest): given the route of a 3.1 document, kin-openapi
// compiles a JSON Schema 2020-12 validator for each value on every call (some
// 700 µs per login on the 2-core machine of BENCHMARKS.md), and its security
// check reads the whole body. Without the route it validates with its own
// validator, as checkBody does, which reads every keyword this contract uses
// (type, enum, pattern, lengths, bounds, required, additionalProperties) the
// same way; keys were checked by authenticate and operator already, and the
// body is checked on the value bodyShape decoded, not read a second time.
func (a *API) checkParams(c *gin.Context) error {
	params := a.contract.params[c.Request.Method+" "+c.FullPath()]
	if len(params) == 0 {
		return nil
	}
	in := &openapi3filter.RequestValidationInput{Request: c.Request, Options: validateOptions}
	if len(c.Params) > 0 {
		in.PathParams = make(map[string]string, len(c.Params))
		for _, p := range c.Params {
			in.PathParams[p.Key] = p.Value
		}
	}
	for _, p := range params {
		if err := openapi3filter.ValidateParameter(c.Request.Context(), in, p); err != nil {
			return a.contract.problem(err)
		}
	}
	return nil
}

// validateParams is checkParams as a check of the generated layer.
func (a *API) validateParams(c *gin.Context) {
	if err := a.checkParams(c); err != nil {
		a.fail(c, err)
	}
}

// checkBody validates a decoded body against its schema. A null member the
// schema lists counts as left out, as the generated layer binds it: a required
// one is missing, an optional one (a merge patch's "no change") is not there;
// one it does not list is still an unknown field.
func (a *API) checkBody(schema *openapi3.Schema, obj map[string]any) error {
	dropNulls(schema, obj)
	// Every violation, so that the one reported is chosen (contractProblem)
	// and not the first in key order.
	if err := schema.VisitJSON(obj, openapi3.VisitAsRequest(), openapi3.MultiErrors()); err != nil {
		return a.contract.problem(err)
	}
	return nil
}

func dropNulls(schema *openapi3.Schema, obj map[string]any) {
	for k, v := range obj {
		p := schema.Properties[k]
		if p == nil {
			continue
		}
		switch v := v.(type) {
		case nil:
			delete(obj, k)
		case map[string]any:
			dropNulls(p.Value, v)
		}
	}
}

// contract is what the validator needs of handlers/openapi.yaml, built once.
type contract struct {
	// params: the parameters of each operation (its path's and its own), by
	// Gin route ("POST /v1/users/:user_id/verifications").
	params map[string][]*openapi3.Parameter
	// policyFields: the schemas of a policy's settings (PolicyPatch), whose
	// violations answer invalid_policy as the domain's own checks of a policy do.
	policyFields map[*openapi3.Schema]bool
}

// paramCodes: the documented code of a parameter or body field whose value the
// contract refuses, by name; any other answers invalid_argument.
var paramCodes = map[string]string{
	"X-Actor":         codeInvalidActor,
	"Idempotency-Key": codeInvalidIdempotency,
	"method":          "invalid_method",
	"to":              "invalid_method",
	"role":            "invalid_role",
}

// problem maps an error of the validator to its problem. Of a body's
// violations, the first unknown field is reported, else the first missing
// one, else the first of the wrong JSON type, else the first: the order in
// which the checks ran before the validator did them.
func (k *contract) problem(err error) error {
	var re *openapi3filter.RequestError
	if errors.As(err, &re) && re.Parameter != nil {
		reason := re.Reason
		var se *openapi3.SchemaError
		switch {
		case errors.As(re.Err, &se) && se.SchemaField == "format" && se.Schema.Format == "date-time":
			// Not the format's regular expression.
			reason = "must be an RFC 3339 time"
		case errors.As(re.Err, &se):
			reason = se.Reason
		case re.Err != nil && (reason == "" || errors.Is(re.Err, openapi3filter.ErrInvalidEmptyValue)):
			reason = re.Err.Error()
		}
		return refused(paramCode(re.Parameter.Name, false), re.Parameter.Name, re.Parameter.In, reason)
	}
	var all []*openapi3.SchemaError
	collect(err, &all)
	if len(all) == 0 {
		return domain.Invalid(domain.CodeInvalidArgument, err.Error())
	}
	for _, field := range []string{"properties", "required", "type", ""} {
		for _, se := range all {
			if field != "" && violated(se) != field {
				continue
			}
			at := bodyField(se.JSONPointer())
			name := at
			if name == "" {
				name = "body"
			}
			switch violated(se) {
			case "properties":
				obj, _ := se.Value.(map[string]any)
				for _, key := range slices.Sorted(maps.Keys(obj)) {
					if _, ok := se.Schema.Properties[key]; !ok {
						e := refused(codeUnknownField, joinField(at, key), "body", "unknown field")
						e.detail = fmt.Sprintf("unknown field %q is not accepted", key)
						return e
					}
				}
			case "required":
				return refused(domain.CodeInvalidArgument, name, "body", "is required")
			case "type":
				e := refused(codeInvalidJSON, name, "body", "must be "+jsonType(se.Schema))
				e.detail = name + " must be " + jsonType(se.Schema)
				return e
			}
			code := paramCode(name, k.policyFields[se.Schema])
			return refused(code, name, "body", se.Reason)
		}
	}
	return domain.Invalid(domain.CodeInvalidArgument, err.Error())
}

// violated is the constraint a schema error breaks; a value of another JSON
// type than the schema's breaks "type" even where the validator, which checks
// an enum first, says it is not in the enum.
func violated(se *openapi3.SchemaError) string {
	if se.SchemaField == "enum" && !fits(se.Schema, se.Value) {
		return "type"
	}
	return se.SchemaField
}

// fits: the JSON value is of the schema's type.
func fits(s *openapi3.Schema, v any) bool {
	switch v.(type) {
	case string:
		return s.Type.Is(openapi3.TypeString)
	case bool:
		return s.Type.Is(openapi3.TypeBoolean)
	case json.Number, float64:
		return s.Type.Is(openapi3.TypeInteger) || s.Type.Is(openapi3.TypeNumber)
	case map[string]any:
		return s.Type.Is(openapi3.TypeObject)
	case []any:
		return s.Type.Is(openapi3.TypeArray)
	}
	return false
}

func paramCode(name string, policy bool) string {
	if code, ok := paramCodes[name]; ok {
		return code
	}
	if policy {
		return domain.CodeInvalidPolicy
	}
	return domain.CodeInvalidArgument
}

// refused is a 400 naming the input at fault.
func refused(code, name, in, reason string) *apiError {
	e := newAPIError(http.StatusBadRequest, code, name+": "+reason)
	e.params = []InvalidParam{{Name: name, In: in, Reason: reason}}
	return e
}

// collect flattens the validator's errors into its schema errors.
func collect(err error, out *[]*openapi3.SchemaError) {
	var me openapi3.MultiError
	if errors.As(err, &me) {
		for _, e := range me {
			collect(e, out)
		}
		return
	}
	var se *openapi3.SchemaError
	if errors.As(err, &se) {
		*out = append(*out, se)
	}
}

// bodyField names a body member by its path: "policy.totp_digits"; the body
// itself is "".
func bodyField(pointer []string) string {
	name := ""
	for _, p := range pointer {
		name = joinField(name, p)
	}
	return name
}

// jsonType is the JSON type a schema wants, in the words of the decoder's
// errors (jsonError).
func jsonType(s *openapi3.Schema) string {
	switch {
	case s.Type.Is(openapi3.TypeString):
		return "a string"
	case s.Type.Is(openapi3.TypeBoolean):
		return "a boolean"
	case s.Type.Is(openapi3.TypeInteger), s.Type.Is(openapi3.TypeNumber):
		return "a number"
	case s.Type.Is(openapi3.TypeArray):
		return "an array"
	case s.Type.Is(openapi3.TypeObject):
		return "an object"
	}
	return "of another type"
}

// newContract indexes the loaded contract by Gin route.
func newContract(spec *openapi3.T) *contract {
	k := &contract{params: map[string][]*openapi3.Parameter{}, policyFields: map[*openapi3.Schema]bool{}}
	for path, item := range spec.Paths.Map() {
		for method, op := range item.Operations() {
			var params []*openapi3.Parameter
			// The path's first, as the generated layer binds them, unless the
			// operation overrides one of them.
			for _, p := range item.Parameters {
				if op.Parameters.GetByInAndName(p.Value.In, p.Value.Name) == nil {
					params = append(params, p.Value)
				}
			}
			for _, p := range op.Parameters {
				params = append(params, p.Value)
			}
			k.params[method+" "+openapiParam.ReplaceAllString(path, ":$1")] = params
		}
	}
	if patch := spec.Components.Schemas["PolicyPatch"]; patch != nil {
		for name, p := range patch.Value.Properties {
			if name != "reason" {
				k.policyFields[p.Value] = true
			}
		}
	}
	return k
}
