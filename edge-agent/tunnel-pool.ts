import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { type DialFailure, ReconnectPolicy } from '../shared/backoff.js';
import { type Clock, systemClock } from '../shared/clock.js';
import { type EndCode, EndCounts } from '../shared/end-reasons.js';
import { type ControlFrame, FrameType, type GoodbyeBody } from '../shared/frame-codec.js';
import { applyHello, buildHello, checkHello, refuseHello } from '../shared/hello.js';
import type { Logger } from '../shared/logger.js';
import { certificateProblemOf, describeCertificateProblem } from '../shared/tls-failure.js';
import { addTraffic, emptyTraffic, Tunnel, type TunnelTraffic } from '../shared/tunnel.js';
import { TUNNEL_DEFAULTS } from '../shared/tunnel-defaults.js';
import type { HttpProxy } from '../shared/http-proxy.js';
import { DEFAULT_WS_PATH } from '../shared/transports/tunnel-port.js';
import { DialError, type HubAddress, TRANSPORT_ORDER, TunnelDialer, type TunnelTransport } from './tunnel-dialer.js';

export type { HubAddress } from './tunnel-dialer.js';

/** The agent's replay memory per stream stays bounded whatever window the hub grants. */
const MAX_STREAM_WINDOW = 16 * 1024 * 1024;
const DIALS_BEFORE_NEXT_HUB = 2;
/** Probes of one slot in flight at once while SYNs go unanswered: a bound on sockets, not on how often we look. */
const MAX_PROBES_IN_FLIGHT = 16;
/** Probes every 75–225 ms: a returning link carries a tunnel again within about 0.25 s plus the handshake. */
export const DEFAULT_RECONNECT_PROBE_MS = 150;
/**
 * How often a tunnel on a fallback transport checks whether a preferred one
 * works again: rare enough that a site where it never does sees one failed
 * handshake per tunnel every few minutes, soon enough that a firewall fixed
 * in the morning is used before lunch.
 */
export const DEFAULT_PREFERRED_RETRY_MS = 5 * 60_000;

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
  /** Mean interval between TCP probes while a hub is unreachable. */
  probeMs?: number;
  /** Transports to try, in order of preference (TRANSPORT_ORDER when absent); `proxy` is skipped without a proxy. */
  transports?: readonly TunnelTransport[];
  /** Path of WebSocket tunnels on the hub's tunnel port (DEFAULT_WS_PATH when absent). */
  webSocketPath?: string;
  /** The site's HTTP CONNECT proxy, for the `proxy` transport. */
  proxy?: HttpProxy | null;
  /** NO_PROXY rules: hubs they match are not dialled through the proxy. */
  noProxy?: string;
  /** How often a tunnel on a fallback transport checks the preferred ones (DEFAULT_PREFERRED_RETRY_MS when absent). */
  preferredRetryMs?: number;
  /** Jitter source for reconnect delays, in [0, 1); injected by tests. */
  random?: () => number;
  /** Tunnel heartbeats and dead-peer checks run on it; the system clock when absent. */
  clock?: Clock;
  log: Logger;
}

/** A hub's refusal of a tunnel, in place of its HELLO: kept for health and metrics until a tunnel of that slot comes up. */
export interface TunnelRefusal {
  tunnel: number;
  hub: string;
  code: string;
  reason: string;
  /** With `certificate-refused`: which check the agent's certificate failed. */
  problem?: string;
  at: number;
}

