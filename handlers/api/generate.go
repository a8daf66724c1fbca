// Package api is the HTTP layer generated from the contract, handlers/openapi.yaml:
// the request and response types of every operation and the strict Gin server
// interface the handlers implement. Do not edit api.gen.go; change the
// contract and run go generate. A test in handlers fails when it is stale.
package api

//go:generate go tool oapi-codegen -config oapi-codegen.yaml -o api.gen.go ../openapi.yaml
