import { createHash, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { EdgemuxError, isEdgemuxError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { SettingsDiff } from '../shared/reload.js';
import { type DeviceQuery, MAX_PAGE_SIZE, pageDevices } from './device-query.js';
import type { DeviceSession } from './device-session.js';
import type { CloudHub } from './hub.js';

export interface AdminApiOptions {
  host: string;
  port: number;
  /** The bearer token every /api request must carry. */
  token: string;
  hub: CloudHub;
  log: Logger;
  /** Reloads the configuration as SIGHUP does; absent when the hub runs without a config file to read. */
  reload?: () => Promise<SettingsDiff>;
}

export interface AdminApi {
  address: AddressInfo;
  /** A new token for requests from now on (the token file was rewritten and reloaded). */
  setToken(token: string): void;
  close(): Promise<void>;
}

/** Below this a token can be guessed; 32 random bytes in hex or base64 are well above it. */
export const MIN_TOKEN_LENGTH = 16;
/** The actions take no body; anything longer than this is not a client of this API. */
const MAX_BODY_BYTES = 1024;
const MAX_CONNECTIONS = 64;
const REQUEST_TIMEOUT_MS = 10_000;
const DEFAULT_PAGE_SIZE = 50;

/** Reads the bearer token from the file `admin.tokenFile` names, so it never sits in the configuration itself. */
export function readAdminToken(path: string, key = 'admin.tokenFile'): string {
  let token: string;
  try {
    token = readFileSync(path, 'utf8').trim();
  } catch (err) {
    throw new EdgemuxError('E_CONFIG', `${key}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  if (token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
    throw new EdgemuxError('E_CONFIG', `${key}: ${path} must hold one token of at least ${MIN_TOKEN_LENGTH} characters without spaces`);
  }
  return token;
}

/** The status page's files, served as they are: no build step. */
const STATIC_FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

/** From cloud-hub/ (tests, tsx) or dist/cloud-hub/ (the built hub; the image copies the page beside dist). */
function statusPageDir(): string | null {
  const candidates = ['./status-page/', '../../cloud-hub/status-page/'].map((relative) => fileURLToPath(new URL(relative, import.meta.url)));
  return candidates.find((dir) => existsSync(`${dir}index.html`)) ?? null;
}

/** Hashing first makes both sides the same length, so the comparison takes the same time whatever was sent. */
function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function deviceSummary(hub: CloudHub, session: DeviceSession) {
  return {
    clientId: session.clientId,
    agentId: session.agentId,
    state: session.state,
    connectedSince: iso(session.connectedAt),
    lastSeen: iso(session.lastSeenAt),
    messagesUp: session.traffic.packetsToBroker,
    messagesDown: session.traffic.packetsToDevice,
    bytesUp: session.traffic.bytesToBroker,
    bytesDown: session.traffic.bytesToDevice,
    route: session.route,
    backend: hub.backendOf(session),
  };
}

function deviceDetail(hub: CloudHub, session: DeviceSession) {
  return {
    ...deviceSummary(hub, session),
    protocolVersion: session.protocolVersion,
    keepaliveSeconds: session.keepalive,
    streamId: session.stream.id,
    detachedSince: session.state === 'detached' ? iso(session.detachedAt) : null,
    queuedBytes: session.queuedBytes,
    replayBytes: session.stream.replayBytes,
    brokerHeldBytes: session.link?.heldBytes ?? 0,
    droppedQos0: session.droppedQos0,
    droppedOversized: session.droppedOversized,
  };
}

function parseDeviceQuery(params: URLSearchParams): DeviceQuery {
  const limitText = params.get('limit');
  const limit = limitText === null ? DEFAULT_PAGE_SIZE : Number(limitText);
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE_SIZE) {
    throw new HttpError(400, `limit: expected an integer from 1 to ${MAX_PAGE_SIZE} (got ${JSON.stringify(limitText)})`);
  }
  return {
    limit,
    search: params.get('search') || undefined,
    agentId: params.get('agent') || undefined,
    after: params.get('after') || undefined,
  };
}

/**
 * The hub's admin API (JSON under /api/v1, every request with the bearer
 * token) and its status page (static files, no data without the token).
 * Off unless configured; docs/admin-api.md describes it.
 */
export async function startAdminApi(options: AdminApiOptions): Promise<AdminApi> {
  const { hub, log } = options;
  let expected = digest(options.token);
  const pageDir = statusPageDir();
  if (pageDir === null) log.warn({ reason: 'cloud-hub/status-page not found beside the program' }, 'status page not served');

  const authorized = (request: http.IncomingMessage): boolean => {
    const header = request.headers.authorization ?? '';
    const given = header.startsWith('Bearer ') ? header.slice('Bearer '.length) : '';
    return timingSafeEqual(digest(given), expected);
  };

  const readBody = (request: http.IncomingMessage): Promise<void> =>
    new Promise((resolve, reject) => {
      const declared = Number(request.headers['content-length'] ?? 0);
      if (declared > MAX_BODY_BYTES) {
        reject(new HttpError(413, `request body larger than ${MAX_BODY_BYTES} bytes`));
        return;
      }
      let received = 0;
      request.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > MAX_BODY_BYTES) {
          request.pause();
          reject(new HttpError(413, `request body larger than ${MAX_BODY_BYTES} bytes`));
        }
      });
      request.once('end', () => resolve());
      request.once('error', reject);
    });

  const route = async (method: string, path: string, params: URLSearchParams, request: http.IncomingMessage): Promise<{ status: number; body: unknown }> => {
    let parts: string[];
    try {
      parts = path.split('/').slice(3).map(decodeURIComponent);
    } catch {
      throw new HttpError(400, `malformed path: ${path}`);
    }
    const only = (allowed: string): void => {
      if (method !== allowed) throw new HttpError(405, `${path} takes ${allowed}`);
    };
    if (method === 'POST') await readBody(request);
    if (parts.length === 1 && parts[0] === 'overview') {
      only('GET');
      const stats = hub.stats();
      const { counters } = hub;
      return {
        status: 200,
        body: {
          time: iso(Date.now()),
          ...stats,
          messagesUp: counters.messagesToBroker,
          messagesDown: counters.messagesToDevice,
          bytesUp: counters.bytesToBroker,
          bytesDown: counters.bytesToDevice,
          resumes: counters.resumes,
          slowConsumerCutoffs: counters.slowConsumerCutoffs,
          refusals: counters.refusalsByReason(),
          readiness: hub.readiness(),
        },
      };
    }
    if (parts.length === 1 && parts[0] === 'agents') {
      only('GET');
      const agents = hub.agentViews().map((agent) => ({ ...agent, tunnels: agent.tunnels.map((tunnel) => ({ ...tunnel, since: iso(tunnel.since) })) }));
      return { status: 200, body: { agents } };
    }
    if (parts.length === 3 && parts[0] === 'agents' && (parts[2] === 'drain' || parts[2] === 'undrain')) {
      only('POST');
      if (parts[2] === 'drain') {
        const sessionsEnded = hub.drainAgent(parts[1]);
        return { status: 200, body: { agentId: parts[1], draining: true, sessionsEnded } };
      }
      const wasDraining = hub.undrainAgent(parts[1]);
      return { status: 200, body: { agentId: parts[1], draining: false, wasDraining } };
    }
    if (parts.length === 1 && parts[0] === 'devices') {
      only('GET');
      const page = pageDevices(hub.devices(), (session) => session.clientId, (session) => session.agentId, parseDeviceQuery(params));
      return { status: 200, body: { total: page.total, next: page.next, devices: page.items.map((session) => deviceSummary(hub, session)) } };
    }
    if (parts.length === 2 && parts[0] === 'devices') {
      only('GET');
      const session = hub.device(parts[1]);
      if (session === undefined) throw new HttpError(404, `no device ${JSON.stringify(parts[1])} is connected`);
      return { status: 200, body: deviceDetail(hub, session) };
    }
    if (parts.length === 3 && parts[0] === 'devices' && parts[2] === 'disconnect') {
      only('POST');
      if (!hub.disconnectDevice(parts[1])) throw new HttpError(404, `no device ${JSON.stringify(parts[1])} is connected`);
      log.info({ clientId: parts[1], reason: 'admin API' }, 'device disconnected by an operator');
      return { status: 202, body: { clientId: parts[1], disconnected: true } };
    }
    if (parts.length === 1 && parts[0] === 'reload') {
      only('POST');
      if (options.reload === undefined) throw new HttpError(501, 'this hub has no configuration file to reload');
      try {
        return { status: 200, body: await options.reload() };
      } catch (err) {
        if (isEdgemuxError(err, 'E_CONFIG')) {
          log.error({ reason: err.message }, 'configuration reload refused; the running configuration stays');
          throw new HttpError(422, err.message);
        }
        throw err;
      }
    }
    throw new HttpError(404, `no such resource: ${path}`);
  };

  const server = http.createServer((request, response) => {
    const method = request.method ?? 'GET';
    const send = (status: number, body: unknown, headers: http.OutgoingHttpHeaders = {}): void => {
      response.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...headers }).end(JSON.stringify(body));
    };
    let url: URL;
    try {
      url = new URL(request.url ?? '/', 'http://admin.invalid');
    } catch {
      // A request target that URL cannot parse (e.g. `http://[`) would otherwise throw out of the handler and end the hub.
      send(400, { error: 'malformed request target' }, { connection: 'close' });
      return;
    }
    if (url.pathname.startsWith('/api/')) {
      if (!authorized(request)) {
        // Unread bodies of strangers are not waited for: the connection closes with the answer.
        send(401, { error: 'unauthorized' }, { 'www-authenticate': 'Bearer realm="edgemux"', connection: 'close' });
        return;
      }
      if (!url.pathname.startsWith('/api/v1/')) {
        send(404, { error: `no such resource: ${url.pathname}` });
        return;
      }
      route(method, url.pathname, url.searchParams, request).then(
        ({ status, body }) => send(status, body),
        (err: unknown) => {
          if (err instanceof HttpError) {
            send(err.status, { error: err.message }, err.status === 413 ? { connection: 'close' } : {});
            return;
          }
          log.error({ err, path: url.pathname }, 'admin API request failed');
          send(500, { error: 'internal error' });
        },
      );
      return;
    }
    const asset = STATIC_FILES[url.pathname];
    if (asset === undefined || pageDir === null) {
      send(404, { error: 'not found' });
      return;
    }
    if (method !== 'GET' && method !== 'HEAD') {
      send(405, { error: 'the status page is read with GET' });
      return;
    }
    let content: Buffer;
    try {
      content = readFileSync(`${pageDir}${asset.file}`);
    } catch {
      send(404, { error: 'not found' });
      return;
    }
    response
      .writeHead(200, {
        'content-type': asset.type,
        'cache-control': 'no-cache',
        'x-content-type-options': 'nosniff',
        'referrer-policy': 'no-referrer',
        // The page runs only its own script and talks only to this server.
        'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
      })
      .end(method === 'HEAD' ? undefined : content);
  });
  server.maxConnections = MAX_CONNECTIONS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.headersTimeout = REQUEST_TIMEOUT_MS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  log.info({ admin: address }, 'admin API listening');
  return {
    address,
    setToken: (token) => {
      expected = digest(token);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
