import type { MqttClient, Packet } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { HubOptions } from '../../cloud-hub/hub.js';
import type { AgentOptions } from '../../edge-agent/agent.js';
import { type Chain, eventually, removePki, startChain } from '../support/chain.js';

interface LogLine {
  msg: string;
  clientId?: string;
  topic?: string;
  bytes?: number;
}

/** What one device saw: messages by topic, and every PUBLISH and PUBREL packet with its id. */
function watch(device: MqttClient): { topics: string[]; publishIds: number[]; pubrelIds: number[]; closed: () => boolean } {
  const seen = { topics: [] as string[], publishIds: [] as number[], pubrelIds: [] as number[], closed: false };
  device.on('message', (topic) => seen.topics.push(topic));
  device.on('packetreceive', (packet: Packet) => {
    if (packet.cmd === 'publish' && packet.messageId !== undefined) seen.publishIds.push(packet.messageId);
    if (packet.cmd === 'pubrel') seen.pubrelIds.push(packet.messageId!);
  });
  device.on('close', () => (seen.closed = true));
  return { ...seen, get topics() { return seen.topics; }, closed: () => seen.closed };
}

const BIG = Buffer.alloc(200 * 1024, 0x61);

// Two places a delivery can be too large: the agent's frames (smaller than the
// hub's), and the hub's own frames (an application port that takes more).
const setups: { name: string; hub: Partial<HubOptions>; agent: Partial<AgentOptions> }[] = [
  { name: 'larger than the agent accepts', hub: {}, agent: { maxPacketSize: 64 * 1024 } },
  { name: "larger than the hub's frames", hub: { maxPacketSize: 64 * 1024, appMaxPacketSize: 1024 * 1024 }, agent: {} },
];

describe.each(setups)('a delivery $name is dropped, never the devices it is for', ({ hub, agent }) => {
  let chain: Chain;
  let logs: LogLine[];

  afterEach(async () => {
    await chain.close();
  });
  afterAll(removePki);

  async function start(): Promise<void> {
    logs = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    chain = await startChain({ hub: { ...hub, log }, agent });
  }

  it('live, retained and queued for a persistent session; QoS 1 and 2 are acknowledged for the device', async () => {
    await start();
    const app = await chain.app({ clientId: 'app-1' });
    const q1 = await chain.device({ clientId: 'dev-q1', clean: false });
    const q2 = await chain.device({ clientId: 'dev-q2' });
    const q1Seen = watch(q1);
    const q2Seen = watch(q2);
    await q1.subscribeAsync('cmd/#', { qos: 1 });
    await q2.subscribeAsync('cmd/#', { qos: 2 });

    // Live, at QoS 1 and 2, and retained.
    await app.publishAsync('cmd/big-1', BIG, { qos: 1 });
    await app.publishAsync('cmd/big-2', BIG, { qos: 2 });
    await app.publishAsync('cmd/retained', BIG, { qos: 1, retain: true });
    await app.publishAsync('cmd/after', 'small', { qos: 2 });
    await eventually(() => q1Seen.topics.includes('cmd/after') && q2Seen.topics.includes('cmd/after'), 5000, 'the small message');
    expect(q1Seen.topics).toEqual(['cmd/after']);
    expect(q2Seen.topics).toEqual(['cmd/after']);
    // The device never sees an acknowledgement flow it did not start.
    for (const seen of [q1Seen, q2Seen]) for (const id of seen.pubrelIds) expect(seen.publishIds).toContain(id);

    // A later subscriber of the retained message.
    const late = await chain.device({ clientId: 'dev-late' });
    const lateSeen = watch(late);
    await late.subscribeAsync('cmd/#', { qos: 1 });
    await app.publishAsync('cmd/after-late', 'small', { qos: 1 });
    await eventually(() => lateSeen.topics.includes('cmd/after-late'), 5000, 'the late subscriber');
    expect(lateSeen.topics).toEqual(['cmd/after-late']);

    // Queued for a persistent session while it is away, then delivered on reconnect.
    await q1.endAsync();
    await app.publishAsync('cmd/big-queued', BIG, { qos: 1 });
    await app.publishAsync('cmd/queued', 'small', { qos: 1 });
    const back = await chain.device({ clientId: 'dev-q1', clean: false });
    const backSeen = watch(back);
    await eventually(() => backSeen.topics.includes('cmd/queued'), 5000, 'the queued message');
    await back.endAsync();
    // Acknowledged on the device's behalf: the broker does not deliver it again.
    const again = await chain.device({ clientId: 'dev-q1', clean: false });
    const againSeen = watch(again);
    await app.publishAsync('cmd/marker', 'small', { qos: 1 });
    await eventually(() => againSeen.topics.includes('cmd/marker'), 5000, 'the marker');
    expect(againSeen.topics).toEqual(['cmd/marker']);

    for (const seen of [q2Seen, lateSeen, againSeen]) expect(seen.closed()).toBe(false);
    expect(chain.hub.stats().droppedOversized).toBeGreaterThanOrEqual(7);
    const dropped = logs.filter((line) => line.msg === 'delivery dropped');
    expect(dropped).toContainEqual(expect.objectContaining({ clientId: 'dev-q1', topic: 'cmd/big-1', bytes: expect.any(Number) }));
    expect(dropped).toContainEqual(expect.objectContaining({ clientId: 'dev-late', topic: 'cmd/retained' }));
    // One line per session per interval, however many it drops.
    expect(dropped.filter((line) => line.clientId === 'dev-q2')).toHaveLength(1);
  });
});
