import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Registry } from 'prom-client';

export interface MetricsServer {
  registry: Registry;
  address: AddressInfo;
  close(): Promise<void>;
}

/**
 * Prometheus metrics on /metrics and a health check on /healthz (200 while
 * `healthy()` says so, 503 otherwise, with the component's stats as JSON).
 */
export async function startMetricsServer(options: {
  host: string;
  port: number;
  registry: Registry;
  health: () => { healthy: boolean; [key: string]: unknown };
}): Promise<MetricsServer> {
  collectDefaultMetrics({ register: options.registry });
  const server = http.createServer((request, response) => {
    if (request.method !== 'GET') {
      response.writeHead(405).end();
      return;
    }
    if (request.url === '/metrics') {
      options.registry.metrics().then(
        (text) => response.writeHead(200, { 'content-type': options.registry.contentType }).end(text),
        (err: Error) => response.writeHead(500).end(err.message),
      );
      return;
    }
    if (request.url === '/healthz') {
      const health = options.health();
      response.writeHead(health.healthy ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(health));
      return;
    }
    response.writeHead(404).end();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  return {
    registry: options.registry,
    address: server.address() as AddressInfo,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
