import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import tls from 'node:tls';
import { Backoff } from '../shared/backoff.js';
import { type ControlFrame, FrameType, type GoodbyeBody, PROTOCOL_VERSION } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { addTraffic, emptyTraffic, Tunnel, type TunnelTraffic } from '../shared/tunnel.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';

/** The agent's replay memory per stream stays bounded whatever window the hub grants. */
const MAX_STREAM_WINDOW = 16 * 1024 * 1024;
const DIALS_BEFORE_NEXT_HUB = 2;

export interface HubAddress {
  host: string;
  port: number;
}

export interface TunnelPoolOptions {
  agentId: string;
  /** Index of this worker process when the agent runs several. */
  worker: number;
  hubs: HubAddress[];
  tunnels: number;
  tls: { ca: string; cert: string; key: string };
  /** Name the hub certificate must carry; defaults to the host being dialled. */
  serverName?: string;
  streamWindow: number;
  maxFramePayload: number;
  heartbeatMs: number;
  deadAfterMs: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  log: Logger;
}

/** A hub's refusal of a tunnel, in place of its HELLO: kept for health and metrics until a tunnel of that slot comes up. */
export interface TunnelRefusal {
  tunnel: number;
  hub: string;
  code: string;
  reason: string;
  at: number;
}

export interface TunnelPoolEvents {
  up: [tunnel: Tunnel, slot: number];
  down: [tunnel: Tunnel, slot: number, reason: string];
  control: [tunnel: Tunnel, frame: ControlFrame];
  'gave-up': [slot: number];
}

interface Slot {
  index: number;
  tunnel: Tunnel | null;
  /** Set once the hub answered HELLO. */
  ready: boolean;
  /** Window the hub grants new streams, from its HELLO. */
  hubStreamWindow: number;
  backoff: Backoff;
  retry: NodeJS.Timeout | null;
  hubCursor: number;
  /** Dials to the current hub that failed in a row. */
  failedDials: number;
  /** The hub (HELLO id) this slot was last connected to, while it still dials that hub. */
  lastHubId: string | null;
  /** Why the hub refused this slot's last dial, until a dial succeeds. */
  refusal: TunnelRefusal | null;
}

/**
 * K tunnels to the hub(s), each kept up with reconnects under exponential
 * backoff and jitter. Devices are placed by a hash of their client ID so a
 * device lands on the same tunnel while the pool is whole.
 */
export class TunnelPool extends EventEmitter<TunnelPoolEvents> {
  private readonly slots: Slot[];
  private stopped = false;
  /** TLS connections opened so far; each is one WAN connection. */
  connectionsOpened = 0;
  private readonly closedTraffic: TunnelTraffic = emptyTraffic();
  /** Tunnels hubs refused with GOODBYE, by its code. */
  readonly refusalCounts = new Map<string, number>();
  /** Identifies this process to the hub, so it can tell a reconnect from a restart. */
  readonly instance = randomUUID();

  constructor(private readonly options: TunnelPoolOptions) {
    super();
    this.slots = Array.from({ length: options.tunnels }, (_, index) => ({
      index,
      tunnel: null,
      ready: false,
      hubStreamWindow: options.streamWindow,
      backoff: new Backoff({ initialMs: options.backoffInitialMs, maxMs: options.backoffMaxMs }),
      retry: null,
      // Every tunnel starts on the first hub: streams resume only on the hub that holds their sessions.
      hubCursor: 0,
      failedDials: 0,
      lastHubId: null,
      refusal: null,
    }));
  }

  start(): void {
    for (const slot of this.slots) this.dial(slot);
  }

