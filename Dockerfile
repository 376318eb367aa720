# syntax=docker/dockerfile:1
# The sync-airbnb-operator image: the binary with its Lua rules and migrations,
# run as a non-root user. Build from the repository root:
#
#   docker build -t sync-airbnb-operator:0.1.0 .
#
# (docs/operations.md, "Build the image"). Everything is installed with
# `cmake --install`; tests/integration/test_deploy.py checks that the paths
# below exist after an install and that the runtime packages cover every
# library the binary links.

ARG PREFIX=/usr/local

FROM debian:bookworm AS build
ARG PREFIX
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      cmake make gcc libc6-dev pkg-config \
      liblua5.4-dev libuv1-dev libyaml-dev libedit-dev libssl-dev \
      dpkg-dev autoconf automake libtool libnghttp2-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Static, minimal libcurl, libpq and libmicrohttpd from Debian's source packages
# (tools/deps keeps its own deb-src index), in a layer of their own: rebuilt only
# when tools/deps changes.
COPY tools/deps tools/deps
RUN tools/deps
COPY CMakeLists.txt ./
COPY core/ core/
COPY lua/ lua/
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" \
      -DSAO_DEPS_PREFIX="$(tools/deps prefix)" \
 && cmake --build build --target sync-airbnb-operator -j"$(nproc)" \
 && DESTDIR=/out cmake --install build \
 && /out$PREFIX/bin/sync-airbnb-operator check-rules /out$PREFIX/share/sync-airbnb-operator/lua/rules

# The shared libraries the binary links (readelf -d: NEEDED), no libpq5, libcurl4,
# libmicrohttpd12, libssl3, libnghttp2-14 or liblua5.4-0: those are linked in statically.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libuv1 libyaml-0-2 libedit2 zlib1g ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /
# Explicit, so the image never depends on the compiled-in defaults. The
# Deployment overrides RULES_DIR with the mounted rules ConfigMap. HOME: the
# only writable place under a read-only root file system (an emptyDir in the
# manifests), for the history of `kubectl exec ... -- sync-airbnb-operator repl`.
ENV RULES_DIR=/usr/local/share/sync-airbnb-operator/lua/rules \
    MIGRATIONS_DIR=/usr/local/share/sync-airbnb-operator/lua/migrations \
    HOME=/tmp
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sync-airbnb-operator"]
CMD ["run"]
