import type { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import mqttPacket from 'mqtt-packet';
import { afterEach, describe, expect, it } from 'vitest';
import type { BrokerLink, BrokerLinkOwner } from '../../cloud-hub/broker-link.js';
import type { SessionEntry } from '../../cloud-hub/device-session.js';
import { HubCounters } from '../../cloud-hub/hub-counters.js';
import { type AgentStreams, SessionStreams } from '../../cloud-hub/session-streams.js';
import { DeviceConnection, type DeviceHost } from '../../edge-agent/device-connection.js';
import { DeviceStreams } from '../../edge-agent/device-streams.js';
import { type ControlFrame, decodeFrames, encodeFrame, type Frame, FrameType } from '../../shared/frame-codec.js';
import { RateLimitedLog } from '../../shared/log-rate-limit.js';
import { quietLogger } from '../../shared/logger.js';
import { parseConnect } from '../../shared/mqtt-connect.js';
import { SocketBatcher } from '../../shared/socket-batcher.js';
import { StreamTable } from '../../shared/stream-table.js';
import { Tunnel } from '../../shared/tunnel.js';
import { ManualClock } from '../support/manual-clock.js';

const log = quietLogger('test');
const GRACE_MS = 60_000;
const CONNECT_TIMEOUT_MS = 10_000;
const WINDOW = 65_536;
const MAX_PAYLOAD = 1 << 20;
const flushed = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
const open: Tunnel[] = [];

afterEach(() => {
  for (const tunnel of open.splice(0)) tunnel.close('shutdown');
});

/** A tunnel over an in-memory socket: the frames it writes are read back, the peer's are fed in. */
class WireTunnel {
  private readonly written: Buffer[] = [];
  readonly socket = new Duplex({ read() {}, write: (chunk: Buffer, _encoding, done) => (this.written.push(chunk), done()) });
  readonly tunnel: Tunnel;

  constructor(clock: ManualClock, options: { heartbeatMs?: number; deadAfterMs?: number } = {}) {
    this.tunnel = new Tunnel(this.socket, {
      maxFramePayload: MAX_PAYLOAD,
      heartbeatMs: options.heartbeatMs ?? 3_600_000,
      deadAfterMs: options.deadAfterMs ?? 7_200_000,
      highWaterBytes: 1 << 20,
      clock,
      log,
    });
    this.tunnel.peerId = 'hub-1';
    open.push(this.tunnel);
  }

  async frames(): Promise<Frame[]> {
    await flushed();
    return decodeFrames(Buffer.concat(this.written), MAX_PAYLOAD);
  }

  async controls(type: number): Promise<ControlFrame[]> {
    return (await this.frames()).filter((frame): frame is ControlFrame => frame.type === type);
  }

  feed(frame: Frame): void {
    this.socket.emit('data', encodeFrame(frame));
  }
}

/** The device's end of its connection: what the agent writes to it is kept, and whether the agent dropped it. */
function deviceSocket(): { socket: Socket; destroyed: () => boolean } {
  const duplex = new Duplex({ read() {}, write: (_chunk, _encoding, done) => done() });
  // The device connection uses only the stream side of its socket.
  return { socket: duplex as unknown as Socket, destroyed: () => duplex.destroyed };
}

function connectBytes(clientId: string, keepalive: number): Buffer {
  return mqttPacket.generate({ cmd: 'connect', clientId, keepalive, clean: true, protocolId: 'MQTT', protocolVersion: 4 });
}

/** The agent's stream rules over in-memory tunnels: placement takes the first open one. */
function agentSide(clock: ManualClock, tunnels: WireTunnel[]) {
  const streams = new DeviceStreams({
    placement: {
      pick: () => {
        const up = tunnels.find((wire) => wire.tunnel.isOpen);
        return up === undefined ? null : { tunnel: up.tunnel, hubStreamWindow: WINDOW };
      },
      mayReach: () => true,
    },
    streamWindow: WINDOW,
    maxPacketSize: MAX_PAYLOAD,
    resumeGraceMs: GRACE_MS,
    clock,
    log,
  });
  for (const wire of tunnels) streams.tunnelUp(wire.tunnel);
  const host: DeviceHost = {
    log,
    batcher: new SocketBatcher(),
    maxPacketSize: MAX_PAYLOAD,
    assignedIdPrefix: 'emx-test-',
    clock,
    connectLimits: { maxClientIdLength: 256 },
    connectRate: null,
    deviceLog: {
      refused: new RateLimitedLog(log, { msg: 'device refused', plural: 'device refusals', perSecond: 100, burst: 100, now: () => clock.now() }),
      closed: new RateLimitedLog(log, { msg: 'closing device', plural: 'device closes', perSecond: 100, burst: 100, now: () => clock.now() }),
    },
    traffic: { messagesToHub: 0, bytesToHub: 0, messagesToDevice: 0, bytesToDevice: 0 },
    openStream: (device, connect) => streams.open(device, connect),
    closeStream: (stream, close) => streams.deviceEnded(stream, close),
    deviceClosed: () => {},
  };
  const device = (clientId: string | null, keepalive = 0) => {
    const { socket, destroyed } = deviceSocket();
    const connection = new DeviceConnection(socket, host);
    if (clientId !== null) socket.emit('data', connectBytes(clientId, keepalive));
    return { connection, socket, destroyed };
  };
  /** What the agent's one-second sweep does. */
  const sweep = (connection?: DeviceConnection): void => {
    connection?.checkTimers(clock.now(), CONNECT_TIMEOUT_MS);
    streams.sweep(clock.now());
  };
  /** What the tunnel pool reports when a tunnel goes down. */
  const lose = (wire: WireTunnel): void => {
    wire.tunnel.close('heartbeat-timeout');
    streams.tunnelDown(wire.tunnel);
  };
  return { streams, device, sweep, lose };
}

class FakeLink implements BrokerLink {
  readonly pushed: (Buffer | null)[] = [];
  destroyed = false;
  readonly heldBytes = 0;

  constructor(readonly owner: BrokerLinkOwner) {}

  push(bytes: Buffer | null): boolean {
    this.pushed.push(bytes);
    return true;
  }

  destroy(): void {
    this.destroyed = true;
  }

  get pings(): number {
    return this.pushed.filter((bytes) => bytes !== null && bytes[0] === 0xc0).length;
  }
}

/** The hub's stream rules for one agent over in-memory tunnels, with brokers that read everything. */
function hubSide(clock: ManualClock) {
  const agent: AgentStreams = { agentId: 'agent-1', streams: new StreamTable<SessionEntry>('hub'), departed: false };
  const links: FakeLink[] = [];
  const sessions = new SessionStreams<AgentStreams>({
    streamWindow: WINDOW,
    maxPacketSize: MAX_PAYLOAD,
    maxQueuedBytes: 1 << 22,
    resumeGraceMs: GRACE_MS,
    connectTimeoutMs: CONNECT_TIMEOUT_MS,
    clock,
    counters: new HubCounters(),
    log,
    opened: () => {},
    admit: (session, _agent, _open, connect) =>
      session.connectBroker(parseConnect(connect), (owner) => {
        const link = new FakeLink(owner);
        links.push(link);
        return link;
      }),
    admitted: () => {},
    refused: () => {},
    resumeRefused: () => {},
    resumed: () => {},
    closed: () => {},
  });
  const openStream = (wire: WireTunnel, id: number, connect: Buffer | null): void => {
    agent.streams.serve(wire.tunnel);
    sessions.open(wire.tunnel, agent, id, { clientId: `dev-${id}`, window: WINDOW, keepalive: 0, protocolVersion: 4, cleanSession: true }, log);
    if (connect !== null) wire.feed({ type: FrameType.DATA, streamId: id, payload: connect });
  };
  const sweep = (): void => sessions.sweep(agent, clock.now());
  return { agent, sessions, links, openStream, sweep };
}

describe('dead-peer detection on the injected clock (docs/protocol.md 9)', () => {
  it('pings every heartbeat and closes a tunnel silent past deadAfterMs, within one heartbeat of it', async () => {
    const clock = new ManualClock();
    const wire = new WireTunnel(clock, { heartbeatMs: 1000, deadAfterMs: 3000 });
    clock.advance(3000);
    expect(wire.tunnel.isOpen).toBe(true);
    expect(await wire.controls(FrameType.PING)).toHaveLength(3);
    clock.advance(1000);
    expect(wire.tunnel.closedCode).toBe('heartbeat-timeout');
  });

  it('counts any byte from the peer as a sign of life', () => {
    const clock = new ManualClock();
    const wire = new WireTunnel(clock, { heartbeatMs: 1000, deadAfterMs: 3000 });
    clock.advance(2500);
    wire.feed({ type: FrameType.PONG, streamId: 0, body: { sentAt: 0 } });
    clock.advance(3000);
    expect(wire.tunnel.isOpen).toBe(true);
    clock.advance(1000);
    expect(wire.tunnel.closedCode).toBe('heartbeat-timeout');
  });
});

describe('the agent’s stream rules on the injected clock', () => {
  it('closes a device that sends no CONNECT within the connect timeout, and not before', () => {
    const clock = new ManualClock();
    const agent = agentSide(clock, [new WireTunnel(clock)]);
    const { connection, destroyed } = agent.device(null);
    clock.advance(CONNECT_TIMEOUT_MS);
    agent.sweep(connection);
    expect(destroyed()).toBe(false);
    clock.advance(1);
    agent.sweep(connection);
    expect(destroyed()).toBe(true);
  });

  it('closes a device silent for 1.5 × its keepalive (MQTT 3.1.1 §3.1.2.10), its stream with keepalive-expired', async () => {
    const clock = new ManualClock();
    const wire = new WireTunnel(clock);
    const agent = agentSide(clock, [wire]);
    const { connection, socket, destroyed } = agent.device('quiet-1', 10);
    clock.advance(9000);
    socket.emit('data', Buffer.from([0xc0, 0x00]));
    clock.advance(15_000);
    agent.sweep(connection);
    expect(destroyed()).toBe(false);
    clock.advance(1);
    agent.sweep(connection);
    expect(destroyed()).toBe(true);
    const [close] = await wire.controls(FrameType.CLOSE);
    expect(close.body).toMatchObject({ code: 'keepalive-expired', abrupt: true });
  });

  it('keeps not hearing a device it paused itself from counting as the device’s silence (8)', () => {
    const clock = new ManualClock();
    const wire = new WireTunnel(clock);
    const agent = agentSide(clock, [wire]);
    const { connection, socket, destroyed } = agent.device('busy-1', 2);
    // No ACK comes back: the window fills, then 64 KiB are held and the agent stops reading.
    const publish = mqttPacket.generate({ cmd: 'publish', topic: 'busy/x', payload: Buffer.alloc(4000), qos: 0, retain: false, dup: false });
    for (let i = 0; i < 40; i++) socket.emit('data', publish);
    expect(socket.isPaused()).toBe(true);
    for (let second = 0; second < 10; second++) {
      clock.advance(1000);
      agent.sweep(connection);
    }
    expect(destroyed()).toBe(false);
  });

  it('resumes on the next tunnel when the one carrying its RESUME dies, with the next attempt (11.5)', async () => {
    const clock = new ManualClock();
    const [a, b, c] = [new WireTunnel(clock), new WireTunnel(clock), new WireTunnel(clock)];
    const agent = agentSide(clock, [a, b, c]);
    agent.device('roamer-1');
    agent.lose(a);
    agent.lose(b);
    expect((await b.controls(FrameType.RESUME)).map((frame) => frame.body)).toMatchObject([{ clientId: 'roamer-1', attempt: 1 }]);
    expect((await c.controls(FrameType.RESUME)).map((frame) => frame.body)).toMatchObject([{ clientId: 'roamer-1', attempt: 2 }]);
    expect(agent.streams.detachedCount).toBe(1);
  });

  it('lets go after the grace period from the first detachment, a CLOSE behind the outstanding RESUME (11.10)', async () => {
    const clock = new ManualClock();
    const [a, b, c] = [new WireTunnel(clock), new WireTunnel(clock), new WireTunnel(clock)];
    const agent = agentSide(clock, [a, b, c]);
    const { destroyed } = agent.device('roamer-2');
    agent.lose(a);
    clock.advance(GRACE_MS - 1000);
    agent.lose(b);
    clock.advance(1000);
    agent.sweep();
    expect(destroyed()).toBe(false);
    clock.advance(1);
    agent.sweep();
    expect(destroyed()).toBe(true);
    expect((await c.frames()).map((frame) => frame.type)).toEqual([FrameType.RESUME, FrameType.CLOSE]);
    expect((await c.controls(FrameType.CLOSE))[0].body).toMatchObject({ code: 'grace-expired', abrupt: true });
    expect(agent.streams.detachedCount).toBe(0);
  });
});

describe('the hub’s stream rules on the injected clock', () => {
  it('refuses a stream without CONNECT past the CONNECT timeout, and not before (5.2)', async () => {
    const clock = new ManualClock();
    const hub = hubSide(clock);
    const wire = new WireTunnel(clock);
    hub.openStream(wire, 1, null);
    clock.advance(CONNECT_TIMEOUT_MS);
    hub.sweep();
    expect(hub.agent.streams.size).toBe(1);
    clock.advance(1);
    hub.sweep();
    expect(hub.agent.streams.size).toBe(0);
    expect((await wire.controls(FrameType.CLOSE))[0].body).toMatchObject({ code: 'connect-timeout', abrupt: false });
  });

  it('pings the broker for an idle device every keepalive / 2, detached too, and stops once the session ends (8)', () => {
    const clock = new ManualClock();
    const hub = hubSide(clock);
    const wire = new WireTunnel(clock);
    hub.openStream(wire, 1, connectBytes('idle-1', 10));
    const [link] = hub.links;
    clock.advance(4999);
    hub.sweep();
    expect(link.pings).toBe(0);
    clock.advance(1);
    hub.sweep();
    expect(link.pings).toBe(1);
    wire.tunnel.close('heartbeat-timeout');
    hub.sessions.tunnelClosed(wire.tunnel, hub.agent);
    clock.advance(5000);
    hub.sweep();
    expect(link.pings).toBe(2);
    link.owner.brokerClosed();
    clock.advance(10_000);
    hub.sweep();
    expect(link.pings).toBe(2);
  });

  it('ends a detached session as an abrupt disconnect after the grace period, and cuts a broker that does not read (11.10)', () => {
    const clock = new ManualClock();
    const hub = hubSide(clock);
    const wire = new WireTunnel(clock);
    hub.openStream(wire, 1, connectBytes('gone-1', 0));
    const [link] = hub.links;
    wire.tunnel.close('heartbeat-timeout');
    hub.sessions.tunnelClosed(wire.tunnel, hub.agent);
    clock.advance(GRACE_MS);
    hub.sweep();
    expect(hub.agent.streams.size).toBe(1);
    clock.advance(1);
    hub.sweep();
    expect(hub.agent.streams.size).toBe(0);
    expect(link.pushed.at(-1)).toBeNull();
    expect(link.destroyed).toBe(false);
    clock.advance(5000);
    expect(link.destroyed).toBe(true);
  });
});
