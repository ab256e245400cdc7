# syntax=docker/dockerfile:1

# One image for edge-agent, cloud-hub and firmware-sim, on amd64 and arm64:
#   docker buildx build --platform linux/amd64,linux/arm64 -t edgemux .

# ---- build stage: compile TypeScript and native modules -------------------
FROM node:20-bookworm-slim AS build

# Toolchain for native npm modules (better-sqlite3 falls back to node-gyp).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*

# Use the headers that ship with the image instead of downloading them.
ENV npm_config_nodedir=/usr/local \
    npm_config_audit=false \
    npm_config_fund=false \
    npm_config_update_notifier=false

WORKDIR /app

# Dependencies first, for layer caching. --ignore-scripts keeps the root
# "prepare" script (tsc) from running before the sources are copied;
# `npm rebuild` then runs the dependencies' install scripts (native builds).
# .npmr[c] copies .npmrc only if the project has one.
COPY package.json package-lock.json .npmr[c] ./
RUN npm ci --ignore-scripts && npm rebuild

# Sources (see .dockerignore for what is left out).
COPY . .
RUN npm run build && npm prune --omit=dev --ignore-scripts

# ---- runtime stage ---------------------------------------------------------
FROM node:20-bookworm-slim AS runtime

ENV NODE_ENV=production
WORKDIR /app

COPY --from=build --chown=node:node /app/package.json /app/package-lock.json ./
COPY --from=build --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
# The hub's status page is served as plain files, found beside dist/.
COPY --from=build --chown=node:node /app/cloud-hub/status-page ./cloud-hub/status-page

# Mount points of the named volumes in docker-compose.yml: owning them here
# makes a fresh volume writable by the non-root user.
RUN mkdir -p /data /pki /tls /hub-tls /agent-tls && chown node:node /data /pki /tls /hub-tls /agent-tls

USER node

EXPOSE 1883 8883
CMD ["node", "dist/cloud-hub/cli.js", "--help"]
