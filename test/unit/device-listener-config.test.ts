import mqttPacket, { type IConnectPacket } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { agentConfigSchema, deviceListeners } from '../../edge-agent/config.js';
import { admitConnect } from '../../edge-agent/connect-packet.js';
import { parseConnect } from '../../shared/mqtt-connect.js';
import { validateConfig } from '../../shared/config-loader.js';
import { isEdgemuxError } from '../../shared/errors.js';

const LIMITS = { maxClientIdLength: 256 };

const base = { devPki: '/tmp/unused' };

function problems(layer: Record<string, unknown>): string {
  try {
    validateConfig(agentConfigSchema, [base, layer], 'edge-agent');
  } catch (err) {
    if (isEdgemuxError(err, 'E_CONFIG')) return err.message;
    throw err;
  }
  throw new Error('configuration was accepted');
}

describe('agent listener configuration', () => {
  it('defaults to the plain TCP listener of listen, on 0.0.0.0:1883', () => {
    const config = validateConfig(agentConfigSchema, [base], 'edge-agent');
    expect(deviceListeners(config)).toEqual([{ type: 'tcp', host: '0.0.0.0', port: 1883, backlog: 4096 }]);
    const flags = validateConfig(agentConfigSchema, [base, { listen: { host: '127.0.0.1', port: 2883 } }], 'edge-agent');
    expect(deviceListeners(flags)).toEqual([{ type: 'tcp', host: '127.0.0.1', port: 2883, backlog: 4096 }]);
  });

  it('binds configured listeners to loopback unless told otherwise, with /mqtt as the WebSocket path', () => {
    const config = validateConfig(
      agentConfigSchema,
      [base, { listeners: [{ type: 'ws', port: 8080 }, { type: 'tls', host: '0.0.0.0', port: 8883, cert: 'c.pem', key: 'k.pem' }] }],
      'edge-agent',
    );
    expect(deviceListeners(config)).toMatchObject([
      { type: 'ws', host: '127.0.0.1', port: 8080, path: '/mqtt' },
      { type: 'tls', host: '0.0.0.0', port: 8883, requireClientCert: false },
    ]);
  });

  it('names the key of every bad listener setting', () => {
    const message = problems({
      listeners: [
        { type: 'tls', port: 8883, cert: 'c.pem', key: 'k.pem', requireClientCert: true },
        { type: 'wss', port: 8884, cert: 'c.pem', key: 'k.pem', ca: 'ca.pem', identityAs: 'clientId' },
        { type: 'ws', port: 8080, path: 'mqtt' },
        { type: 'quic', port: 1 },
        { type: 'tls', port: 8885 },
      ],
    });
    expect(message).toMatch(/listeners\.0\.ca: requireClientCert needs the CA/);
    expect(message).toMatch(/listeners\.1\.identityAs: .*set requireClientCert: true \(got "clientId"\)/);
    expect(message).toMatch(/listeners\.2\.path: an HTTP path starting with \/ \(got "mqtt"\)/);
    expect(message).toMatch(/listeners\.3\.type: /);
    expect(message).toMatch(/listeners\.4\.cert: .*\(got missing\)/);
  });

  it('refuses listen (or --host/--port) beside listeners instead of ignoring one of them', () => {
    expect(problems({ listen: { port: 1883 }, listeners: [{ type: 'ws', port: 8080 }] })).toMatch(/listen: listeners replaces the default TCP listener/);
  });
});

describe('a CONNECT named by the device certificate', () => {
  const connect = (fields: Partial<IConnectPacket>, protocolVersion: 4 | 5 = 4): Buffer =>
    mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion, clientId: 'sent-id', clean: true, keepalive: 30, ...fields });

  it('replaces the client ID in the bytes forwarded, keeping the rest', () => {
    const verdict = admitConnect(connect({ username: 'u', password: Buffer.from('p') }), 'emx-', LIMITS, { name: 'sensor-1', as: 'clientId' });
    if (!verdict.ok) throw new Error(verdict.reason);
    expect(verdict.connect.clientId).toBe('sensor-1');
    const forwarded = parseConnect(verdict.connect.bytes);
    expect(forwarded).toMatchObject({ clientId: 'sensor-1', username: 'u', keepalive: 30 });
    expect(forwarded.password?.toString()).toBe('p');
  });

  it('replaces the username, or both, in MQTT 5 too', () => {
    const asUsername = admitConnect(connect({ username: 'claimed' }, 5), 'emx-', LIMITS, { name: 'sensor-2', as: 'username' });
    if (!asUsername.ok) throw new Error(asUsername.reason);
    expect(parseConnect(asUsername.connect.bytes)).toMatchObject({ clientId: 'sent-id', username: 'sensor-2', protocolVersion: 5 });
    expect(asUsername.connect.username).toBe('sensor-2');
    const both = admitConnect(connect({}, 5), 'emx-', LIMITS, { name: 'sensor-3', as: 'both' });
    if (!both.ok) throw new Error(both.reason);
    expect(parseConnect(both.connect.bytes)).toMatchObject({ clientId: 'sensor-3', username: 'sensor-3' });
  });

  it('gives a device with an empty client ID and a persistent session its certificate name instead of refusing it', () => {
    const bytes = connect({ clientId: '' });
    // mqtt-packet will not generate this CONNECT: clear the clean session flag (MQTT 3.1.1 §3.1.2.4) by hand.
    bytes[9] &= ~0x02;
    expect(admitConnect(bytes, 'emx-', LIMITS).ok).toBe(false);
    const verdict = admitConnect(bytes, 'emx-', LIMITS, { name: 'sensor-4', as: 'clientId' });
    if (!verdict.ok) throw new Error(verdict.reason);
    expect(verdict.connect).toMatchObject({ clientId: 'sensor-4', clientIdAssigned: false, cleanSession: false });
  });

  it('forwards the device bytes untouched when the certificate name is what the device sent', () => {
    const bytes = connect({ clientId: 'sensor-5' });
    const verdict = admitConnect(bytes, 'emx-', LIMITS, { name: 'sensor-5', as: 'clientId' });
    if (!verdict.ok) throw new Error(verdict.reason);
    expect(verdict.connect.bytes).toBe(bytes);
  });
});
