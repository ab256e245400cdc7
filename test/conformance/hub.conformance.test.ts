import tls from 'node:tls';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { CloudHub } from '../../cloud-hub/hub.js';
import { type Frame, FRAME_HEADER_SIZE, FrameType, writeFrameHeader } from '../../shared/frame-codec.js';
import { LOCAL_CAPABILITIES } from '../../shared/hello.js';
import { ALPN_HTTP, DEFAULT_WS_PATH } from '../../shared/transports/tunnel-port.js';
import { WebSocketDuplex } from '../../shared/transports/ws-duplex.js';
import { hubOptions, removePki, testPki } from '../support/chain.js';
import { duplexPair } from '../support/duplex-pair.js';
import { RawAgent } from '../support/raw-agent.js';

/**
 * The hub's side of the tunnel protocol (docs/protocol.md), driven with raw
 * frames. Every case runs over each transport a tunnel can have: an
 * in-memory Duplex pair (the framing and rules alone), real mutual TLS and
 * WebSocket in mutual TLS on the same port (what agents use), so a
 * difference between them is a bug in one of them.
 */

const AGENT_ID = 'agent-1';
const STREAM_WINDOW = 8 * 1024;
const MAX_PACKET = 64 * 1024;

interface Transport {
  name: string;
  connect(hub: CloudHub): Promise<RawAgent>;
}

const transports: Transport[] = [
  {
    name: 'in-memory duplex',
    async connect(hub) {
      const [hubEnd, agentEnd] = duplexPair();
      hub.acceptAuthenticatedConnection(hubEnd, { agentId: AGENT_ID });
      return new RawAgent(agentEnd);
    },
  },
  {
    name: 'mutual TLS',
    async connect(hub) {
      const { pki } = await testPki();
      const socket = tls.connect({ host: '127.0.0.1', port: hub.tunnelAddress.port, ca: pki.ca, cert: pki.agents[AGENT_ID].cert, key: pki.agents[AGENT_ID].key });
      await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
      return new RawAgent(socket);
    },
  },
  {
    name: 'WebSocket in mutual TLS',
    async connect(hub) {
      const { pki } = await testPki();
      const port = hub.tunnelAddress.port;
      const ws = new WebSocket(`wss://127.0.0.1:${port}${DEFAULT_WS_PATH}`, {
        createConnection: () =>
          tls.connect({ host: '127.0.0.1', port, ca: pki.ca, cert: pki.agents[AGENT_ID].cert, key: pki.agents[AGENT_ID].key, ALPNProtocols: [ALPN_HTTP] }),
        perMessageDeflate: false,
      });
      await new Promise<void>((resolve, reject) => ws.once('open', resolve).once('error', reject));
      return new RawAgent(new WebSocketDuplex(ws));
    },
  },
];

function connectPacket(clientId: string): Buffer {
  return mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean: true, keepalive: 30 });
}

function mqtt(packet: Packet): Buffer {
  return mqttPacket.generate(packet);
}

function parse(payload: Buffer): Packet[] {
  const packets: Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  parser.on('packet', (packet) => packets.push(packet));
  parser.parse(payload);
  return packets;
}

function bodyOf<T extends Frame['type']>(frame: Frame, type: T): Extract<Frame, { type: T }> extends { body: infer B } ? B : never {
  expect(frame.type).toBe(type);
  return (frame as unknown as { body: never }).body;
}

const total = (payloads: Buffer[]): number => payloads.reduce((sum, payload) => sum + payload.length, 0);

