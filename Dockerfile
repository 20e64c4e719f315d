# syntax=docker/dockerfile:1
# mcp-egress-proxy image: multi-stage, non-root (uid 10001), no dev dependencies, read-only
# root filesystem friendly (nothing is written but stdout). Config is expected at
# /etc/mcp-egress-proxy (the image ships the defaults; mount a ConfigMap over it).
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY bench ./bench
COPY console ./console
COPY scripts/build-console.mjs ./scripts/
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    MCP_EGRESS_CONFIG=/etc/mcp-egress-proxy/proxy.yaml
WORKDIR /opt/mcp-egress-proxy
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist/src ./dist/src
COPY --from=build /src/dist/console ./dist/console
COPY config/proxy.yaml config/policy.yaml /etc/mcp-egress-proxy/
USER 10001:10001
# Only the proxy port: the admin API listens on 127.0.0.1 inside the container (tokenless admin
# must stay on loopback); probe it from inside, as the HEALTHCHECK does.
EXPOSE 3128
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9901/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "/opt/mcp-egress-proxy/dist/src/cli.js", "serve"]
