import { describe, expect, it } from 'vitest';
import { agentProxy } from '../../edge-agent/main.js';
import { agentConfigSchema } from '../../edge-agent/config.js';
import { isEdgemuxError } from '../../shared/errors.js';
import { bypassesProxy, connectRequest, parseProxyUrl, redactProxyUrl } from '../../shared/http-proxy.js';

describe('HTTP proxy settings', () => {
  it('reads host, port and basic credentials from a proxy URL', () => {
    expect(parseProxyUrl('http://site:p%40ss@proxy.lan:3128', 'proxy.url')).toEqual({ host: 'proxy.lan', port: 3128, username: 'site', password: 'p@ss' });
    expect(parseProxyUrl('proxy.lan:8080', 'HTTPS_PROXY')).toEqual({ host: 'proxy.lan', port: 8080 });
    expect(parseProxyUrl('http://[::1]:3128/', 'proxy.url')).toEqual({ host: '::1', port: 3128 });
  });

  it('refuses what is not an HTTP proxy, naming the setting and hiding the password', () => {
    for (const bad of ['https://u:hidden@proxy:443', 'socks5://u:hidden@proxy:1080', 'http://u:hidden@proxy:3128/path']) {
      let error: unknown;
      try {
        parseProxyUrl(bad, 'HTTPS_PROXY');
      } catch (err) {
        error = err;
      }
      expect(isEdgemuxError(error, 'E_CONFIG')).toBe(true);
      expect((error as Error).message).toMatch(/^HTTPS_PROXY: /);
      expect((error as Error).message).not.toContain('hidden');
    }
    expect(redactProxyUrl('http://user:pw@host:1')).toBe('http://user:***@host:1');
  });

  it('asks for a CONNECT tunnel with Basic credentials', () => {
    expect(connectRequest({ host: 'p', port: 1, username: 'site', password: 'pw' }, { host: 'hub.example', port: 443 })).toBe(
      `CONNECT hub.example:443 HTTP/1.1\r\nHost: hub.example:443\r\nProxy-Authorization: Basic ${Buffer.from('site:pw').toString('base64')}\r\n\r\n`,
    );
    expect(connectRequest({ host: 'p', port: 1 }, { host: '::1', port: 8883 })).toBe('CONNECT [::1]:8883 HTTP/1.1\r\nHost: [::1]:8883\r\n\r\n');
  });

  it('reads NO_PROXY as curl does: names and their subdomains, leading dots, ports, *', () => {
    const noProxy = 'localhost, .internal,*.corp.example , 10.0.0.5,hub.example:8883';
    expect(bypassesProxy('localhost', 443, noProxy)).toBe(true);
    expect(bypassesProxy('hub.internal', 443, noProxy)).toBe(true);
    expect(bypassesProxy('internal', 443, noProxy)).toBe(true);
    expect(bypassesProxy('a.corp.example', 443, noProxy)).toBe(true);
    expect(bypassesProxy('10.0.0.5', 8883, noProxy)).toBe(true);
    expect(bypassesProxy('hub.example', 8883, noProxy)).toBe(true);
    expect(bypassesProxy('hub.example', 443, noProxy)).toBe(false);
    expect(bypassesProxy('nothub.example', 8883, noProxy)).toBe(false);
    expect(bypassesProxy('cloud.example', 443, noProxy)).toBe(false);
    expect(bypassesProxy('anything', 1, '*')).toBe(true);
    expect(bypassesProxy('anything', 1, undefined)).toBe(false);
  });

  it('takes the configured proxy over HTTPS_PROXY, and HTTPS_PROXY with NO_PROXY without one', () => {
    const base = agentConfigSchema.parse({ devPki: '/tmp/x' });
    const env = { HTTPS_PROXY: 'http://env-proxy:3128', NO_PROXY: '.lan' };
    expect(agentProxy(base, env)).toEqual({ proxy: { host: 'env-proxy', port: 3128 }, noProxy: '.lan' });
    expect(agentProxy(base, { https_proxy: 'http://lower:1' })).toEqual({ proxy: { host: 'lower', port: 1 }, noProxy: undefined });
    expect(agentProxy(base, {})).toEqual({ proxy: null, noProxy: undefined });
    const configured = agentConfigSchema.parse({ devPki: '/tmp/x', proxy: { url: 'http://cfg:8080', noProxy: 'hub' } });
    expect(agentProxy(configured, env)).toEqual({ proxy: { host: 'cfg', port: 8080 }, noProxy: 'hub' });
  });
});