  /** Resolves once at least `count` tunnels are ready. */
  async waitForTunnels(count = 1, timeoutMs = 10_000): Promise<void> {
    if (this.readyCount >= count) return;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('up', onUp);
        reject(new Error(`only ${this.readyCount} of ${count} tunnels came up within ${timeoutMs} ms`));
      }, timeoutMs);
      const onUp = (): void => {
        if (this.readyCount < count) return;
        clearTimeout(timer);
        this.off('up', onUp);
        resolve();
      };
      this.on('up', onUp);
    });
  }

  /** Tunnels currently up, in slot order. */
  liveTunnels(): Tunnel[] {
    return this.slots.filter((slot) => slot.ready && slot.tunnel !== null).map((slot) => slot.tunnel!);
  }

  get size(): number {
    return this.slots.length;
  }

  get readyCount(): number {
    return this.slots.filter((slot) => slot.ready).length;
  }

  /**
   * The ready tunnel for this client ID, or null when none is up. With
   * `hubId`, a tunnel to that hub is preferred: only it can resume the stream.
   */
  pick(clientId: string, hubId?: string, onlyThatHub = false): { tunnel: Tunnel; hubStreamWindow: number } | null {
    const start = hashClientId(clientId) % this.slots.length;
    let fallback: Slot | null = null;
    for (let i = 0; i < this.slots.length; i++) {
      const slot = this.slots[(start + i) % this.slots.length];
      if (!slot.ready || slot.tunnel === null) continue;
      if (hubId === undefined || slot.tunnel.peerId === hubId) return { tunnel: slot.tunnel, hubStreamWindow: slot.hubStreamWindow };
      fallback ??= slot;
    }
    if (fallback === null || onlyThatHub) return null;
    return { tunnel: fallback.tunnel!, hubStreamWindow: fallback.hubStreamWindow };
  }

  /** True while some slot is up to, or still redialling, the hub with this HELLO id. */
  mayReach(hubId: string): boolean {
    return this.slots.some((slot) => slot.lastHubId === hubId);
  }

  /** Frames and bytes over every tunnel this pool has had, including closed ones. */
  trafficTotals(): TunnelTraffic {
    const totals = { ...this.closedTraffic };
    for (const slot of this.slots) if (slot.tunnel !== null) addTraffic(totals, slot.tunnel.traffic);
    return totals;
  }

  /** Refusals standing on slots whose last dial the hub refused. */
  refusals(): TunnelRefusal[] {
    return this.slots.flatMap((slot) => (slot.refusal === null ? [] : [slot.refusal]));
  }

  /**
   * Stops dialling and says goodbye on every ready tunnel, behind whatever
   * was written to it before (the CLOSEs of the devices just closed).
   * Resolves once every tunnel socket has closed.
   */
  async stop(reason = 'agent shutting down'): Promise<void> {
    this.stopped = true;
    const closing: Promise<void>[] = [];
    for (const slot of this.slots) {
      if (slot.retry !== null) clearTimeout(slot.retry);
      const tunnel = slot.tunnel;
      if (tunnel === null) continue;
      if (slot.ready) closing.push(tunnel.goodbye('shutdown', reason));
      else {
        tunnel.close(reason);
        closing.push(tunnel.socketClosed);
      }
    }
    await Promise.all(closing);
  }

  private onGoodbye(slot: Slot, hub: string, body: GoodbyeBody, log: Logger): void {
    if (slot.ready) {
      log.warn({ hubId: slot.tunnel?.peerId, code: body.code, reason: body.reason }, 'hub said goodbye');
      return;
    }
    slot.refusal = { tunnel: slot.index, hub, code: body.code, reason: body.reason, at: Date.now() };
    this.refusalCounts.set(body.code, (this.refusalCounts.get(body.code) ?? 0) + 1);
    log.warn({ code: body.code, reason: body.reason }, 'hub refused the tunnel');
  }

  private dial(slot: Slot): void {
    if (this.stopped) return;
    const hub = this.options.hubs[slot.hubCursor];
    const log = this.options.log.child({ tunnel: slot.index, hub: `${hub.host}:${hub.port}` });
    const socket = tls.connect({
      host: hub.host,
      port: hub.port,
      ca: this.options.tls.ca,
      cert: this.options.tls.cert,
      key: this.options.tls.key,
      servername: this.options.serverName ?? (isIpAddress(hub.host) ? undefined : hub.host),
      minVersion: 'TLSv1.3',
    });
    this.connectionsOpened++;
    socket.setNoDelay(true);
    const tunnel = new Tunnel(socket, {
      maxFramePayload: this.options.maxFramePayload,
      heartbeatMs: this.options.heartbeatMs,
      deadAfterMs: this.options.deadAfterMs,
      highWaterBytes: TUNNEL_DEFAULTS.highWaterBytes,
      log,
    });
    slot.tunnel = tunnel;
    const helloTimer = setTimeout(() => tunnel.close('no HELLO from hub in time'), TUNNEL_DEFAULTS.helloTimeoutMs);
    tunnel.on('goodbye', (body) => this.onGoodbye(slot, `${hub.host}:${hub.port}`, body, log));
    socket.once('secureConnect', () => {
      tunnel.send({
        type: FrameType.HELLO,
        streamId: 0,
        body: {
          version: PROTOCOL_VERSION,
          role: 'agent',
          id: this.options.agentId,
          heartbeatMs: this.options.heartbeatMs,
          streamWindow: this.options.streamWindow,
          maxFramePayload: this.options.maxFramePayload,
          instance: this.instance,
          worker: this.options.worker,
        },
      });
    });
    tunnel.on('control', (frame) => {
      if (frame.type === FrameType.HELLO) {
        clearTimeout(helloTimer);
        if (frame.body.version !== PROTOCOL_VERSION || frame.body.role !== 'hub') {
          tunnel.close(`hub speaks protocol version ${frame.body.version} as ${frame.body.role}`);
          return;
        }
        tunnel.peerMaxFramePayload = frame.body.maxFramePayload;
        tunnel.peerId = frame.body.id;
        slot.lastHubId = frame.body.id;
        slot.ready = true;
        slot.refusal = null;
        slot.hubStreamWindow = Math.min(frame.body.streamWindow, MAX_STREAM_WINDOW);
        slot.backoff.reset();
        log.info({ hubId: frame.body.id }, 'tunnel up');
        this.emit('up', tunnel, slot.index);
        return;
      }
      this.emit('control', tunnel, frame);
    });
    tunnel.on('closed', (reason) => {
      clearTimeout(helloTimer);
      addTraffic(this.closedTraffic, tunnel.traffic);
      const wasReady = slot.ready;
      slot.ready = false;
      slot.tunnel = null;
      if (this.stopped) {
        log.info({ reason }, 'tunnel closed');
        if (wasReady) this.emit('down', tunnel, slot.index, reason);
        return;
      }
      if (wasReady) {
        log.warn({ reason }, 'tunnel down');
        this.emit('down', tunnel, slot.index, reason);
      } else {
        log.warn({ reason }, 'tunnel failed to come up');
      }
      // A tunnel that was up is redialled on the same hub, where its streams
      // can resume; a hub that keeps refusing gives way to the next one.
      slot.failedDials = wasReady ? 0 : slot.failedDials + 1;
      // A hub that said goodbye holds none of our streams any more: nothing keeps the slot on it.
      if (wasReady && tunnel.peerGoodbye !== null) slot.failedDials = DIALS_BEFORE_NEXT_HUB;
      if (slot.failedDials >= DIALS_BEFORE_NEXT_HUB) {
        slot.failedDials = 0;
        slot.lastHubId = null;
        // Streams waiting for the hub this slot gave up on may now go elsewhere.
        this.emit('gave-up', slot.index);
        slot.hubCursor = (slot.hubCursor + 1) % this.options.hubs.length;
      }
      const delay = slot.backoff.nextDelayMs();
      slot.retry = setTimeout(() => {
        slot.retry = null;
        this.dial(slot);
      }, delay);
    });
  }
}

/** FNV-1a: cheap, stable across processes and platforms. */
export function hashClientId(clientId: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < clientId.length; i++) {
    hash ^= clientId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

function isIpAddress(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}
