import { describe, expect, it } from 'vitest';
import { decodeFrames, encodeFrame, type HelloBody, PROTOCOL_VERSION } from '../../shared/frame-codec.js';
import { buildHello, checkHello, LOCAL_CAPABILITIES, negotiateCapabilities } from '../../shared/hello.js';

const agentHello: HelloBody = {
  version: PROTOCOL_VERSION,
  role: 'agent',
  id: 'site-7',
  heartbeatMs: 5000,
  streamWindow: 65536,
  maxFramePayload: 1048576,
  instance: 'f3a9c2',
};

describe('HELLO exchange', () => {
  it('builds a HELLO that lists this implementation\'s capabilities and survives the codec', () => {
    const hello = buildHello({ role: 'agent', id: 'site-7', heartbeatMs: 5000, streamWindow: 65536, maxFramePayload: 1048576, instance: 'f3a9c2', worker: 2 });
    expect(hello.body).toEqual({ ...agentHello, worker: 2, capabilities: ['goodbye'] });
    expect(decodeFrames(encodeFrame(hello), 1024)).toEqual([hello]);
  });

  it('leaves worker out of a HELLO that has none', () => {
    const hello = buildHello({ role: 'hub', id: 'hub-1', heartbeatMs: 5000, streamWindow: 65536, maxFramePayload: 1048576, instance: 'hub-1' });
    expect('worker' in hello.body).toBe(false);
  });

  it('accepts a HELLO of the same major version and keeps only the capabilities both sides know', () => {
    const check = checkHello({ ...agentHello, capabilities: ['goodbye', 'teleport', 'close-codes-v9'] }, 'agent');
    expect(check).toEqual({ accepted: true, capabilities: new Set(['goodbye']) });
  });

  it('takes a HELLO without capabilities as version 1 as it shipped: accepted, no added feature', () => {
    expect(checkHello(agentHello, 'agent')).toEqual({ accepted: true, capabilities: new Set() });
  });

  it('uses no capability the peer did not list, even one this side has', () => {
    expect(negotiateCapabilities([], LOCAL_CAPABILITIES)).toEqual(new Set());
    expect(negotiateCapabilities(['goodbye'], [])).toEqual(new Set());
  });

  it('refuses another major version, with GOODBYE only for a peer that lists it', () => {
    const newer = checkHello({ ...agentHello, version: 2, capabilities: ['goodbye', 'something-new'] }, 'agent');
    expect(newer).toMatchObject({ accepted: false, code: 'unsupported-version', peerTakesGoodbye: true });
    expect(newer.accepted === false && newer.reason).toContain('version 2');
    expect(checkHello({ ...agentHello, version: 0 }, 'agent')).toMatchObject({ accepted: false, code: 'unsupported-version', peerTakesGoodbye: false });
  });

  it('refuses a peer of the same role', () => {
    expect(checkHello({ ...agentHello, capabilities: ['goodbye'] }, 'hub')).toMatchObject({ accepted: false, code: 'wrong-role' });
  });
});