export interface TunnelPoolEvents {
  up: [tunnel: Tunnel, slot: number];
  down: [tunnel: Tunnel, slot: number, reason: EndCode];
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
  reconnect: ReconnectPolicy;
  /** The next dial or probe. */
  retry: NodeJS.Timeout | null;
  /** TCP connects under way to the slot's hub; the first to connect carries the tunnel. */
  probes: Set<net.Socket>;
  /** The hub has been unreachable since the last connect: further failed probes are not logged. */
  unreachable: boolean;
  hubCursor: number;
  /** Dials to the current hub that failed in a row. */
  failedDials: number;
  /** The hub (HELLO id) this slot was last connected to, while it still dials that hub. */
  lastHubId: string | null;
  /** Why the hub refused this slot's last dial, until a dial succeeds. */
  refusal: TunnelRefusal | null;
  /** The transport the next dial uses, and that of the tunnel while it is up. */
  transport: TunnelTransport;
  /** Transports that failed in a row on the current hub: once all did, it counts as one failed dial of the hub. */
  transportsFailed: number;
  /** The next check of the preferred transports while the tunnel runs on a fallback one. */
  preferredCheck: NodeJS.Timeout | null;
  /** The connection such a check has open. */
  checking: net.Socket | null;
  /** The connection in its TLS (and upgrade) handshake, before it carries a tunnel. */
  handshaking: net.Socket | null;
}

/**
 * K tunnels to the hub(s), each kept up with reconnects under exponential
 * backoff and jitter. Devices are placed by a hash of their client ID so a
 * device lands on the same tunnel while the pool is whole.
 */
export class TunnelPool extends EventEmitter<TunnelPoolEvents> {
  private readonly slots: Slot[];
  private stopped = false;
  /** The last reason a tunnel went down or a hub could not be reached, for the readiness check. */
  lastFailure: string | null = null;
  /** TLS connections opened so far; each is one WAN connection. */
  connectionsOpened = 0;
  private readonly closedTraffic: TunnelTraffic = emptyTraffic();
  /** Tunnels hubs refused with GOODBYE, by its code. */
  readonly refusalCounts = new Map<string, number>();
  /** Tunnels closed, by why. */
  readonly tunnelEnds = new EndCounts();
  /** Identifies this process to the hub, so it can tell a reconnect from a restart. */
  readonly instance = randomUUID();
  /** The transport that last carried a tunnel to each hub (host:port): dials start there. */
  readonly workingTransports = new Map<string, TunnelTransport>();
  private readonly dialer: TunnelDialer;

  constructor(private options: TunnelPoolOptions) {
    super();
    this.slots = Array.from({ length: options.tunnels }, (_, index) => ({
      index,
      tunnel: null,
      ready: false,
      hubStreamWindow: options.streamWindow,
      reconnect: new ReconnectPolicy({
        initialMs: options.backoffInitialMs,
        maxMs: options.backoffMaxMs,
        probeMs: options.probeMs ?? DEFAULT_RECONNECT_PROBE_MS,
        random: options.random,
      }),
      retry: null,
      probes: new Set(),
      unreachable: false,
      // Every tunnel starts on the first hub: streams resume only on the hub that holds their sessions.
      hubCursor: 0,
      failedDials: 0,
      lastHubId: null,
      refusal: null,
      transport: 'tls',
      transportsFailed: 0,
      preferredCheck: null,
      checking: null,
      handshaking: null,
    }));
    this.dialer = new TunnelDialer({
      tls: options.tls,
      serverName: options.serverName,
      webSocketPath: options.webSocketPath ?? DEFAULT_WS_PATH,
      maxFramePayload: options.maxFramePayload,
      proxy: options.proxy ?? null,
      noProxy: options.noProxy,
      handshakeTimeoutMs: TUNNEL_DEFAULTS.helloTimeoutMs,
    });
    for (const slot of this.slots) slot.transport = this.firstTransport(options.hubs[0]);
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

  /** Certificate, key, hub CA and server name for tunnels dialled from now on; tunnels up keep theirs. */
  useTls(material: TunnelPoolOptions['tls'], serverName: string | undefined): void {
    this.options = { ...this.options, tls: material, serverName };
    this.dialer.useTls(material, serverName);
  }

  /** Ready tunnels by the transport carrying them. */
  tunnelsByTransport(): Record<TunnelTransport, number> {
    const counts: Record<TunnelTransport, number> = { tls: 0, websocket: 0, proxy: 0 };
    for (const slot of this.slots) if (slot.ready) counts[slot.transport]++;
    return counts;
  }

  /** The transport of each slot's tunnel, null for a slot without one up. */
  slotTransports(): (TunnelTransport | null)[] {
    return this.slots.map((slot) => (slot.ready ? slot.transport : null));
  }

  get hubs(): readonly HubAddress[] {
    return this.options.hubs;
  }

  /**
   * Hubs for dials from now on. Tunnels up stay where they are, since their
   * streams' sessions live on that hub; a slot keeps dialling its hub while it
   * is still listed and starts over at the first hub otherwise.
   */
  useHubs(hubs: HubAddress[]): void {
    const old = this.options.hubs;
    this.options = { ...this.options, hubs };
    for (const slot of this.slots) {
      const current = old[slot.hubCursor];
      const cursor = Math.max(0, hubs.findIndex((hub) => hub.host === current.host && hub.port === current.port));
      if (slot.tunnel === null && (hubs[cursor].host !== current.host || hubs[cursor].port !== current.port)) this.moveToHub(slot, cursor);
      else slot.hubCursor = cursor;
    }
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
      this.dropProbes(slot);
      this.stopPreferredCheck(slot);
      slot.handshaking?.destroy();
      const tunnel = slot.tunnel;
      if (tunnel === null) continue;
      if (slot.ready) closing.push(tunnel.goodbye('shutdown', reason));
      else {
        tunnel.close('shutdown', reason);
        closing.push(tunnel.socketClosed);
      }
    }
    await Promise.all(closing);
  }

