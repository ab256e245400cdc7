import { describe, expect, it } from 'vitest';
import { hubConfigSchema } from '../../cloud-hub/config.js';
import { validateConfig } from '../../shared/config-loader.js';

function hubConfig(layer: Record<string, unknown>) {
  return validateConfig(hubConfigSchema, [{ devPki: '/tmp/pki' }, layer], 'cloud-hub');
}

describe('cloud-hub configuration of limits', () => {
  it('refuses an app port that takes packets larger than a tunnel carries to devices', () => {
    expect(() => hubConfig({ app: { maxPacketSize: 2 * 1024 * 1024 } })).toThrow(
      /app\.maxPacketSize: must not exceed maxPacketSize, the largest packet a tunnel carries to a device \(got 2097152\)/,
    );
    expect(hubConfig({ maxPacketSize: 4 * 1024 * 1024, app: { maxPacketSize: 2 * 1024 * 1024 } }).app.maxPacketSize).toBe(2 * 1024 * 1024);
  });
});
