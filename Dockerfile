# eirinix: one small static image for the server, the register/cleanup jobs, the broker, the
# ssh proxy and the in-pod ssh daemon. Same layout as scripts/build-image.sh (which needs no
# Docker engine and is what this repository's tests load): both run images/eirinix/rootfs.sh.
#
#   docker build -t eirinix:dev --build-arg VERSION=$(git describe --tags --always) .

FROM rust:1.95-bookworm AS build
ARG VERSION=dev
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# .cargo/config.toml links glibc statically (crt-static): one binary that runs in any app image.
ENV EIRINIX_VERSION=${VERSION}
RUN cargo build --locked --profile dist -p eirinix-cli --bin eirinix \
 && images/eirinix/rootfs.sh target/x86_64-unknown-linux-gnu/dist/eirinix /rootfs

# No shell, no package manager: the binary, CA roots and a non-root user.
FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="eirinix" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/eirinix/eirinix"
COPY --from=build /rootfs/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/eirinix"]
