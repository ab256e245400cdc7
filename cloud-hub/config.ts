import { z } from 'zod';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import { DEFAULT_WS_PATH } from '../shared/transports/tunnel-port.js';
import { anonymousAccess } from './app-access.js';
import { DEFAULT_OFFLINE_QUEUE } from './sqlite-persistence.js';
import { DEFAULT_SUBSCRIPTION_LIMITS } from './subscription-limits.js';

const port = z.number().int().min(0).max(65535);

/** Local hub settings without a protocol counterpart (those are in TUNNEL_DEFAULTS). */
export const HUB_DEFAULTS = {
  /**
   * A connection to the tunnel port must finish its TLS handshake within
   * this time. Node's own default (120 s) only reports the timeout and leaves
   * the socket open, about 22 KiB each.
   */
  handshakeTimeoutMs: 10_000,
  /** Connections on the tunnel port that have not yet sent HELLO; more are closed on accept. */
  maxUnauthenticated: 1024,
  /**
   * Longest client ID a device or application may use, in characters, as
   * aedes counts (its own default): MQTT allows 65 535 bytes, and every ID
   * the hub admits is kept in its registry and broker state.
   */
  maxClientIdLength: 256,
  /**
   * Devices one agent identity (all its workers) may hold at the hub at once:
   * the architecture's 100 000 per site. One certificate must not be able to
   * take the hub's whole session memory.
   */
  maxDevicesPerAgent: 100_000,
  /** Registry rows of devices and agents not seen for this long are deleted. */
  registryExpireAfterDays: 90,
} as const;

const brokerSchema = z.strictObject({
  url: z.string().regex(/^mqtts?:\/\/[^/:]+(:\d{1,5})?\/?$/, 'expected mqtt://host[:port] or mqtts://host[:port]'),
  /** PEM files for mqtts: the CA that signed the broker, and a client certificate if the broker wants one. */
  ca: z.string().optional(),
  cert: z.string().optional(),
  key: z.string().optional(),
  rejectUnauthorized: z.boolean().default(true),
  serverName: z.string().optional(),
});

const routeSchema = z.strictObject({
  name: z.string().optional(),
  match: z
    .strictObject({ clientId: z.string().optional(), username: z.string().optional(), agentId: z.string().optional() })
    .prefault({}),
  backend: z.union([
    z.literal('embedded'),
    z.strictObject({
      brokers: z.array(brokerSchema).min(1, 'name at least one broker'),
      healthCheckMs: z.number().int().min(0).default(5000),
      /**
       * How long a device stays attached while its broker is away (a restart):
       * the hub reconnects on its behalf meanwhile. 0 disconnects the device
       * with its broker connection. Default in external-broker.ts, 30 000.
       */
      reconnectGraceMs: z.number().int().min(0).optional(),
    }),
  ]),
});

export type RouteConfig = z.output<typeof routeSchema>;

