import { z } from 'zod';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import { parseProxyUrl } from '../shared/http-proxy.js';
import { DEFAULT_WS_PATH } from '../shared/transports/tunnel-port.js';
import { DEFAULT_CONNECTS_PER_SECOND_PER_ADDRESS, DEFAULT_DEVICE_BACKLOG, DEFAULT_MAX_CLIENT_ID_LENGTH } from './agent.js';
import { TRANSPORT_ORDER } from './tunnel-dialer.js';
import { DEFAULT_PREFERRED_RETRY_MS, DEFAULT_RECONNECT_PROBE_MS } from './tunnel-pool.js';

const port = z.number().int().min(0).max(65535);
const hostPort = z.string().regex(/^.+:\d{1,5}$/, 'expected host:port');
/** A storm of devices overflows a short accept queue into SYN retransmits of 1 s and more. */
const backlog = z.number().int().min(1).max(65535).default(DEFAULT_DEVICE_BACKLOG);

/** The plain TCP listener devices reach when the configuration names no `listeners`. */
export const DEFAULT_LISTEN = { host: '0.0.0.0', port: 1883 } as const;

const listenerCommon = {
  /** Unlike the default listener, these bind to loopback unless told otherwise. */
  host: z.string().min(1).default('127.0.0.1'),
  port,
  backlog,
};
const handshakeTimeoutMs = z.number().int().min(100).default(10_000);
const tlsListener = {
  cert: z.string().min(1, 'path to the certificate devices see'),
  key: z.string().min(1, 'path to its private key'),
  ca: z.string().min(1, 'path to the CA that signs device certificates').optional(),
  requireClientCert: z.boolean().default(false),
  identityAs: z.enum(['clientId', 'username', 'both']).optional(),
  handshakeTimeoutMs,
};
const wsListener = {
  path: z.string().startsWith('/', 'an HTTP path starting with /').default('/mqtt'),
  handshakeTimeoutMs,
};

const listenerSchema = z
  .discriminatedUnion('type', [
    z.strictObject({ type: z.literal('tcp'), ...listenerCommon }),
    z.strictObject({ type: z.literal('tls'), ...listenerCommon, ...tlsListener }),
    z.strictObject({ type: z.literal('ws'), ...listenerCommon, ...wsListener }),
    z.strictObject({ type: z.literal('wss'), ...listenerCommon, ...tlsListener, ...wsListener }),
  ])
  .superRefine((listener, ctx) => {
    if (listener.type !== 'tls' && listener.type !== 'wss') return;
    if (listener.requireClientCert && listener.ca === undefined) {
      ctx.addIssue({ code: 'custom', path: ['ca'], message: 'requireClientCert needs the CA that signs device certificates' });
    }
    if (listener.identityAs !== undefined && !listener.requireClientCert) {
      ctx.addIssue({ code: 'custom', path: ['identityAs'], message: 'takes the identity from a verified certificate: set requireClientCert: true' });
    }
  });

export type ListenerConfig = z.output<typeof listenerSchema>;

