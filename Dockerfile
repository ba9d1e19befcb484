# eirinix: one small static image for the server, the register/cleanup jobs, the broker, the
# ssh proxy and the in-pod ssh daemon. Not built in this repository's CI (no Docker engine there).
#
#   docker build -t eirinix:dev --build-arg VERSION=$(git describe --tags --always) .

FROM rust:1.95-alpine AS build
ARG VERSION=dev
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
ENV EIRINIX_VERSION=${VERSION}
RUN cargo build --profile dist --locked -p eirinix-cli --bin eirinix \
 && mkdir -p /out && cp target/dist/eirinix /out/eirinix

# No shell, no package manager: the binary, CA roots and a non-root user.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="eirinix" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/eirinix/eirinix"
COPY --from=build /out/eirinix /usr/local/bin/eirinix
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/eirinix"]
