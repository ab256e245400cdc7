import type net from 'node:net';
import { EdgemuxError } from './errors.js';

/** An HTTP proxy that opens TCP tunnels with CONNECT (RFC 9110 §9.3.6). */
export interface HttpProxy {
  host: string;
  port: number;
  /** Basic credentials (RFC 7617); never logged. */
  username?: string;
  password?: string;
}

/** Largest CONNECT response head read: a proxy that sends more is not one we can talk to. */
const MAX_RESPONSE_HEAD = 16 * 1024;

/** Parses `http://[user:password@]host[:port]`; `key` names the setting in errors, which never repeat the password. */
export function parseProxyUrl(value: string, key: string): HttpProxy {
  let url: URL;
  try {
    url = new URL(value.includes('://') ? value : `http://${value}`);
  } catch {
    throw new EdgemuxError('E_CONFIG', `${key}: expected http://[user:password@]host[:port] (got ${JSON.stringify(redactProxyUrl(value))})`);
  }
  if (url.protocol !== 'http:' || url.hostname === '' || (url.pathname !== '/' && url.pathname !== '')) {
    throw new EdgemuxError('E_CONFIG', `${key}: expected http://[user:password@]host[:port] (got ${JSON.stringify(redactProxyUrl(value))})`);
  }
  return {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: url.port === '' ? 80 : Number(url.port),
    ...(url.username !== '' ? { username: decodeURIComponent(url.username), password: decodeURIComponent(url.password) } : {}),
  };
}

/** The URL with its password replaced, fit for logs and error messages. */
export function redactProxyUrl(value: string): string {
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/:@]*):[^/@]*@/i, '$1:***@');
}

/**
 * True when `host` is to be reached directly by NO_PROXY's rules as curl and
 * most tools read them: comma- or space-separated names, each matching the
 * host itself and its subdomains (a leading dot or `*.` is the same), `*` for
 * every host, an optional `:port` restricting the entry to that port.
 */
export function bypassesProxy(host: string, port: number, noProxy: string | undefined): boolean {
  if (noProxy === undefined) return false;
  const name = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  for (const raw of noProxy.split(/[\s,]+/)) {
    let entry = raw.trim().toLowerCase();
    if (entry === '') continue;
    if (entry === '*') return true;
    const portMatch = /^(.*[^:]):(\d+)$/.exec(entry);
    if (portMatch !== null && !entry.startsWith('[') && entry.split(':').length === 2) {
      if (Number(portMatch[2]) !== port) continue;
      entry = portMatch[1];
    }
    entry = entry.replace(/^\[(.*)\]$/, '$1').replace(/^\*?\./, '');
    if (name === entry || name.endsWith(`.${entry}`)) return true;
  }
  return false;
}

/** The proxy for a hub from the environment (`HTTPS_PROXY`, then `https_proxy`), null when none or NO_PROXY excludes the hub. */
export function proxyFromEnvironment(env: NodeJS.ProcessEnv): { url: string; key: string } | null {
  for (const key of ['HTTPS_PROXY', 'https_proxy']) {
    const value = env[key];
    if (value !== undefined && value.trim() !== '') return { url: value.trim(), key };
  }
  return null;
}

export function noProxyFromEnvironment(env: NodeJS.ProcessEnv): string | undefined {
  return env.NO_PROXY ?? env.no_proxy;
}

export function connectRequest(proxy: HttpProxy, target: { host: string; port: number }): string {
  const authority = target.host.includes(':') ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
  const lines = [`CONNECT ${authority} HTTP/1.1`, `Host: ${authority}`];
  if (proxy.username !== undefined) {
    const token = Buffer.from(`${proxy.username}:${proxy.password ?? ''}`).toString('base64');
    lines.push(`Proxy-Authorization: Basic ${token}`);
  }
  return `${lines.join('\r\n')}\r\n\r\n`;
}

/** Why a proxy did not open the tunnel; `status` is the proxy's HTTP status when it answered. */
export class ProxyConnectError extends Error {
  constructor(
    message: string,
    readonly status: number | null,
  ) {
    super(message);
    this.name = 'ProxyConnectError';
  }

  /** 502, 503, 504: the proxy could not reach the hub, which says the path is down, not that we are refused. */
  get hubUnreachable(): boolean {
    return this.status === 502 || this.status === 503 || this.status === 504;
  }
}

/**
 * Asks the proxy on `socket` (connected) for a tunnel to `target`. Resolves
 * once the proxy answered 2xx, with the socket then carrying the tunnel.
 */
export function proxyConnect(socket: net.Socket, proxy: HttpProxy, target: { host: string; port: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    let head = Buffer.alloc(0);
    const cleanup = (): void => {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const fail = (err: ProxyConnectError): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onError = (err: Error): void => fail(new ProxyConnectError(`proxy connection failed: ${err.message}`, null));
    const onClose = (): void => fail(new ProxyConnectError('proxy closed the connection before answering CONNECT', null));
    const onData = (chunk: Buffer): void => {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end === -1) {
        if (head.length > MAX_RESPONSE_HEAD) fail(new ProxyConnectError(`proxy answered CONNECT with more than ${MAX_RESPONSE_HEAD} bytes of head`, null));
        return;
      }
      const statusLine = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
      const match = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(statusLine);
      if (match === null) {
        fail(new ProxyConnectError(`proxy answered CONNECT with ${JSON.stringify(statusLine.slice(0, 80))}`, null));
        return;
      }
      const status = Number(match[1]);
      if (status < 200 || status > 299) {
        fail(new ProxyConnectError(`proxy refused CONNECT: ${status} ${match[2] ?? ''}`.trim(), status));
        return;
      }
      if (head.length > end + 4) {
        // The hub's TLS server never speaks first: these bytes are the proxy's, and TLS would choke on them.
        fail(new ProxyConnectError('proxy sent bytes after its CONNECT answer, before the tunnel spoke', status));
        return;
      }
      cleanup();
      resolve();
    };
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
    socket.write(connectRequest(proxy, target));
  });
}