  /**
   * On a ready tunnel GOODBYE ends it whatever the code (the agent closes that
   * hub's devices, protocol 10.1); in place of HELLO it is a refusal whatever
   * the code, kept for health and metrics.
   */
  private onGoodbye(slot: Slot, hub: string, body: GoodbyeBody, log: Logger): void {
    const fields = { code: body.code, reason: body.reason, ...(body.problem !== undefined ? { problem: body.problem } : {}) };
    if (slot.ready) {
      // Unlike a hub's shutdown, a revocation does not pass by waiting: it is an error an operator must act on.
      if (body.code === 'revoked') log.error({ hubId: slot.tunnel?.peerId, ...fields, hint: 'this agent needs a new enrollment token' }, 'hub closed the tunnel');
      else log.warn({ hubId: slot.tunnel?.peerId, ...fields }, 'hub closed the tunnel');
      return;
    }
    slot.refusal = { tunnel: slot.index, hub, ...fields, at: Date.now() };
    this.refusalCounts.set(body.code, (this.refusalCounts.get(body.code) ?? 0) + 1);
    log.error(fields, 'hub refused the tunnel');
  }

  /**
   * Looks for the slot's hub with TCP probes: one now and one per probe
   * interval after it until one connects, so a connect stuck on a silent
   * link does not hold up the next look, and the tunnel is back within about
   * one interval of the link.
   */
  private dial(slot: Slot): void {
    slot.retry = null;
    if (this.stopped || slot.tunnel !== null) return;
    if (slot.probes.size < MAX_PROBES_IN_FLIGHT) this.probe(slot, this.options.hubs[slot.hubCursor], slot.transport);
    if (slot.tunnel === null && slot.retry === null && !this.stopped) {
      slot.retry = setTimeout(() => this.dial(slot), slot.reconnect.delayMs('unreachable'));
    }
  }

