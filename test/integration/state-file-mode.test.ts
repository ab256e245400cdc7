import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { PkiStore } from '../../cloud-hub/pki-store.js';
import { removePki, startChain } from '../support/chain.js';

const dir = mkdtempSync(join(tmpdir(), 'edgemux-state-mode-'));

function modeOf(path: string): number {
  return statSync(path).mode & 0o777;
}

afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await removePki();
});

describe('the hub state file', () => {
  it('and its WAL are readable by their owner only, new or left looser by an older version', async () => {
    const fresh = join(dir, 'fresh.db');
    const loose = join(dir, 'loose.db');
    writeFileSync(loose, '', { mode: 0o644 });
    expect(modeOf(loose)).toBe(0o644);
    for (const statePath of [fresh, loose]) {
      const chain = await startChain({ hub: { statePath } });
      try {
        const device = await chain.device({ clientId: 'mode-probe', clean: false });
        await device.subscribeAsync('mode/t', { qos: 1 });
        await device.publishAsync('mode/t', 'persisted', { qos: 1, retain: true });
        for (const file of [statePath, `${statePath}-wal`, `${statePath}-shm`]) {
          expect(modeOf(file), file).toBe(0o600);
        }
      } finally {
        await chain.close();
      }
    }
  });
});

describe('the PKI store', () => {
  it('and its WAL are readable by their owner only, new or left looser by an older version', () => {
    const fresh = join(dir, 'fresh-pki.sqlite');
    const loose = join(dir, 'loose-pki.sqlite');
    writeFileSync(loose, '', { mode: 0o644 });
    for (const path of [fresh, loose]) {
      const store = new PkiStore(path);
      try {
        store.createToken('site-1', 60_000);
        for (const file of [path, `${path}-wal`, `${path}-shm`]) {
          expect(modeOf(file), file).toBe(0o600);
        }
      } finally {
        store.close();
      }
    }
  });
});
