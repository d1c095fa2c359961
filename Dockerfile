# agentcore: the server, the workers and the CLI in one image.
#   docker build -t agentcore:0.1.0 .
#   docker run --rm -p 8080:8080 agentcore:0.1.0 serve --host 0.0.0.0
# Multi-stage: the Rust toolchain stays in the build stage; the runtime image has the two
# binaries, python3 (the sandbox runs model-written tool code in it) and CA certificates.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p agentcore-cli -p agentcore-agent --bins \
    && install -D -m 0755 target/release/agentcore /out/agentcore \
    && install -D -m 0755 target/release/agentcore-sandbox /out/agentcore-sandbox

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 agentcore \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home agentcore \
    && mkdir -p /data \
    && chown agentcore:agentcore /data
# The sandbox launcher is found beside the agentcore binary.
COPY --from=build /out/agentcore /out/agentcore-sandbox /usr/local/bin/
ENV AGENTCORE_HOME=/data \
    AGENTCORE_PYTHON=/usr/bin/python3
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["agentcore"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
