import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { pino } from 'pino';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { type Frame, FrameType } from '../../shared/frame-codec.js';
import { agentOptions, connectClient, hubOptions, removePki, testPki } from '../support/chain.js';
import { HostileAgent } from '../support/hostile-agent.js';

interface LogLine {
  msg: string;
  agentId?: string;
  clientId?: string;
  streamId?: number;
  reason?: string;
  detail?: string;
}

function connect(clientId: string, options: { clean?: boolean; username?: string } = {}): Buffer {
  return mqttPacket.generate({ cmd: 'connect', clientId, clean: options.clean ?? true, keepalive: 30, protocolVersion: 4, username: options.username });
}

function parsePacket(bytes: Buffer): mqttPacket.Packet {
  const packets: mqttPacket.Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  parser.on('packet', (packet) => packets.push(packet));
  parser.parse(bytes);
  return packets[0];
}

function describeFrames(frames: Frame[]): string[] {
  return frames.map((frame) => {
    if (frame.type === FrameType.DATA) return `DATA ${parsePacket(frame.payload).cmd}`;
    return Object.entries(FrameType).find(([, code]) => code === frame.type)![0];
  });
}

function nextMessage(client: MqttClient, topic: string): Promise<string> {
  return new Promise((resolve) => {
    const onMessage = (received: string, payload: Buffer): void => {
      if (received !== topic) return;
      client.off('message', onMessage);
      resolve(payload.toString());
    };
    client.on('message', onMessage);
  });
}

