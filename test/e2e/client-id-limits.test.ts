import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqttPacket from 'mqtt-packet';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolveRoute } from '../../cloud-hub/main.js';
import { type Frame, FrameType } from '../../shared/frame-codec.js';
import { quietLogger } from '../../shared/logger.js';
import { type Chain, connectClient, eventually, removePki, startChain } from '../support/chain.js';
import { HostileAgent } from '../support/hostile-agent.js';
import { itWithMosquitto, Mosquitto } from '../support/mosquitto.js';

function connack(bytes: Buffer): mqttPacket.Packet {
  const packets: mqttPacket.Packet[] = [];
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  parser.on('packet', (packet) => packets.push(packet));
  parser.parse(bytes);
  return packets[0];
}

async function refusal(port: number, clientId: string): Promise<number | undefined> {
  const failed = await connectClient(port, { clientId }).then(
    (client) => {
      client.end(true);
      return null;
    },
    (err: { code?: number }) => err,
  );
  return failed?.code;
}

describe('client IDs: bounded in length, recorded only once a broker admits them', () => {
  let dir: string;
  let chain: Chain;

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'edgemux-client-ids-'));
  });
  afterEach(async () => {
    await chain.close();
    rmSync(dir, { recursive: true, force: true });
  });
  afterAll(removePki);

  it('the agent refuses a client ID over maxClientIdLength with CONNACK identifier rejected', async () => {
    chain = await startChain({ hub: { statePath: join(dir, 'hub.db') }, agent: { maxClientIdLength: 100 } });
    expect(await refusal(chain.devicePort, 'd'.repeat(101))).toBe(2);
    const admitted = await chain.device({ clientId: 'd'.repeat(100) });
    admitted.end(true);
    expect(chain.hub.registry!.devices().map((row) => row.client_id)).toEqual(['d'.repeat(100)]);
  });

  it('the hub refuses one over its own maxClientIdLength from an agent that does not check, and records nothing', async () => {
    chain = await startChain({ hub: { statePath: join(dir, 'hub.db') } });
    const hostile = await HostileAgent.connect(chain.hub.tunnelAddress.port, chain.pki.ca, chain.pki.agents['agent-2']);
    try {
      const longId = 'x'.repeat(60_000);
      hostile.open(1, longId, mqttPacket.generate({ cmd: 'connect', clientId: longId, clean: true, keepalive: 30, protocolVersion: 4 }));
      await hostile.next((frame) => frame.streamId === 1 && frame.type === FrameType.CLOSE);
      const data = hostile.framesOf(1).find((frame) => frame.type === FrameType.DATA) as Frame & { payload: Buffer };
      expect(connack(data.payload)).toMatchObject({ cmd: 'connack', returnCode: 2 });
    } finally {
      hostile.close();
    }
    expect(chain.hub.registry!.devices()).toEqual([]);
  });

  itWithMosquitto('a device its broker refuses leaves no row', async () => {
    const mosquitto = await Mosquitto.start({ passwords: { alice: 'secret' } });
    try {
      const route = resolveRoute(
        { match: { clientId: 'ext-*' }, backend: { brokers: [{ url: mosquitto.url, rejectUnauthorized: true }], healthCheckMs: 500 } },
        0,
        quietLogger('routes'),
      );
      chain = await startChain({ hub: { statePath: join(dir, 'hub.db'), routes: [route] } });
      for (let i = 0; i < 5; i++) {
        const code = await connectClient(chain.devicePort, { clientId: `ext-${i}`, username: 'alice', password: 'wrong' }).then(
          () => null,
          (err: { code?: number }) => err.code,
        );
        expect(code).toBe(5);
      }
      const admitted = await chain.device({ clientId: 'ext-ok', username: 'alice', password: 'secret' });
      await admitted.publishAsync('t', 'x', { qos: 1 });
      admitted.end(true);
      // Sessions end and report their traffic; only the admitted device has a row.
      await eventually(() => chain.hub.stats().sessions === 0, 5000, 'sessions to end');
      expect(chain.hub.registry!.devices().map((row) => row.client_id)).toEqual(['ext-ok']);
    } finally {
      await mosquitto.stop();
    }
  });
});
