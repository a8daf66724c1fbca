# syntax=docker/dockerfile:1
FROM golang:1.26 AS build
WORKDIR /src
# Dependencies first, so source changes reuse the module cache layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/twofactord ./cmd/twofactord

FROM gcr.io/distroless/static
COPY --from=build /out/twofactord /twofactord
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/twofactord"]
