import net from 'node:net';
import mqtt, { type ErrorWithReasonCode } from 'mqtt';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { agentOptions, eventually, removePki, testPki } from '../support/chain.js';
import { freePort } from '../support/mosquitto.js';

/** Resolves with the error MQTT.js reports for a refused CONNECT, or rejects if it is closed without one. */
function connectRefusal(port: number, protocolVersion: 4 | 5): Promise<ErrorWithReasonCode> {
  const client = mqtt.connect({ host: '127.0.0.1', port, protocolVersion, clientId: `early-${protocolVersion}`, reconnectPeriod: 0, connectTimeout: 5000 });
  return new Promise<ErrorWithReasonCode>((resolve, reject) => {
    client.once('error', (err) => resolve(err as ErrorWithReasonCode));
    client.once('connect', () => reject(new Error('connected without a tunnel')));
    client.once('close', () => reject(new Error('closed without a CONNACK')));
  }).finally(() => client.end(true));
}

describe('a device that connects before any tunnel is up', () => {
  let agent: EdgeAgent;
  const logLines: Record<string, unknown>[] = [];
  // The agent logs a refusal before it writes the CONNACK, so the line is there once the client has seen it.
  const refusalLogged = (clientId: string): boolean =>
    logLines.some((line) => line.msg === 'device refused' && line.clientId === clientId && line.reason === 'no tunnel to the hub is up');

  beforeAll(async () => {
    const { pki } = await testPki();
    // Nothing listens on the hub port: the agent listens for devices but no tunnel comes up.
    const hubPort = await freePort();
    const log = pino({ level: 'info' }, { write: (line: string) => logLines.push(JSON.parse(line)) });
    agent = await EdgeAgent.start(agentOptions(pki, hubPort, { log }));
  });
  afterAll(async () => {
    await agent.close();
    await removePki();
  });

  it('gets CONNACK 3, server unavailable, in MQTT 3.1.1 (§3.2.2.3)', async () => {
    const err = await connectRefusal(agent.deviceAddress.port, 4);
    expect(err.code).toBe(3);
    expect(agent.pool.readyCount).toBe(0);
    expect(refusalLogged('early-4')).toBe(true);
  });

  it('gets reason code 0x88, server unavailable, in MQTT 5 (§3.2.2.2)', async () => {
    const err = await connectRefusal(agent.deviceAddress.port, 5);
    expect(err.code).toBe(0x88);
    expect(refusalLogged('early-5')).toBe(true);
  });

  it('a storm of refused devices writes a burst of lines and a summary, not a line each', async () => {
    const before = logLines.length;
    const storm = 300;
    const started = performance.now();
    // One CONNECT each on raw sockets: the agent answers CONNACK 3 to all of them.
    const connect = Buffer.from([0x10, 0x10, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, 0x00, 0x3c, 0x00, 0x04, 0x73, 0x74, 0x72, 0x6d]);
    await Promise.all(
      Array.from({ length: storm }, () => new Promise<void>((resolve) => {
        const socket = net.connect(agent.deviceAddress.port, '127.0.0.1', () => socket.write(connect));
        socket.once('data', () => socket.destroy());
        socket.once('close', () => resolve());
        socket.once('error', () => resolve());
      })),
    );
    const single = (): Record<string, unknown>[] => logLines.slice(before).filter((line) => line.msg === 'device refused');
    const summarized = (): number => logLines.slice(before).reduce((sum, line) => sum + (line.event === 'device refused' ? (line.suppressed as number) : 0), 0);
    // Every refusal is either a line of its own or counted in a summary line.
    await eventually(() => single().length + summarized() === storm, 5000, 'summary lines for the rest');
    // The bucket holds 100 and refills 20 a second while the storm lasts.
    const seconds = (performance.now() - started) / 1000;
    expect(single().length).toBeLessThanOrEqual(100 + Math.ceil(20 * seconds));
    expect(single().length).toBeLessThan(storm / 2);
    expect(single()[0]).toMatchObject({ agentId: 'agent-1', clientId: 'strm', reason: 'no tunnel to the hub is up' });
  });
});
