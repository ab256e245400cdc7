import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';

const repo = resolve(import.meta.dirname, '../..');

interface ComposeService {
  command?: string[];
  restart?: string;
  healthcheck?: { test: string[] };
  stop_grace_period?: string;
  volumes?: string[];
  ports?: string[];
}

/** Merges YAML anchors (`<<`) the way docker compose does. */
const compose = parseYaml(readFileSync(join(repo, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
  services: Record<string, ComposeService>;
};

const longRunning = ['hub', 'agent'] as const;

function flag(command: string[], name: string): string | undefined {
  const at = command.indexOf(name);
  return at === -1 ? undefined : command[at + 1];
}

describe('docker-compose.yml', () => {
  it('starts every program with flags its CLI accepts', () => {
    for (const [name, service] of Object.entries(compose.services)) {
      const command = service.command ?? [];
      if (command[0] !== 'node') continue;
      // --help after the real flags: parsing is strict, so an unknown flag fails before help is printed.
      const result = spawnSync(process.execPath, [join(repo, command[1]), ...command.slice(2), '--help'], { encoding: 'utf8', timeout: 15_000 });
      expect(result.status, `${name}: ${result.stderr}`).toBe(0);
    }
  });

  it('health-checks the hub and the agent by their readiness on the port their metrics listen on, and gives them time to stop', () => {
    for (const name of longRunning) {
      const service = compose.services[name];
      const command = service.command ?? [];
      const metricsPort = flag(command, '--metrics-port');
      expect(metricsPort, `${name} serves metrics`).toBeDefined();
      expect(flag(command, '--metrics-host'), `${name} metrics reachable from the host`).toBe('0.0.0.0');
      expect(service.healthcheck?.test.join(' '), name).toContain(`http://127.0.0.1:${metricsPort}/readyz`);
      expect(service.stop_grace_period, name).toMatch(/^\d+s$/);
      expect(service.restart, name).toBe('unless-stopped');
    }
  });

  it('keeps the CA key out of every long-running container', () => {
    for (const name of [...longRunning, 'sim']) {
      const mounts = compose.services[name].volumes ?? [];
      expect(mounts.filter((mount) => mount.startsWith('pki:')), name).toEqual([]);
    }
    const copied = (compose.services.pki.command ?? []).join(' ');
    expect(copied).not.toMatch(/ca-key\.pem/);
  });

  it('gives the hub and the agent exactly their own TLS files from the one-shot PKI service', () => {
    const root = mkdtempSync(join(tmpdir(), 'edgemux-compose-pki-'));
    try {
      for (const dir of ['pki', 'hub-tls', 'agent-tls']) mkdirSync(join(root, dir));
      const [shell, shellFlag, script] = compose.services.pki.command ?? [];
      const local = script
        .replaceAll('/app/', `${repo}/`)
        .replaceAll(/(^|[\s'])\/(pki|hub-tls|agent-tls)/g, (_match, before: string, dir: string) => `${before}${root}/${dir}`);
      const result = spawnSync(shell, [shellFlag, local], { encoding: 'utf8', timeout: 30_000 });
      expect(result.status, result.stderr).toBe(0);
      expect(readdirSync(join(root, 'hub-tls')).sort()).toEqual(['ca.pem', 'hub-key.pem', 'hub.pem']);
      expect(readdirSync(join(root, 'agent-tls')).sort()).toEqual(['agent-agent-1-key.pem', 'agent-agent-1.pem', 'ca.pem']);
      // The files the hub and agent commands name are the ones handed to them.
      for (const [name, dir] of [['hub', 'hub-tls'], ['agent', 'agent-tls']] as const) {
        const command = compose.services[name].command ?? [];
        for (const option of ['--ca', '--cert', '--key']) {
          const file = flag(command, option)?.replace(/^\/tls\//, '');
          expect(readdirSync(join(root, dir)), `${name} ${option}`).toContain(file);
        }
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('publishes application and metrics ports on the host loopback only', () => {
    for (const name of longRunning) {
      for (const mapping of compose.services[name].ports ?? []) {
        const containerPort = mapping.split(':').at(-1);
        if (containerPort === '1883' && name === 'hub') expect(mapping).toMatch(/^127\.0\.0\.1:/);
        if (containerPort?.startsWith('910')) expect(mapping).toMatch(/^127\.0\.0\.1:/);
      }
    }
  });
});
