import { pino } from 'pino';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { CloudHub } from '../../cloud-hub/hub.js';
import { EdgeAgent } from '../../edge-agent/agent.js';
import { agentOptions, connectClient, hubOptions, removePki, testPki } from '../support/chain.js';

interface LogLine {
  level: number;
  msg: string;
  policy?: string;
  clientId?: string;
  reason?: string;
}

describe('without namespaces configured, each agent speaks only for "<agentId>:*"', () => {
  const started: { close(): Promise<void> }[] = [];
  afterEach(async () => {
    for (const each of started.reverse()) await each.close();
    started.length = 0;
  });
  afterAll(removePki);

  async function refusalCode(port: number, clientId: string): Promise<number | undefined> {
    return connectClient(port, { clientId }).then(
      (client) => {
        client.end(true);
        return undefined;
      },
      (err: { code?: number }) => err.code,
    );
  }

  it('admits its own names, refuses others and another agent’s, and says which policy is in effect at start-up', async () => {
    const { pki } = await testPki();
    const logs: LogLine[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    const hub = await CloudHub.start(hubOptions(pki, { log, namespaces: [] }));
    started.push(hub);
    const agent1 = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port, { agentId: 'agent-1', tunnels: 1 }));
    started.push(agent1);
    const agent2 = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port, { agentId: 'agent-2', tunnels: 1 }));
    started.push(agent2);
    await agent1.pool.waitForTunnels(1);
    await agent2.pool.waitForTunnels(1);

    const policy = logs.find((line) => line.msg.startsWith('client ID namespaces'));
    expect(policy).toMatchObject({ level: 40, policy: expect.stringContaining('each agent may use only client IDs "<agentId>:*"') });

    const own = await connectClient(agent1.deviceAddress.port, { clientId: 'agent-1:meter-1' });
    let ownClosed = false;
    own.on('close', () => (ownClosed = true));
    // An ID outside every agent's namespace, and one agent taking over another's device.
    expect(await refusalCode(agent1.deviceAddress.port, 'meter-1')).toBe(5);
    expect(await refusalCode(agent2.deviceAddress.port, 'agent-1:meter-1')).toBe(5);
    // One agent ID a prefix of another's does not widen its namespace.
    expect(await refusalCode(agent1.deviceAddress.port, 'agent-1-2:meter')).toBe(5);
    expect(ownClosed).toBe(false);
    own.end(true);

    const refusals = logs.filter((line) => line.msg === 'device refused');
    expect(refusals.map((line) => line.clientId)).toEqual(['meter-1', 'agent-1:meter-1', 'agent-1-2:meter']);
    expect(refusals[1].reason).toContain('no namespaces configured: agent agent-2 may use "agent-2:*"');
  });

  it('lets every agent use every client ID only when configured to, and says so', async () => {
    const { pki } = await testPki();
    const logs: LogLine[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
    const hub = await CloudHub.start(hubOptions(pki, { log, namespaces: [{ agentId: '*', clientIds: ['*'] }] }));
    started.push(hub);
    const agent = await EdgeAgent.start(agentOptions(pki, hub.tunnelAddress.port, { tunnels: 1 }));
    started.push(agent);
    await agent.pool.waitForTunnels(1);
    expect(logs.find((line) => line.msg === 'client ID namespaces')).toMatchObject({ level: 30, policy: 'namespaces allow every agent every client ID' });
    const device = await connectClient(agent.deviceAddress.port, { clientId: 'meter-1' });
    device.end(true);
  });
});
