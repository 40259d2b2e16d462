# One image with both binaries (SPEC §11): `weft operator` runs the control plane, `weft-proxy`
# the sidecar and its init container. Build: docker build -t ghcr.io/weft-mesh/weft:0.1.0 .
# (tests/dockerfile.rs keeps the binaries and the image name in step with Cargo.toml and config/.)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin weft --bin weft-proxy

FROM debian:bookworm-slim
# `weft-proxy init` (the init container) runs iptables-save and iptables-restore: Debian's
# default alternative, the nft backend, as on current nodes. ca-certificates: the system roots
# a DestinationRule SIMPLE without credentialName verifies the server against
# (src/proxy/originate.rs), as Istio's proxy image has them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/weft /usr/local/bin/weft
COPY --from=build /src/target/release/weft-proxy /usr/local/bin/weft-proxy
# Non-root by default; the injected init container asks for root and NET_ADMIN itself.
USER 65532:65532
ENTRYPOINT ["weft"]
