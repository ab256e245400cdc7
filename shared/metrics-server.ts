import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, type Registry } from 'prom-client';

/** Bounds on what one unauthenticated peer of the metrics port can hold. */
const REQUEST_TIMEOUT_MS = 10_000;
const MAX_CONNECTIONS = 64;

export interface MetricsServer {
  registry: Registry;
  address: AddressInfo;
  close(): Promise<void>;
}

/** Whether a component can do its job now; `reasons` say what stops it. */
export interface Readiness {
  ready: boolean;
  reasons: string[];
  [key: string]: unknown;
}

/** A gauge that reads its value at scrape time. */
export function readGauge(registry: Registry, name: string, help: string, read: () => number): void {
  new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
}

/**
 * A counter mirroring a total the component keeps: each scrape adds the
 * growth since the last, so the component counts with plain numbers on its
 * hot path and prom-client only at scrape time.
 */
export function mirrorTotal(registry: Registry, name: string, help: string, read: () => number): void {
  let seen = 0;
  new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const now = read();
      this.inc(Math.max(0, now - seen));
      seen = now;
    },
  });
}

/**
 * Memoizes `read` for the duration of one scrape: prom-client calls every
 * metric's collect() in the same turn of the event loop, so all gauges share
 * one snapshot instead of each walking every device again.
 */
export function perScrape<T>(read: () => T): () => T {
  let snapshot: { value: T } | null = null;
  return () => {
    if (snapshot === null) {
      snapshot = { value: read() };
      setImmediate(() => {
        snapshot = null;
      });
    }
    return snapshot.value;
  };
}

/**
 * Prometheus metrics on /metrics; /healthz answers 200 while the process
 * serves requests at all (a liveness check: restart me if this fails);
 * /readyz answers 200 when `ready()` says the component can do its job and
 * 503 with the reasons otherwise (a readiness check: send me no work).
 */
export async function startMetricsServer(options: {
  host: string;
  port: number;
  registry: Registry;
  ready: () => Readiness;
  /** Extra fields for /healthz, e.g. the component's stats. */
  details?: () => Record<string, unknown>;
}): Promise<MetricsServer> {
  collectDefaultMetrics({ register: options.registry });
  const json = (response: http.ServerResponse, status: number, body: unknown): void => {
    response.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(body));
  };
  const server = http.createServer((request, response) => {
    if (request.method !== 'GET') {
      response.writeHead(405).end();
      return;
    }
    const path = (request.url ?? '').split('?')[0];
    if (path === '/metrics') {
      options.registry.metrics().then(
        (text) => response.writeHead(200, { 'content-type': options.registry.contentType }).end(text),
        (err: Error) => response.writeHead(500).end(err.message),
      );
      return;
    }
    if (path === '/healthz') {
      json(response, 200, { healthy: true, ...options.details?.() });
      return;
    }
    if (path === '/readyz') {
      const readiness = options.ready();
      json(response, readiness.ready ? 200 : 503, readiness);
      return;
    }
    response.writeHead(404).end();
  });
  // Scrapes and probes are small GETs: a peer slower than this is not a scraper (node's defaults are 60 s and 5 min).
  server.headersTimeout = REQUEST_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  return {
    registry: options.registry,
    address: server.address() as AddressInfo,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