describe('an agent speaks only for its own namespace, judged on the CONNECT the broker reads', () => {
  let stateDir: string;
  let hub: CloudHub;
  let agent: EdgeAgent;
  let victim: MqttClient;
  let victimClosed: Promise<string>;
  let app: MqttClient;
  let hostile: HostileAgent;
  let logs: LogLine[];

  beforeEach(async () => {
    const { pki } = await testPki();
    stateDir = mkdtempSync(join(tmpdir(), 'edgemux-ns-'));
    logs = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    hub = await CloudHub.start(
      hubOptions(pki, {
        log,
        statePath: join(stateDir, 'hub.db'),
        namespaces: [
          { agentId: 'agent-1', clientIds: ['dev-a-*'] },
          { agentId: 'agent-2', clientIds: ['dev-b-*'] },
        ],
      }),
    );
    agent = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port, { agentId: 'agent-1', tunnels: 1 }));
    await agent.pool.waitForTunnels(1);
    victim = await connectClient(agent.deviceAddress.port, { clientId: 'dev-a-1', clean: false });
    victimClosed = new Promise((resolve) => victim.once('close', () => resolve('victim disconnected')));
    await victim.subscribeAsync('cmd/dev-a-1', { qos: 1 });
    app = await connectClient(hub.appAddress.port, { clientId: 'operator' });
    hostile = await HostileAgent.connect(hub.tunnelAddress.port, pki.ca, pki.agents['agent-2']);
  });

  afterEach(async () => {
    hostile.close();
    victim.end(true);
    app.end(true);
    await agent.close();
    await hub.close();
    rmSync(stateDir, { recursive: true, force: true });
  });

  afterAll(removePki);

  /** The victim still holds its session: the next command reaches it, and it was never cut off. */
  async function expectVictimUndisturbed(command: string): Promise<void> {
    const received = nextMessage(victim, 'cmd/dev-a-1');
    await app.publishAsync('cmd/dev-a-1', command, { qos: 1 });
    expect(await Promise.race([received, victimClosed])).toBe(command);
  }

  it('refuses an OPEN in its namespace whose CONNECT names another agent’s device, and logs it once', async () => {
    hostile.open(1, 'dev-b-1', connect('dev-a-1', { clean: false }), { cleanSession: false });
    await hostile.next((frame) => frame.streamId === 1 && frame.type === FrameType.CLOSE);

    expect(describeFrames(hostile.framesOf(1))).toEqual(['ACCEPT', 'DATA connack', 'CLOSE']);
    const connack = hostile.framesOf(1)[1] as Frame & { payload: Buffer };
    expect(parsePacket(connack.payload)).toMatchObject({ cmd: 'connack', returnCode: 5, sessionPresent: false });
    await expectVictimUndisturbed('after the intruder');

    const refusals = logs.filter((line) => line.msg === 'device refused');
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({ agentId: 'agent-2', clientId: 'dev-b-1', streamId: 1, reason: 'connect-mismatch' });
    expect(refusals[0].detail).toContain('OPEN named "dev-b-1"');
    expect(refusals[0].detail).toContain('CONNECT names client ID "dev-a-1"');
    const devices = hub.registry!.devices().map((device) => [device.client_id, device.agent_id]);
    expect(devices).toEqual([['dev-a-1', 'agent-1']]);
  });

  it('refuses a CONNECT whose user name differs from the OPEN’s, which routes by it', async () => {
    hostile.open(1, 'dev-b-1', connect('dev-b-1', { username: 'fleet-admin' }), { username: 'sensor' });
    await hostile.next((frame) => frame.streamId === 1 && frame.type === FrameType.CLOSE);
    expect(describeFrames(hostile.framesOf(1))).toEqual(['ACCEPT', 'DATA connack', 'CLOSE']);
    expect(parsePacket((hostile.framesOf(1)[1] as Frame & { payload: Buffer }).payload)).toMatchObject({ returnCode: 5 });
  });

  it('closes a stream whose first packet is not a CONNECT, or that carries a second CONNECT', async () => {
    // The first DATA a PUBLISH: nothing reaches the broker, no CONNACK comes back.
    hostile.open(1, 'dev-b-1', mqttPacket.generate({ cmd: 'publish', topic: 'cmd/dev-a-1', payload: Buffer.from('forged'), qos: 0, retain: false, dup: false }));
    // Two CONNECTs in the first DATA payload.
    hostile.open(3, 'dev-b-3', Buffer.concat([connect('dev-b-3'), connect('dev-a-1', { clean: false })]));
    // A session admitted on its own CONNECT, then a second CONNECT for the victim.
    hostile.open(5, 'dev-b-5', connect('dev-b-5'));
    const accepted = (await hostile.next((frame) => frame.streamId === 5 && frame.type === FrameType.DATA)) as Frame & { payload: Buffer };
    expect(parsePacket(accepted.payload)).toMatchObject({ cmd: 'connack', returnCode: 0 });
    hostile.data(5, connect('dev-a-1', { clean: false }));

    for (const streamId of [1, 3, 5]) await hostile.next((frame) => frame.streamId === streamId && frame.type === FrameType.CLOSE);
    const reasons = [1, 3, 5].map((streamId) => (hostile.framesOf(streamId).at(-1) as Frame & { body: { reason: string } }).body.reason);
    expect(reasons).toEqual([
      'protocol violation: first packet of the stream is not CONNECT',
      'protocol violation: CONNECT after the first packet of the stream',
      'protocol violation: CONNECT after the first packet of the stream',
    ]);
    expect(describeFrames(hostile.framesOf(1))).toEqual(['ACCEPT', 'CLOSE']);
    expect(describeFrames(hostile.framesOf(3))).toEqual(['ACCEPT', 'CLOSE']);
    await expectVictimUndisturbed('after the second CONNECT');
    expect(hub.stats().sessions).toBe(1);
    // Streams 1 and 3 never reached a broker: refusals. Stream 5 had, so it ends as a disconnect; the violation is named either way.
    const refused = logs.filter((line) => line.msg === 'device refused').map((line) => [line.streamId, line.reason, line.detail]);
    expect(refused).toEqual([
      [1, 'protocol-violation', 'protocol violation: first packet of the stream is not CONNECT'],
      [3, 'protocol-violation', 'protocol violation: CONNECT after the first packet of the stream'],
    ]);
    expect(logs.find((line) => line.msg === 'device disconnected' && line.streamId === 5)).toMatchObject({
      clientId: 'dev-b-5',
      reason: 'protocol-error',
      detail: 'protocol violation: CONNECT after the first packet of the stream',
    });
  });

  it('refuses a CONNECT whose client ID is not well-formed UTF-8 instead of decoding it with replacement characters', async () => {
    const forged = connect('dev-b-X');
    forged[forged.indexOf('dev-b-X') + 6] = 0xff;
    hostile.open(1, 'dev-b-\uFFFD', forged);
    const close = (await hostile.next((frame) => frame.streamId === 1 && frame.type === FrameType.CLOSE)) as Frame & { body: { reason: string } };
    expect(describeFrames(hostile.framesOf(1))).toEqual(['ACCEPT', 'CLOSE']);
    expect(close.body.reason).toMatch(/^E_MQTT_MALFORMED: .*client ID is not well-formed UTF-8/);
  });
});