describe.each(transports)('hub conformance over $name', (transport) => {
  let hub: CloudHub;
  const agents: RawAgent[] = [];
  let nextWorker = 0;

  beforeEach(async () => {
    const { pki } = await testPki();
    hub = await CloudHub.start(hubOptions(pki, { hubId: 'hub-conformance', streamWindow: STREAM_WINDOW, maxPacketSize: MAX_PACKET }));
  });
  afterEach(async () => {
    for (const agent of agents.splice(0)) agent.destroy();
    await hub.close();
  });
  afterAll(removePki);

  async function connect(): Promise<RawAgent> {
    const agent = await transport.connect(hub);
    agents.push(agent);
    return agent;
  }

  /** A tunnel past HELLO, as its own worker so that tunnels of different cases never share an identity. */
  async function ready(overrides: Parameters<typeof RawAgent.hello>[0] = {}): Promise<RawAgent> {
    const agent = await connect();
    await agent.handshake(RawAgent.hello({ worker: nextWorker++, ...overrides }));
    return agent;
  }

  /** Opens `streamId` with a valid CONNECT and waits for the CONNACK. */
  async function openDevice(agent: RawAgent, streamId: number, clientId: string, window = STREAM_WINDOW): Promise<Buffer> {
    const connect = connectPacket(clientId);
    agent.send({ type: FrameType.OPEN, streamId, body: { clientId, window, keepalive: 30, protocolVersion: 4, cleanSession: true } });
    agent.send({ type: FrameType.DATA, streamId, payload: connect });
    await agent.next((frame) => frame.streamId === streamId && frame.type === FrameType.DATA);
    return connect;
  }

  describe('HELLO', () => {
    it('answers HELLO with its own: version 1, role hub, its settings and capabilities', async () => {
      const agent = await connect();
      const hello = await agent.handshake(RawAgent.hello({ capabilities: ['goodbye', 'x-not-yet-invented'] }));
      expect(hello).toMatchObject({ version: 1, role: 'hub', id: 'hub-conformance', streamWindow: STREAM_WINDOW, maxFramePayload: MAX_PACKET });
      expect(hello.capabilities).toEqual([...LOCAL_CAPABILITIES]);
      expect(agent.received()[0].type).toBe(FrameType.HELLO);
    });

    it('takes a HELLO without capabilities as version 1 as it shipped, and carries its streams', async () => {
      const { capabilities: _none, ...old } = RawAgent.hello({ worker: nextWorker++ });
      const agent = await connect();
      expect((await agent.handshake(old)).role).toBe('hub');
      await openDevice(agent, 1, 'old-agent-device');
      expect(agent.isOpen).toBe(true);
    });

    it('refuses another major version with GOODBYE unsupported-version in place of HELLO when the agent takes GOODBYE', async () => {
      const agent = await connect();
      agent.send({ type: FrameType.HELLO, streamId: 0, body: RawAgent.hello({ version: 2, capabilities: ['goodbye', 'something-of-v2'] }) });
      await agent.waitClosed();
      const frames = agent.received();
      expect(frames).toHaveLength(1);
      const goodbye = bodyOf(frames[0], FrameType.GOODBYE);
      expect(goodbye.code).toBe('unsupported-version');
      expect(goodbye.reason).toMatch(/version 2.*version 1/);
    });

    it('closes on another major version without GOODBYE when the agent does not list it', async () => {
      const agent = await connect();
      agent.send({ type: FrameType.HELLO, streamId: 0, body: RawAgent.hello({ version: 2, capabilities: [] }) });
      await agent.waitClosed();
      expect(agent.received()).toEqual([]);
    });

    it('closes on a HELLO that claims the hub role', async () => {
      const agent = await connect();
      agent.send({ type: FrameType.HELLO, streamId: 0, body: RawAgent.hello({ role: 'hub' }) });
      await agent.waitClosed();
      expect(agent.received()).toEqual([]);
    });

    it('refuses frames before HELLO: OPEN first closes the tunnel unanswered', async () => {
      const agent = await connect();
      agent.send({ type: FrameType.OPEN, streamId: 1, body: { clientId: 'early', window: STREAM_WINDOW, keepalive: 30, protocolVersion: 4, cleanSession: true } });
      agent.send({ type: FrameType.DATA, streamId: 1, payload: connectPacket('early') });
      await agent.waitClosed();
      expect(agent.received()).toEqual([]);
    });

    it('closes on a second HELLO', async () => {
      const agent = await ready();
      agent.send({ type: FrameType.HELLO, streamId: 0, body: RawAgent.hello() });
      await agent.waitClosed();
    });
  });

  describe('GOODBYE', () => {
    it('refuses a second instance of a live identity with GOODBYE identity-in-use in place of HELLO', async () => {
      const worker = nextWorker++;
      await ready({ worker });
      const second = await connect();
      second.send({ type: FrameType.HELLO, streamId: 0, body: RawAgent.hello({ worker }) });
      await second.waitClosed();
      expect(second.received().map((frame) => frame.type)).toEqual([FrameType.GOODBYE]);
      expect(bodyOf(second.received()[0], FrameType.GOODBYE).code).toBe('identity-in-use');
    });

    it('ends only the tunnel on an agent GOODBYE unsupported-version, and every session on GOODBYE shutdown', async () => {
      const hello = RawAgent.hello({ worker: nextWorker++ });
      const carrier = await connect();
      await carrier.handshake(hello);
      await openDevice(carrier, 1, 'conformance-goodbye');
      const refusing = await connect();
      await refusing.handshake(hello);
      refusing.send({ type: FrameType.GOODBYE, streamId: 0, body: { code: 'unsupported-version', reason: 'agent wants version 2' } });
      await refusing.waitClosed();
      // The instance has not departed: losing its other tunnel leaves the session waiting to resume.
      carrier.destroy();
      await expect.poll(() => hub.stats().detached).toBe(1);
      expect(hub.stats().sessions).toBe(1);

      const resumed = await connect();
      await resumed.handshake(hello);
      resumed.send({ type: FrameType.RESUME, streamId: 1, body: { clientId: 'conformance-goodbye', window: STREAM_WINDOW, received: total(carrier.dataOf(1)), attempt: 1 } });
      await resumed.next((frame) => frame.streamId === 1 && frame.type === FrameType.ACCEPT);
      resumed.send({ type: FrameType.GOODBYE, streamId: 0, body: { code: 'shutdown', reason: 'agent stopping' } });
      await resumed.waitClosed();
      await expect.poll(() => hub.stats().sessions).toBe(0);
    });
  });

  describe('PING and PONG', () => {
    it('answers PING with PONG carrying the same body, before HELLO and after', async () => {
      const agent = await connect();
      agent.send({ type: FrameType.PING, streamId: 0, body: { sentAt: 1_700_000_000_123 } });
      expect(await agent.next((frame) => frame.type === FrameType.PONG)).toEqual({ type: FrameType.PONG, streamId: 0, body: { sentAt: 1_700_000_000_123 } });
      await agent.handshake(RawAgent.hello({ worker: nextWorker++ }));
      agent.send({ type: FrameType.PING, streamId: 0, body: { sentAt: 42 } });
      expect(await agent.next((frame) => frame.type === FrameType.PONG && frame.body.sentAt === 42)).toMatchObject({ streamId: 0 });
    });
  });

  describe('bad input', () => {
    it('closes a tunnel whose frame header announces more than its maximum payload, and no other', async () => {
      const bystander = await ready();
      const offender = await ready();
      const header = Buffer.alloc(FRAME_HEADER_SIZE);
      writeFrameHeader(header, 0, FrameType.DATA, 1, MAX_PACKET + 1);
      offender.sendRaw(header);
      await offender.waitClosed();
      bystander.send({ type: FrameType.PING, streamId: 0, body: { sentAt: 7 } });
      await bystander.next((frame) => frame.type === FrameType.PONG && frame.body.sentAt === 7);
      expect(bystander.isOpen).toBe(true);
    });
  });

  describe('streams', () => {
    it('answers OPEN and a valid CONNECT with ACCEPT, then the broker CONNACK as DATA', async () => {
      const agent = await ready();
      await openDevice(agent, 1, 'conformance-open');
      const [accept, connack] = agent.on(1);
      expect(bodyOf(accept, FrameType.ACCEPT)).toEqual({ window: STREAM_WINDOW, received: 0 });
      expect(connack.type).toBe(FrameType.DATA);
      expect(parse((connack as Extract<Frame, { type: typeof FrameType.DATA }>).payload)).toMatchObject([{ cmd: 'connack', returnCode: 0 }]);
    });

    it('never sends beyond the window it was granted, and goes on as ACKs return credit', async () => {
      const window = 2048;
      const agent = await ready();
      await openDevice(agent, 1, 'conformance-window', window);
      agent.send({ type: FrameType.DATA, streamId: 1, payload: mqtt({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'window/t', qos: 1 }] }) });
      await agent.next((frame) => frame.type === FrameType.DATA && parse(frame.payload)[0]?.cmd === 'suback');
      // Thirty QoS 1 messages come back to the device: about 6.6 KiB, over three windows.
      const messages = 30;
      for (let id = 2; id < 2 + messages; id++) {
        agent.send({ type: FrameType.DATA, streamId: 1, payload: mqtt({ cmd: 'publish', topic: 'window/t', qos: 1, messageId: id, dup: false, retain: false, payload: Buffer.alloc(200, id) }) });
      }
      let acked = 0;
      let rounds = 0;
      const publishes = (): number => agent.dataOf(1).flatMap(parse).filter((packet) => packet.cmd === 'publish').length;
      while (publishes() < messages) {
        await agent.quiet(200);
        const payloads = agent.dataOf(1);
        const sent = total(payloads);
        // A frame may start only while sent − acked < window: all but the last frame fit in it.
        expect(total(payloads.slice(0, -1)) - acked).toBeLessThan(window);
        expect(sent).toBeGreaterThan(acked);
        acked = sent;
        rounds++;
        agent.send({ type: FrameType.ACK, streamId: 1, consumed: acked });
      }
      expect(rounds).toBeGreaterThanOrEqual(3);
      expect(publishes()).toBe(messages);
    });

    it('answers the agent CLOSE of a device that vanished with CLOSE closed, and forgets the stream', async () => {
      const agent = await ready();
      await openDevice(agent, 1, 'conformance-vanished');
      agent.send({ type: FrameType.CLOSE, streamId: 1, body: { reason: 'device connection reset', abrupt: true } });
      const answer = await agent.next((frame) => frame.streamId === 1 && frame.type === FrameType.CLOSE);
      expect(bodyOf(answer, FrameType.CLOSE)).toEqual({ code: 'closed', reason: 'closed', abrupt: false });
      // Forgotten: the agent's CLOSE sent again finds no stream.
      agent.send({ type: FrameType.CLOSE, streamId: 1, body: { reason: 'device connection reset', abrupt: true } });
      await agent.next((frame) => frame.streamId === 1 && frame.type === FrameType.CLOSE && frame.body.reason === 'unknown stream');
      expect(agent.isOpen).toBe(true);
    });

    it('ends a stream after DISCONNECT and CLOSE with exactly one CLOSE of its own, answer or crossing', async () => {
      const agent = await ready();
      await openDevice(agent, 1, 'conformance-disconnect');
      agent.send({ type: FrameType.DATA, streamId: 1, payload: Buffer.from([0xe0, 0x00]) });
      agent.send({ type: FrameType.CLOSE, streamId: 1, body: { reason: 'device disconnected', abrupt: false } });
      await agent.next((frame) => frame.streamId === 1 && frame.type === FrameType.CLOSE);
      await agent.quiet(200);
      // The broker may end the session on the DISCONNECT before the hub reads the CLOSE: the two CLOSEs then cross (5.3 rule 3).
      const closes = agent.on(1, FrameType.CLOSE);
      expect(closes).toHaveLength(1);
      expect(bodyOf(closes[0], FrameType.CLOSE).abrupt).toBe(false);
      agent.send({ type: FrameType.RESUME, streamId: 1, body: { clientId: 'conformance-disconnect', window: STREAM_WINDOW, received: 0, attempt: 1 } });
      await agent.next((frame) => frame.streamId === 1 && frame.type === FrameType.CLOSE && frame.body.reason === 'unknown stream');
    });

    it('answers CLOSE of a stream it never held with CLOSE unknown stream, keeping the tunnel', async () => {
      const agent = await ready();
      agent.send({ type: FrameType.CLOSE, streamId: 99, body: { reason: 'stale', abrupt: false } });
      const unknown = await agent.next((frame) => frame.streamId === 99 && frame.type === FrameType.CLOSE);
      expect(bodyOf(unknown, FrameType.CLOSE)).toEqual({ code: 'unknown-stream', reason: 'unknown stream', abrupt: false });
      expect(agent.isOpen).toBe(true);
    });
  });

  describe('resumption', () => {
    it('after tunnel loss, RESUME on another tunnel replays exactly the bytes the agent did not receive', async () => {
      const hello = RawAgent.hello({ worker: nextWorker++ });
      const first = await connect();
      await first.handshake(hello);
      const connectBytes = await openDevice(first, 1, 'conformance-resume');
      let agentSent = connectBytes.length;
      const toBroker = (packet: Packet): void => {
        const payload = mqtt(packet);
        agentSent += payload.length;
        first.send({ type: FrameType.DATA, streamId: 1, payload });
      };
      toBroker({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'resume/t', qos: 1 }] });
      for (let id = 2; id < 8; id++) toBroker({ cmd: 'publish', topic: 'resume/t', qos: 1, messageId: id, dup: false, retain: false, payload: Buffer.from(`m${id}`) });
      await first.quiet(300);
      const before = first.dataOf(1);
      // CONNACK, SUBACK, six PUBACKs and six PUBLISHes.
      expect(before).toHaveLength(14);
      // The agent acknowledged the first two payloads and lost the last five with the tunnel.
      first.send({ type: FrameType.ACK, streamId: 1, consumed: total(before.slice(0, 2)) });
      const received = total(before.slice(0, -5));
      await first.quiet(100);
      first.destroy();
      await first.waitClosed();

      const second = await connect();
      await second.handshake(hello);
      second.send({ type: FrameType.RESUME, streamId: 1, body: { clientId: 'conformance-resume', window: STREAM_WINDOW, received, attempt: 1 } });
      await second.next((frame) => frame.streamId === 1 && frame.type === FrameType.ACK);
      await second.quiet(300);
      const [accept, ...rest] = second.on(1);
      expect(bodyOf(accept, FrameType.ACCEPT)).toEqual({ window: STREAM_WINDOW, received: agentSent });
      const replay = rest.filter((frame) => frame.type === FrameType.DATA) as Extract<Frame, { type: typeof FrameType.DATA }>[];
      expect(replay.map((frame) => frame.payload.toString('hex'))).toEqual(before.slice(-5).map((payload) => payload.toString('hex')));
      // The restated ACK follows the replay and covers everything the agent sent.
      expect(rest.at(-1)).toEqual({ type: FrameType.ACK, streamId: 1, consumed: agentSent });

      // The stream carries on over the new tunnel.
      second.send({ type: FrameType.DATA, streamId: 1, payload: mqtt({ cmd: 'publish', topic: 'other', qos: 1, messageId: 50, dup: false, retain: false, payload: Buffer.from('after') }) });
      await second.next((frame) => frame.type === FrameType.DATA && parse(frame.payload).some((packet) => packet.cmd === 'puback' && packet.messageId === 50));
    });

    it('answers RESUME of a stream it does not hold with CLOSE unknown stream', async () => {
      const agent = await ready();
      agent.send({ type: FrameType.RESUME, streamId: 5, body: { clientId: 'never-opened', window: STREAM_WINDOW, received: 0, attempt: 1 } });
      const answer = await agent.next((frame) => frame.streamId === 5);
      expect(bodyOf(answer, FrameType.CLOSE)).toEqual({ code: 'unknown-stream', reason: 'unknown stream', abrupt: false });
    });
  });
});