  private probe(slot: Slot, hub: HubAddress, transport: TunnelTransport): void {
    const { socket, connected } = this.dialer.connect(hub, transport);
    slot.probes.add(socket);
    connected.then(
      () => {
        if (!slot.probes.delete(socket)) return;
        if (slot.retry !== null) clearTimeout(slot.retry);
        slot.retry = null;
        this.dropProbes(slot);
        if (slot.unreachable) this.options.log.info({ tunnel: slot.index, hub: `${hub.host}:${hub.port}`, transport }, 'hub reachable again');
        slot.unreachable = false;
        // Probes overlap, and failures of earlier ones may have moved the slot on meanwhile:
        // the transport of the connection that got through is the one the slot is on.
        slot.transport = transport;
        this.handshake(slot, hub, transport, socket);
      },
      (err: DialError) => {
        if (!slot.probes.delete(socket)) return;
        if (err.failure === 'unreachable') {
          this.onUnreachable(slot, hub, err.message);
          return;
        }
        // The way there answered and said no (a proxy refusing us): no use probing it again at once.
        if (slot.retry !== null) clearTimeout(slot.retry);
        slot.retry = null;
        this.dropProbes(slot);
        this.options.log.warn({ tunnel: slot.index, hub: `${hub.host}:${hub.port}`, transport, reason: err.message }, 'tunnel failed to come up');
        this.onDialFailed(slot, 'refused');
      },
    );
  }

  private dropProbes(slot: Slot): void {
    for (const probe of slot.probes) {
      probe.removeAllListeners();
      probe.on('error', () => {});
      probe.destroy();
    }
    slot.probes.clear();
  }

  private onUnreachable(slot: Slot, hub: HubAddress, reason: string): void {
    if (this.stopped) return;
    this.lastFailure = `hub ${hub.host}:${hub.port} unreachable: ${reason}`;
    if (!slot.unreachable) {
      slot.unreachable = true;
      this.options.log.warn({ tunnel: slot.index, hub: `${hub.host}:${hub.port}`, transport: slot.transport, reason }, 'hub unreachable, probing');
    }
    this.nextTransport(slot);
  }

  /** A dial that reached something and failed before HELLO: the next transport, after a backoff. */
  private onDialFailed(slot: Slot, failure: DialFailure): void {
    if (this.stopped) return;
    this.nextTransport(slot);
    slot.retry = setTimeout(() => this.dial(slot), slot.reconnect.delayMs(failure));
  }

  /** Mutual TLS (and the WebSocket upgrade) over a connection a probe opened, then HELLO. */
  private handshake(slot: Slot, hub: HubAddress, transport: TunnelTransport, tcp: net.Socket): void {
    this.connectionsOpened++;
    slot.handshaking = tcp;
    this.dialer.secure(tcp, hub, transport).then(
      (socket) => {
        slot.handshaking = null;
        if (this.stopped || slot.tunnel !== null) {
          socket.destroy();
          return;
        }
        this.runTunnel(slot, hub, transport, socket);
      },
      (err: DialError) => {
        slot.handshaking = null;
        if (this.stopped) return;
        const fields = { tunnel: slot.index, hub: `${hub.host}:${hub.port}`, transport };
        // Which check failed: the bare transport error would say only "socket hang up".
        const problem = certificateProblemOf(err.code);
        if (problem !== null) this.options.log.warn({ ...fields, problem, reason: `${describeCertificateProblem(problem)}: ${err.message}` }, 'hub certificate refused');
        else this.options.log.warn({ ...fields, reason: err.message }, 'tunnel failed to come up');
        this.lastFailure = `tunnel to ${hub.host}:${hub.port} failed to come up (${transport}): ${err.message}`;
        this.onDialFailed(slot, err.failure);
      },
    );
  }

