import tls from 'node:tls';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { TunnelPool } from '../../edge-agent/tunnel-pool.js';
import { encodeControlFrame, type Frame, FrameDecoder, FrameType, type HelloBody } from '../../shared/frame-codec.js';
import { quietLogger } from '../../shared/logger.js';
import { TUNNEL_DEFAULTS } from '../../shared/tunnel-defaults.js';
import { eventually, removePki, testPki } from '../support/chain.js';

/** A hub played with raw frames over real mutual TLS: it answers the agent's HELLO with whatever HELLO a test gives it. */
class ScriptedHub {
  readonly connections: { frames: Frame[]; ended: boolean }[] = [];
  private constructor(readonly server: tls.Server) {}

  static async start(ca: string, cert: string, key: string, answer: HelloBody): Promise<ScriptedHub> {
    const server = tls.createServer({ ca, cert, key, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' });
    const hub = new ScriptedHub(server);
    server.on('secureConnection', (socket) => {
      const connection = { frames: [] as Frame[], ended: false };
      hub.connections.push(connection);
      const decoder = new FrameDecoder(TUNNEL_DEFAULTS.maxFramePayload);
      socket.on('error', () => {});
      socket.on('close', () => (connection.ended = true));
      socket.on('data', (chunk: Buffer) =>
        decoder.push(chunk, {
          data: (streamId, payload) => connection.frames.push({ type: FrameType.DATA, streamId, payload: Buffer.from(payload) }),
          ack: (streamId, consumed) => connection.frames.push({ type: FrameType.ACK, streamId, consumed }),
          control: (frame) => {
            connection.frames.push(frame);
            if (frame.type === FrameType.HELLO) socket.write(encodeControlFrame({ type: FrameType.HELLO, streamId: 0, body: answer }));
          },
        }),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return hub;
  }

  get port(): number {
    return (this.server.address() as { port: number }).port;
  }

  close(): void {
    this.server.close();
  }
}

const OLD_HUB_HELLO: HelloBody = {
  version: 1,
  role: 'hub',
  id: 'old-hub',
  heartbeatMs: 5000,
  streamWindow: 32768,
  maxFramePayload: 4096,
  instance: 'old-hub',
};

describe('agent HELLO against hubs of other releases', () => {
  let hub: ScriptedHub | null = null;
  let pool: TunnelPool | null = null;

  afterEach(async () => {
    await pool?.stop();
    pool = null;
    hub?.close();
    hub = null;
  });
  afterAll(removePki);

  async function startPool(answer: HelloBody): Promise<{ hub: ScriptedHub; pool: TunnelPool }> {
    const { pki } = await testPki();
    hub = await ScriptedHub.start(pki.ca, pki.hub.cert, pki.hub.key, answer);
    pool = new TunnelPool({
      agentId: 'agent-1',
      worker: 0,
      hubs: [{ host: '127.0.0.1', port: hub.port }],
      tunnels: 1,
      tls: { ca: pki.ca, cert: pki.agents['agent-1'].cert, key: pki.agents['agent-1'].key },
      streamWindow: TUNNEL_DEFAULTS.streamWindow,
      maxFramePayload: TUNNEL_DEFAULTS.maxFramePayload,
      heartbeatMs: 60_000,
      deadAfterMs: 120_000,
      // Long enough that a refused dial is not retried while the test looks.
      backoffInitialMs: 60_000,
      backoffMaxMs: 60_000,
      log: quietLogger('agent'),
    });
    pool.start();
    return { hub, pool };
  }

  it('lists its capabilities and works with a hub whose HELLO has none, using none of them', async () => {
    const { hub, pool } = await startPool(OLD_HUB_HELLO);
    await pool.waitForTunnels(1, 5000);
    const [tunnel] = pool.liveTunnels();
    expect(tunnel.peerId).toBe('old-hub');
    expect(tunnel.peerMaxFramePayload).toBe(4096);
    expect([...tunnel.capabilities]).toEqual([]);
    expect(pool.pick('any-device')?.hubStreamWindow).toBe(32768);
    const sent = hub.connections[0].frames.find((frame) => frame.type === FrameType.HELLO);
    expect(sent).toMatchObject({ body: { version: 1, role: 'agent', id: 'agent-1', capabilities: ['goodbye'] } });
  });

  it('uses the capabilities both sides list and ignores those it does not know', async () => {
    const { pool } = await startPool({ ...OLD_HUB_HELLO, capabilities: ['goodbye', 'from-the-future'] });
    await pool.waitForTunnels(1, 5000);
    expect([...pool.liveTunnels()[0].capabilities]).toEqual(['goodbye']);
  });

  it('refuses a hub of another major version with GOODBYE unsupported-version when the hub takes GOODBYE', async () => {
    const { hub, pool } = await startPool({ ...OLD_HUB_HELLO, version: 2, capabilities: ['goodbye'] });
    await eventually(() => hub.connections[0]?.ended === true, 5000, 'the agent to close the tunnel');
    expect(pool.readyCount).toBe(0);
    const goodbye = hub.connections[0].frames.at(-1);
    expect(goodbye).toMatchObject({ type: FrameType.GOODBYE, body: { code: 'unsupported-version' } });
    expect(goodbye?.type === FrameType.GOODBYE && goodbye.body.reason).toContain('version 2');
  });

  it('closes on a hub of another major version that does not list GOODBYE, sending none', async () => {
    const { hub, pool } = await startPool({ ...OLD_HUB_HELLO, version: 2 });
    await eventually(() => hub.connections[0]?.ended === true, 5000, 'the agent to close the tunnel');
    expect(pool.readyCount).toBe(0);
    expect(hub.connections[0].frames.map((frame) => frame.type)).toEqual([FrameType.HELLO]);
  });
});
