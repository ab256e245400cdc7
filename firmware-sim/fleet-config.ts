import { z } from 'zod';
import { EdgemuxError } from '../shared/errors.js';
import { TELEMETRY_HEADER_BYTES } from './telemetry-payload.js';

const topicName = z
  .string()
  .min(1)
  // Topic names used for PUBLISH must not contain wildcards (MQTT 3.1.1 §4.7.1).
  .refine((t) => !t.includes('+') && !t.includes('#'), { error: 'must not contain the wildcards + or #' });

/** Defaults live here and nowhere else; the CLI passes only what the user gave. */
export const fleetOptionsSchema = z
  .object({
    host: z.string().min(1).default('127.0.0.1'),
    port: z.int().min(1).max(65535),
    devices: z.int().min(1),
    clientIdPrefix: z.string().default('sim-'),
    startIndex: z.int().min(0).max(0xffff_ffff).default(0),
    /** Telemetry messages per second per device; 0 disables telemetry. */
    ratePerDevice: z.number().min(0).max(100_000).default(1),
    qos: z.literal([0, 1, 2]).default(0),
    payloadSize: z.int().min(TELEMETRY_HEADER_BYTES).max(1024 * 1024).default(64),
    topicTemplate: topicName.default('devices/{id}/telemetry'),
    commandTopicTemplate: z.string().min(1).default('devices/{id}/commands'),
    replyTopicTemplate: topicName.default('devices/{id}/replies'),
    keepaliveSeconds: z.int().min(0).max(65535).default(60),
    cleanSession: z.boolean().default(true),
    protocolVersion: z.literal([4, 5]).default(4),
    /** Local addresses to bind, round robin; each gives its own ephemeral port range. */
    sourceAddresses: z.array(z.union([z.ipv4(), z.ipv6()], { error: 'must be an IP address' })).min(1).optional(),
    /**
     * Bind explicit local ports: the k-th device on each source address
     * binds sourcePortStart + k. Without it each device binds port 0 and the
     * kernel searches the ephemeral range for a free port on every connect.
     * Measured here (Linux 6.18, 15 000 sockets from one address to one
     * listener): kernel-chosen ports fell from ~9 500 to ~400 connects/s
     * once about 5 000 ports of the address were in use; explicit ports held
     * 13 000–21 000/s throughout. A device whose port is taken (EADDRINUSE)
     * retries once on a kernel-chosen port.
     */
    sourcePortStart: z.int().min(1).max(65535).optional(),
    connectConcurrency: z.int().min(1).default(500),
    /** Covers TCP connect, CONNACK and SUBACK. */
    connectTimeoutMs: z.int().min(1).default(10_000),
    /** QoS 1/2 publishes awaiting completion per device; more are skipped, not queued. */
    maxInflight: z.int().min(1).max(65535).default(100),
    /** Shared publish ticker period. 10 ms keeps bursts small at 100 msg/s per device. */
    tickMs: z.int().min(1).max(1000).default(10),
    /** Largest packet accepted from the server; larger ones are treated as malformed. */
    maxIncomingPacketBytes: z.int().min(64).default(1024 * 1024 + 1024),
    /** How long stop() waits for orderly closes before destroying sockets. */
    stopTimeoutMs: z.int().min(0).default(2000),
  })
  .strict()
  .superRefine((options, ctx) => {
    if (options.sourcePortStart === undefined) return;
    const addresses = options.sourceAddresses?.length;
    if (addresses === undefined) {
      ctx.addIssue({ code: 'custom', path: ['sourcePortStart'], message: 'needs sourceAddresses to bind to' });
      return;
    }
    const last = options.sourcePortStart + Math.ceil(options.devices / addresses) - 1;
    if (last > 65535) {
      ctx.addIssue({
        code: 'custom',
        path: ['sourcePortStart'],
        message: `${options.devices} devices over ${addresses} addresses would need ports up to ${last}`,
      });
    }
  });

export type FleetOptions = z.input<typeof fleetOptionsSchema>;
export type FleetConfig = z.output<typeof fleetOptionsSchema>;

/** A bad option; `key` names it so front ends can map it to their own flag names. */
export class FleetConfigError extends EdgemuxError {
  readonly key: string;

  constructor(key: string, message: string) {
    super('E_CONFIG', message);
    this.name = 'FleetConfigError';
    this.key = key;
  }
}

export function resolveFleetConfig(options: FleetOptions): FleetConfig {
  const result = fleetOptionsSchema.safeParse(options);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const key = issue.code === 'unrecognized_keys' ? issue.keys[0] : String(issue.path[0] ?? '');
  const value = (options as Record<string, unknown>)[key];
  throw new FleetConfigError(key, `${key}: ${issue.message} (got ${JSON.stringify(value)})`);
}

/** Expands `{id}` in a topic template. */
export function topicFor(template: string, clientId: string): string {
  return template.replaceAll('{id}', clientId);
}