  /** HELLO and the life of a tunnel on an authenticated connection. */
  private runTunnel(slot: Slot, hub: HubAddress, transport: TunnelTransport, socket: Duplex): void {
    const log = this.options.log.child({ tunnel: slot.index, hub: `${hub.host}:${hub.port}`, transport });
    const tunnel = new Tunnel(socket, {
      maxFramePayload: this.options.maxFramePayload,
      heartbeatMs: this.options.heartbeatMs,
      deadAfterMs: this.options.deadAfterMs,
      highWaterBytes: TUNNEL_DEFAULTS.highWaterBytes,
      clock: this.options.clock,
      log,
    });
    slot.tunnel = tunnel;
    const helloTimer = (this.options.clock ?? systemClock).setTimeout(() => tunnel.close('hello-timeout', 'no HELLO from hub in time'), TUNNEL_DEFAULTS.helloTimeoutMs);
    tunnel.on('goodbye', (body) => this.onGoodbye(slot, `${hub.host}:${hub.port}`, body, log));
    tunnel.send(
      buildHello({
        role: 'agent',
        id: this.options.agentId,
        heartbeatMs: this.options.heartbeatMs,
        streamWindow: this.options.streamWindow,
        maxFramePayload: this.options.maxFramePayload,
        instance: this.instance,
        worker: this.options.worker,
      }),
    );
    tunnel.on('control', (frame) => {
      if (frame.type === FrameType.HELLO) {
        helloTimer.cancel();
        const check = checkHello(frame.body, 'hub');
        if (!check.accepted) {
          log.warn({ hubId: frame.body.id, version: frame.body.version, role: frame.body.role, reason: check.code, detail: check.reason }, 'tunnel refused: the hub HELLO does not fit');
          refuseHello(tunnel, check);
          return;
        }
        applyHello(tunnel, frame.body, check.capabilities);
        slot.lastHubId = frame.body.id;
        slot.ready = true;
        slot.refusal = null;
        slot.hubStreamWindow = Math.min(frame.body.streamWindow, MAX_STREAM_WINDOW);
        slot.reconnect.reset();
        slot.transportsFailed = 0;
        this.workingTransports.set(hubKey(hub), transport);
        log.info({ hubId: frame.body.id }, 'tunnel up');
        this.schedulePreferredCheck(slot, hub);
        this.emit('up', tunnel, slot.index);
        return;
      }
      this.emit('control', tunnel, frame);
    });
    tunnel.on('closed', (reason, detail) => {
      helloTimer.cancel();
      addTraffic(this.closedTraffic, tunnel.traffic);
      this.tunnelEnds.add(reason);
      const wasReady = slot.ready;
      slot.ready = false;
      slot.tunnel = null;
      this.lastFailure = `tunnel to ${hub.host}:${hub.port} ${wasReady ? 'down' : 'failed to come up'}: ${detail}`;
      this.stopPreferredCheck(slot);
      if (this.stopped) {
        log.info({ reason, detail }, 'tunnel closed');
        if (wasReady) this.emit('down', tunnel, slot.index, reason);
        return;
      }
      if (wasReady) {
        log.warn({ reason, detail }, 'tunnel down');
        this.emit('down', tunnel, slot.index, reason);
      } else {
        log.warn({ reason, detail }, 'tunnel failed to come up');
      }
      // A tunnel that was up is redialled on the same hub and transport, where its streams can resume.
      if (wasReady) slot.failedDials = 0;
      else if (tunnel.peerGoodbye !== null) this.countFailedDial(slot);
      else this.nextTransport(slot);
      // A hub that said goodbye holds none of our streams any more: nothing keeps the slot on it.
      if (wasReady && tunnel.peerGoodbye !== null) {
        slot.failedDials = DIALS_BEFORE_NEXT_HUB - 1;
        this.countFailedDial(slot);
      }
      // The hub answered TCP, so it is up: whether it dropped us or refused, back off.
      slot.retry = setTimeout(() => this.dial(slot), slot.reconnect.delayMs('refused'));
    });
  }

  /**
   * After a failed dial the slot tries the hub's next transport; once every
   * transport failed in a row, that counts as one failed dial of the hub.
   */
  private nextTransport(slot: Slot): void {
    const ladder = this.ladder(this.options.hubs[slot.hubCursor]);
    slot.transportsFailed++;
    slot.transport = ladder[(ladder.indexOf(slot.transport) + 1) % ladder.length];
    if (slot.transportsFailed < ladder.length) return;
    slot.transportsFailed = 0;
    this.countFailedDial(slot);
  }

  private ladder(hub: HubAddress): TunnelTransport[] {
    const ladder = this.dialer.transportsFor(hub, this.options.transports ?? TRANSPORT_ORDER);
    // Without a proxy, a configuration of proxy alone still has to dial somehow.
    return ladder.length > 0 ? ladder : ['tls'];
  }