export const hubConfigSchema = z.strictObject({
  hubId: z.string().min(1).default('hub-1'),
  tunnel: z
    .strictObject({
      host: z.string().default('0.0.0.0'),
      port: port.default(8883),
      handshakeTimeoutMs: z.number().int().min(100).default(HUB_DEFAULTS.handshakeTimeoutMs),
      maxUnauthenticated: z.number().int().min(1).default(HUB_DEFAULTS.maxUnauthenticated),
      /** Path of WebSocket tunnels on the tunnel port (told apart from raw ones by ALPN); false takes raw TLS only. */
      webSocketPath: z.union([z.string().regex(/^\/[^\s?#]*$/, 'a path starting with /, or false'), z.literal(false)]).default(DEFAULT_WS_PATH),
    })
    .prefault({}),
  /** The embedded broker's MQTT listener for cloud applications: loopback only unless configured, as Mosquitto 2.x. */
  app: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: port.default(1883),
      /** Application credentials in the mosquitto_passwd format; required to listen beyond loopback. */
      passwordFile: z.string().min(1).optional(),
      /** Clients without credentials: by default allowed on loopback without a password file, refused otherwise. */
      allowAnonymous: z.boolean().optional(),
      /** Largest packet an application may send, checked at its fixed header before any of it is buffered. */
      maxPacketSize: z.number().int().min(1024).max(268_435_460).default(TUNNEL_DEFAULTS.maxFramePayload),
    })
    .superRefine((app, ctx) => {
      const anonymous = anonymousAccess({ host: app.host, passwordFile: app.passwordFile !== undefined, allowAnonymous: app.allowAnonymous });
      if ('problem' in anonymous) ctx.addIssue({ code: 'custom', path: [anonymous.key], message: anonymous.problem });
    })
    .prefault({}),
  tls: z
    .strictObject({
      ca: z.string().min(1, 'path to the CA certificate that signs agent certificates'),
      cert: z.string().min(1, 'path to the hub certificate'),
      key: z.string().min(1, 'path to the hub private key'),
    })
    .optional(),
  /** SQLite file for the embedded broker's durable state and the agent/device registry; in memory when absent. */
  statePath: z.string().min(1).optional(),
  /** A development PKI directory, created on first use; an alternative to `tls`. */
  devPki: z.string().optional(),
  /**
   * A PKI directory made by `cloud-hub pki init`: its CA signs enrolled agents
   * (the hub holds the CA key), its pki.sqlite keeps tokens and revocations,
   * and its hub certificate is served unless `tls` names others.
   */
  pkiDir: z.string().min(1).optional(),
  enrollment: z
    .strictObject({
      /** Lifetime of the certificates the hub issues to enrolling and renewing agents. */
      certValidity: z.string().regex(/^\d+(\.\d+)?(ms|s|m|h|d)$/, 'expected a duration such as 12h or 30d').default('30d'),
      /** How often the hub reads revocations made by `cloud-hub pki revoke`. */
      revocationPollMs: z.number().int().min(50).max(60_000).default(500),
    })
    .prefault({}),
  streamWindow: z.number().int().min(1024).default(TUNNEL_DEFAULTS.streamWindow),
  maxPacketSize: z.number().int().min(1024).max(268_435_460).default(TUNNEL_DEFAULTS.maxFramePayload),
  heartbeatMs: z.number().int().min(100).default(TUNNEL_DEFAULTS.heartbeatMs),
  deadAfterMs: z.number().int().min(300).default(TUNNEL_DEFAULTS.deadAfterMs),
  resumeGraceMs: z.number().int().min(0).default(TUNNEL_DEFAULTS.resumeGraceMs),
  maxQueuedBytes: z.number().int().min(64 * 1024).default(TUNNEL_DEFAULTS.maxQueuedBytes),
  maxClientIdLength: z.number().int().min(23).max(65_535).default(HUB_DEFAULTS.maxClientIdLength),
  maxDevicesPerAgent: z.number().int().min(1).default(HUB_DEFAULTS.maxDevicesPerAgent),
  /** The registry of agents and devices (with statePath). */
  registry: z
    .strictObject({
      /** Devices and agents not connected and not seen for this many days are forgotten. */
      expireAfterDays: z.number().min(1).default(HUB_DEFAULTS.registryExpireAfterDays),
    })
    .prefault({}),
  /** Per client of the embedded broker (devices and applications): past a limit a filter gets SUBACK 0x80. */
  subscriptions: z
    .strictObject({
      maxPerClient: z.number().int().min(1).default(DEFAULT_SUBSCRIPTION_LIMITS.maxPerClient),
      maxTopicLength: z.number().int().min(1).max(65_535).default(DEFAULT_SUBSCRIPTION_LIMITS.maxTopicLength),
      maxTopicLevels: z.number().int().min(1).max(100).default(DEFAULT_SUBSCRIPTION_LIMITS.maxTopicLevels),
    })
    .prefault({}),
  /** Topic access on the embedded broker, for devices and applications alike; without a file every topic is allowed. */
  acl: z
    .strictObject({
      /** Mosquitto's acl_file format (user, topic, pattern lines); read at start-up and on reload. */
      file: z.string().min(1).optional(),
    })
    .prefault({}),
  /** Per session of the embedded broker that is away: past either bound, new messages for it are dropped. */
  offlineQueue: z
    .strictObject({
      maxMessages: z.number().int().min(1).default(DEFAULT_OFFLINE_QUEUE.maxMessages),
      maxBytes: z.number().int().min(1024).default(DEFAULT_OFFLINE_QUEUE.maxBytes),
    })
    .prefault({}),
  /** Which client IDs each agent may speak for (globs); without entries, agent A may use "A:*" (routes.ts, Namespaces). */
  namespaces: z
    .array(z.strictObject({ agentId: z.string().min(1), clientIds: z.array(z.string().min(1)).min(1) }))
    .default([]),
  /** First match wins; devices no route matches use the embedded broker. */
  routes: z.array(routeSchema).default([]),
  /** Prometheus /metrics, /healthz and /readyz; off unless a port is given. */
  metrics: z.strictObject({ host: z.string().default('127.0.0.1'), port: port }).optional(),
  /** Admin API and status page (docs/admin-api.md); off unless configured, on loopback unless a host is given. */
  admin: z
    .strictObject({
      host: z.string().default('127.0.0.1'),
      port: port,
      /** A file holding the bearer token, so the token is never in the configuration itself. */
      tokenFile: z.string().min(1, 'path to a file holding the bearer token'),
    })
    .optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Log to this file instead of stdout; SIGUSR1 reopens it (logrotate's postrotate). */
  logFile: z.string().min(1, 'path of the log file').optional(),
  /** Past this size the log file is renamed to logFile.1 and a fresh one started; no limit when absent. */
  logMaxBytes: z.number().int().min(4096).optional(),
  /** Rotated log files kept by logMaxBytes: logFile.1 .. logFile.N. */
  logKeep: z.number().int().min(1).max(99).default(5),
}).refine((config) => config.tls !== undefined || config.devPki !== undefined || config.pkiDir !== undefined, {
  message: 'set tls (ca, cert, key file paths), pkiDir (made by cloud-hub pki init) or devPki (a directory for a development PKI)',
  path: ['tls'],
}).refine((config) => config.app.maxPacketSize <= config.maxPacketSize, {
  // A message the tunnel cannot carry would be accepted only to be dropped for every subscriber.
  message: 'must not exceed maxPacketSize, the largest packet a tunnel carries to a device',
  path: ['app', 'maxPacketSize'],
});

export type HubConfig = z.output<typeof hubConfigSchema>;