export const agentConfigSchema = z.strictObject({
  /** Defaults to the common name of the agent certificate. */
  agentId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'letters, digits, dot, dash, underscore').default('agent-1'),
  /** The plain TCP listener (--host, --port), DEFAULT_LISTEN unless set; `listeners` replaces it. */
  listen: z
    .strictObject({
      host: z.string().optional(),
      port: port.optional(),
      backlog,
      /** CONNECTs per second from one source address (loopback exempt); 0: no limit. */
      connectsPerSecondPerAddress: z.number().int().min(0).default(DEFAULT_CONNECTS_PER_SECOND_PER_ADDRESS),
    })
    .prefault({}),
  listeners: z.array(listenerSchema).min(1, 'name at least one listener, or leave listeners out for plain TCP').optional(),
  hubs: z.array(hostPort).min(1, 'name at least one hub as host:port').default(['127.0.0.1:8883']),
  tunnels: z.number().int().min(1).max(16).default(2),
  /** Processes sharing the device port; each holds its own tunnels. */
  workers: z.number().int().min(1).max(64).default(1),
  tls: z
    .strictObject({
      ca: z.string().min(1, 'path to the CA certificate that signed the hub certificate'),
      cert: z.string().min(1, 'path to this agent certificate'),
      key: z.string().min(1, 'path to this agent private key'),
      serverName: z.string().optional(),
    })
    .optional(),
  devPki: z.string().optional(),
  /**
   * A directory holding the identity this agent enrolled with (ca.pem,
   * agent.pem, agent-key.pem): the agent id is its certificate's name, and the
   * certificate is renewed in place at `renewAt` of its validity.
   */
  identity: z
    .strictObject({
      dir: z.string().min(1),
      renewAt: z.number().gt(0).lt(1).default(2 / 3),
      /** Name the hub certificate must carry, when it differs from the dialled host. */
      serverName: z.string().optional(),
    })
    .optional(),
  streamWindow: z.number().int().min(1024).default(TUNNEL_DEFAULTS.streamWindow),
  maxPacketSize: z.number().int().min(1024).max(268_435_460).default(TUNNEL_DEFAULTS.maxFramePayload),
  connectTimeoutMs: z.number().int().min(100).default(10_000),
  /** Longest device client ID, in characters; longer ones get CONNACK identifier rejected. */
  maxClientIdLength: z.number().int().min(23).max(65_535).default(DEFAULT_MAX_CLIENT_ID_LENGTH),
  heartbeatMs: z.number().int().min(100).default(TUNNEL_DEFAULTS.heartbeatMs),
  deadAfterMs: z.number().int().min(300).default(TUNNEL_DEFAULTS.deadAfterMs),
  resumeGraceMs: z.number().int().min(0).default(TUNNEL_DEFAULTS.resumeGraceMs),
  backoffInitialMs: z.number().int().min(10).default(250),
  backoffMaxMs: z.number().int().min(100).default(30_000),
  /** While a hub is unreachable at the TCP level, how often to look again (mean; jittered ±50 %). */
  reconnectProbeMs: z.number().int().min(20).default(DEFAULT_RECONNECT_PROBE_MS),
  /** How tunnels reach the hubs, in order of preference; `proxy` is used only with a proxy (below or HTTPS_PROXY). */
  transports: z
    .array(z.enum(TRANSPORT_ORDER as [string, ...string[]]))
    .min(1, 'name at least one of tls, websocket, proxy')
    .refine((list) => new Set(list).size === list.length, 'each transport once')
    .default([...TRANSPORT_ORDER]),
  webSocketPath: z.string().regex(/^\/[^\s?#]*$/, 'a path starting with /').default(DEFAULT_WS_PATH),
  /** The site's HTTP CONNECT proxy; without it, HTTPS_PROXY and NO_PROXY from the environment. */
  proxy: z
    .strictObject({
      url: z.string().superRefine((url, ctx) => {
        try {
          parseProxyUrl(url, 'proxy.url');
        } catch {
          ctx.addIssue({ code: 'custom', message: 'expected http://[user:password@]host[:port]' });
        }
      }),
      /** Hosts reached directly, in NO_PROXY's syntax. */
      noProxy: z.string().optional(),
    })
    .optional(),
  /** While a tunnel runs on a fallback transport, how often it checks whether a preferred one works again. */
  preferredRetryMs: z.number().int().min(1000).default(DEFAULT_PREFERRED_RETRY_MS),
  /** Prometheus /metrics and /healthz; off unless a port is given. */
  metrics: z.strictObject({ host: z.string().default('127.0.0.1'), port: port }).optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Log to this file instead of stdout; SIGUSR1 reopens it (logrotate's postrotate). */
  logFile: z.string().min(1, 'path of the log file').optional(),
  /** Past this size the log file is renamed to logFile.1 and a fresh one started; no limit when absent. */
  logMaxBytes: z.number().int().min(4096).optional(),
  /** Rotated log files kept by logMaxBytes: logFile.1 .. logFile.N. */
  logKeep: z.number().int().min(1).max(99).default(5),
}).refine((config) => config.tls !== undefined || config.devPki !== undefined || config.identity !== undefined, {
  message: 'set tls (ca, cert, key file paths), identity.dir (an enrolled identity) or devPki (a directory for a development PKI)',
  path: ['tls'],
}).refine((config) => config.listeners === undefined || (config.listen.host === undefined && config.listen.port === undefined), {
  message: 'listeners replaces the default TCP listener: list it there as { type: tcp, host, port } instead of listen, --host or --port',
  path: ['listen'],
});

export type AgentConfig = z.output<typeof agentConfigSchema>;

/** The listeners devices reach: the configured list, or the plain TCP one of `listen`. */
export function deviceListeners(config: AgentConfig): ListenerConfig[] {
  return (
    config.listeners ?? [
      { type: 'tcp', host: config.listen.host ?? DEFAULT_LISTEN.host, port: config.listen.port ?? DEFAULT_LISTEN.port, backlog: config.listen.backlog },
    ]
  );
}