  /** Where dials of a hub start: the transport that last carried a tunnel there, else the most preferred. */
  private firstTransport(hub: HubAddress): TunnelTransport {
    const ladder = this.ladder(hub);
    const working = this.workingTransports.get(hubKey(hub));
    return working !== undefined && ladder.includes(working) ? working : ladder[0];
  }

  private moveToHub(slot: Slot, cursor: number): void {
    slot.hubCursor = cursor;
    slot.transport = this.firstTransport(this.options.hubs[cursor]);
    slot.transportsFailed = 0;
  }

  /**
   * A tunnel on a fallback transport looks, now and then, whether one the
   * configuration prefers works again (a firewall opened, a proxy no longer
   * needed). It only proves the way (connection, mutual TLS, upgrade) and
   * closes it; when it works, the tunnel is closed and redialled on it, and
   * its streams resume as after any tunnel loss.
   */
  private schedulePreferredCheck(slot: Slot, hub: HubAddress): void {
    this.stopPreferredCheck(slot);
    const ladder = this.ladder(hub);
    const preferred = ladder.slice(0, ladder.indexOf(slot.transport));
    if (preferred.length === 0) return;
    const every = this.options.preferredRetryMs ?? DEFAULT_PREFERRED_RETRY_MS;
    slot.preferredCheck = setTimeout(() => void this.checkPreferred(slot, hub, preferred), every);
    slot.preferredCheck.unref();
  }

  private async checkPreferred(slot: Slot, hub: HubAddress, preferred: TunnelTransport[]): Promise<void> {
    slot.preferredCheck = null;
    const tunnel = slot.tunnel;
    for (const transport of preferred) {
      const works = await this.tryTransport(slot, hub, transport);
      if (this.stopped || slot.tunnel !== tunnel || tunnel === null || !slot.ready) return;
      if (!works) continue;
      this.options.log.info({ tunnel: slot.index, hub: `${hub.host}:${hub.port}`, from: slot.transport, to: transport }, 'preferred transport works again; moving the tunnel to it');
      this.workingTransports.set(hubKey(hub), transport);
      slot.transport = transport;
      tunnel.close('transport-preferred', `moving to the preferred transport ${transport}`);
      return;
    }
    this.schedulePreferredCheck(slot, hub);
  }

  /** Whether a connection over `transport` gets through mutual TLS and the upgrade; it is closed before HELLO. */
  private async tryTransport(slot: Slot, hub: HubAddress, transport: TunnelTransport): Promise<boolean> {
    const { socket, connected } = this.dialer.connect(hub, transport);
    slot.checking = socket;
    try {
      await connected;
      const stream = await this.dialer.secure(socket, hub, transport);
      stream.destroy();
      return true;
    } catch (err) {
      this.options.log.debug({ tunnel: slot.index, transport, reason: (err as Error).message }, 'preferred transport still fails');
      return false;
    } finally {
      if (slot.checking === socket) slot.checking = null;
      socket.destroy();
    }
  }

  private stopPreferredCheck(slot: Slot): void {
    if (slot.preferredCheck !== null) clearTimeout(slot.preferredCheck);
    slot.preferredCheck = null;
    slot.checking?.destroy();
    slot.checking = null;
  }

  /** A hub that keeps failing, refused or out of reach, gives way to the next one. */
  private countFailedDial(slot: Slot): void {
    slot.failedDials++;
    if (slot.failedDials < DIALS_BEFORE_NEXT_HUB) return;
    slot.failedDials = 0;
    // Streams waiting for the hub this slot gave up on may now go elsewhere. Only
    // the first give-up frees them: probes fail several times a second in an
    // outage, and each 'gave-up' walks every detached stream.
    if (slot.lastHubId !== null) {
      slot.lastHubId = null;
      this.emit('gave-up', slot.index);
    }
    this.moveToHub(slot, (slot.hubCursor + 1) % this.options.hubs.length);
  }
}

function hubKey(hub: HubAddress): string {
  return `${hub.host}:${hub.port}`;
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
