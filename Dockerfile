# ballast: multi-stage build on Node 24 LTS (Node 20 is end-of-life).
# Expected size: about 260 MB uncompressed (node:24-bookworm-slim is about
# 220 MB; ballast adds about 40 MB: dist/ plus production node_modules, of
# which zod, grpc-js and protobufjs are the largest), about 90 MB compressed.
# test/integration/image.test.ts reproduces the runtime stage and measures
# what it adds.

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --no-audit --no-fund
COPY src ./src
RUN npx tsc -p tsconfig.json

FROM node:24-bookworm-slim AS runtime
ENV NODE_ENV=production
# vip: (README "Virtual IP") runs `ip` to add, refresh and remove the address
# and `arping` to announce it: iproute2 and iputils-arping, about 3 MB.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 iputils-arping \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
COPY examples ./examples
COPY deploy/config ./deploy/config
# The image's node user (uid 1000); static pods may run it as another
# non-root uid that can read the PKI files (see deploy/README.md).
USER 1000:1000
EXPOSE 9901
# A young generation of 8 MiB semi-spaces (V8's default lets it grow to 32)
# keeps 10k idle connections under 150 MB; since reads go into ballast's own
# buffers it measures no cost to throughput (bench/README.md). Set here, not
# in NODE_OPTIONS, so a manifest's NODE_OPTIONS does not drop it.
ENTRYPOINT ["node", "--max-semi-space-size=8", "dist/cli.js"]
CMD ["--help"]
