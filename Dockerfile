# Multi-stage build: a static outboxd binary on a distroless, non-root base.
#   docker build -t outboxd .                       the sidecar
#   docker build --target producer -t outboxd-demo . the demo producer
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
COPY outbox/go.mod outbox/go.sum ./outbox/
RUN go mod download
COPY . .
ARG VERSION=dev
# The demo producer is a module of its own (examples/go-producer/go.mod).
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/outboxd ./cmd/outboxd \
 && cd examples/go-producer && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/go-producer .

FROM gcr.io/distroless/static-debian12:nonroot AS producer
COPY --from=build /out/go-producer /go-producer
USER nonroot:nonroot
ENTRYPOINT ["/go-producer"]

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/outboxd /outboxd
USER nonroot:nonroot
EXPOSE 8002
# distroless has no shell or curl: the binary asks its own /readyz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s CMD ["/outboxd", "health"]
ENTRYPOINT ["/outboxd"]
