import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const repo = resolve(import.meta.dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'edgemux-cli-config-'));

/** Runs a CLI to completion; a bad configuration must stop it before it listens on anything. */
function runCli(script: string, args: string[], env: NodeJS.ProcessEnv = process.env): { status: number | null; stderr: string; stdout: string } {
  const result = spawnSync(process.execPath, [join(repo, script), ...args], { encoding: 'utf8', timeout: 15_000, env });
  return { status: result.status, stderr: result.stderr, stdout: result.stdout };
}

function configFile(name: string, yaml: string): string {
  const path = join(dir, name);
  writeFileSync(path, yaml);
  return path;
}

describe('a bad configuration stops start-up with a message naming the key', () => {
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('edge-agent: every bad key is named with its value and what is expected', () => {
    const config = configFile(
      'agent.yaml',
      ['devPki: ' + join(dir, 'pki'), 'tunnels: 99', 'listen: { port: 1883, backlog: 0 }', "hubs: ['no-port-here']", ''].join('\n'),
    );
    const { status, stderr, stdout } = runCli('dist/edge-agent/cli.js', ['--config', config]);
    expect(status).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('invalid edge-agent configuration');
    expect(stderr).toMatch(/tunnels: .*\(got 99\)/);
    expect(stderr).toMatch(/listen\.backlog: .*\(got 0\)/);
    expect(stderr).toMatch(/hubs\.0: expected host:port \(got "no-port-here"\)/);
    // A plain message for an operator, not a stack trace.
    expect(stderr).not.toMatch(/\n\s+at /);
  });

  it('edge-agent: a bad proxy or transport list is named, and the proxy password is never shown', () => {
    const config = configFile(
      'agent-proxy.yaml',
      ['devPki: ' + join(dir, 'pki'), "transports: [tls, carrier-pigeon]", "proxy: { url: 'socks5://site:s3cret-pw@proxy.lan:1080' }", ''].join('\n'),
    );
    const { status, stderr } = runCli('dist/edge-agent/cli.js', ['--config', config]);
    expect(status).toBe(2);
    expect(stderr).toMatch(/transports\.1: .*\(got "carrier-pigeon"\)/);
    expect(stderr).toMatch(/proxy\.url: expected http:\/\/\[user:password@\]host\[:port\] \(got "socks5:\/\/site:\*\*\*@proxy\.lan:1080"\)/);
    expect(stderr).not.toContain('s3cret-pw');
  });

  it('edge-agent: a bad HTTPS_PROXY is named as such, without its password', () => {
    const { status, stderr } = runCli('dist/edge-agent/cli.js', ['--dev-pki', join(dir, 'pki'), '--port', '0'], {
      ...process.env,
      HTTPS_PROXY: 'ftp://site:s3cret-pw@proxy.lan:21',
    });
    expect(status).toBe(2);
    expect(stderr).toMatch(/HTTPS_PROXY: expected http:\/\/\[user:password@\]host\[:port\]/);
    expect(stderr).not.toContain('s3cret-pw');
  });

  it('edge-agent: a flag that is not a number is named', () => {
    const { status, stderr } = runCli('dist/edge-agent/cli.js', ['--dev-pki', join(dir, 'pki'), '--port', 'eighty']);
    expect(status).toBe(2);
    expect(stderr).toMatch(/listen\.port: .*\(got not a number\)/);
  });

  it('cloud-hub: a broker URL of the wrong scheme is named by its path in the routes', () => {
    const config = configFile(
      'hub.yaml',
      ['devPki: ' + join(dir, 'pki'), 'routes:', "  - match: { clientId: 'sensor-*' }", "    backend: { brokers: [{ url: 'http://broker.example:1883' }] }", ''].join('\n'),
    );
    const { status, stderr } = runCli('dist/cloud-hub/cli.js', ['--config', config]);
    expect(status).toBe(2);
    expect(stderr).toContain('invalid cloud-hub configuration');
    expect(stderr).toMatch(/routes\.0\.backend\.brokers\.0\.url: expected mqtt:\/\/host\[:port\] or mqtts:\/\/host\[:port\] \(got "http:\/\/broker\.example:1883"\)/);
  });

  it('cloud-hub: a config file that is not YAML is reported as such', () => {
    const config = configFile('broken.yaml', 'routes: [unclosed\n');
    const { status, stderr } = runCli('dist/cloud-hub/cli.js', ['--config', config]);
    expect(status).toBe(2);
    expect(stderr).toContain(`config file ${config} is not valid YAML`);
  });

  it('cloud-hub: an app port beyond loopback without authentication stops start-up', () => {
    const { status, stderr, stdout } = runCli('dist/cloud-hub/cli.js', ['--dev-pki', join(dir, 'pki'), '--app-host', '0.0.0.0']);
    expect(status).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toMatch(/app\.host: the application port listens beyond loopback without authentication: set app\.passwordFile .*\(got "0\.0\.0\.0"\)/);
  });

  it('cloud-hub: allowAnonymous false with no password file would refuse everyone and is named', () => {
    const config = configFile('closed.yaml', ['devPki: ' + join(dir, 'pki'), 'app: { allowAnonymous: false }', ''].join('\n'));
    const { status, stderr } = runCli('dist/cloud-hub/cli.js', ['--config', config]);
    expect(status).toBe(2);
    expect(stderr).toMatch(/app\.allowAnonymous: false with no passwordFile refuses every application.*\(got false\)/);
  });

  it('cloud-hub: a missing or malformed password file is named by its key and line, without echoing a hash', () => {
    const missing = join(dir, 'no-passwords');
    const absent = runCli('dist/cloud-hub/cli.js', ['--dev-pki', join(dir, 'pki'), '--app-password-file', missing]);
    expect(absent.status).toBe(2);
    expect(absent.stderr).toContain(`app.passwordFile: cannot read ${missing} (ENOENT)`);

    const file = configFile('passwords', ['# operators', 'ops:$7$101$c2FsdHNhbHQ=$aGFzaA==', 'plain:hunter2', ''].join('\n'));
    const malformed = runCli('dist/cloud-hub/cli.js', ['--dev-pki', join(dir, 'pki'), '--app-password-file', file]);
    expect(malformed.status).toBe(2);
    expect(malformed.stderr).toMatch(new RegExp(`app\\.passwordFile: ${file} line 2: user "ops": a \\$7\\$ hash must be 64 bytes \\(got 4\\)`));
    expect(malformed.stderr).not.toMatch(/\n\s+at /);

    const plain = configFile('plain-passwords', ['plain:hunter2', ''].join('\n'));
    const plainText = runCli('dist/cloud-hub/cli.js', ['--dev-pki', join(dir, 'pki'), '--app-password-file', plain]);
    expect(plainText.status).toBe(2);
    expect(plainText.stderr).toContain('line 1: user "plain": expected a hashed password');
    expect(plainText.stderr).not.toContain('hunter2');
  });

  it('cloud-hub: a missing certificate file is named by its key', () => {
    const missing = join(dir, 'nope.pem');
    const { status, stderr } = runCli('dist/cloud-hub/cli.js', ['--ca', missing, '--cert', missing, '--key', missing]);
    expect(status).toBe(2);
    expect(stderr).toMatch(/tls\.\w+: cannot read .*nope\.pem \(ENOENT\)/);
  });
});
