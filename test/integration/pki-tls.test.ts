import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DevPki, createCertificateAuthority, ensureDevPki, issueCertificate } from '../../shared/pki.js';

const KEYGEN_TIMEOUT_MS = 30_000;

interface ClientOutcome {
  received: string;
  error: Error | undefined;
}

describe('mutual TLS with the dev PKI', () => {
  let tmp: string;
  let pki: DevPki;
  let server: tls.Server;
  let port: number;
  const serverSockets = new Set<tls.TLSSocket>();
  const acceptedCommonNames: Array<string | string[] | undefined> = [];

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'edgemux-pki-tls-'));
    pki = await ensureDevPki(join(tmp, 'pki'));
    server = tls.createServer({ ...pki.hub, requestCert: true, rejectUnauthorized: true }, (socket) => {
      serverSockets.add(socket);
      socket.on('close', () => serverSockets.delete(socket));
      const commonName = socket.getPeerCertificate().subject.CN;
      acceptedCommonNames.push(commonName);
      socket.end(`hello ${commonName}`);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  }, KEYGEN_TIMEOUT_MS);

  afterAll(async () => {
    for (const socket of serverSockets) socket.destroy();
    if (server?.listening) await new Promise<void>((done) => server.close(() => done()));
    await rm(tmp, { recursive: true, force: true });
  });

  /** Resolves once the connection is fully closed, whatever the reason. */
  function connect(opts: Partial<tls.ConnectionOptions>): Promise<ClientOutcome> {
    return new Promise((done) => {
      // No servername: the client then checks the hub cert against the 127.0.0.1 IP SAN.
      const socket = tls.connect({ host: '127.0.0.1', port, ca: pki.ca, ...opts });
      const outcome: ClientOutcome = { received: '', error: undefined };
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => (outcome.received += chunk));
      socket.on('error', (err) => (outcome.error = err));
      socket.on('close', () => done(outcome));
    });
  }

  it('accepts an agent certificate and exposes its CN to the hub', async () => {
    const agent = pki.agents['agent-1'];
    const outcome = await connect({ cert: agent.cert, key: agent.key });
    expect(outcome.error).toBeUndefined();
    expect(outcome.received).toBe('hello agent-1');
    expect(acceptedCommonNames).toEqual(['agent-1']);
  });

  it('rejects a client that presents no certificate', async () => {
    const rejected = once(server, 'tlsClientError');
    const outcome = await connect({});
    const [serverError] = (await rejected) as [NodeJS.ErrnoException];
    expect(serverError.code).toBe('ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE');
    expect(outcome.received).toBe('');
    expect(outcome.error).toBeDefined();
    expect(acceptedCommonNames).toEqual(['agent-1']);
  });

  it('rejects a client certificate from a different CA', async () => {
    // Same CN and role as a genuine agent, so only the issuing CA differs.
    const foreignCa = createCertificateAuthority({ commonName: 'edgemux dev CA' });
    const impostor = issueCertificate(foreignCa, { commonName: 'agent-1', role: 'client' });
    const rejected = once(server, 'tlsClientError');
    const outcome = await connect({ cert: impostor.certPem, key: impostor.keyPem });
    // Node verifies the chain itself after the TLS 1.3 handshake and drops the
    // socket without an alert, so the reason is on the socket, not the error,
    // and the client sees a bare close rather than an error.
    const [, rejectedSocket] = (await rejected) as [Error, tls.TLSSocket];
    expect(rejectedSocket.authorized).toBe(false);
    expect(rejectedSocket.authorizationError).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
    expect(outcome.received).toBe('');
    expect(acceptedCommonNames).toEqual(['agent-1']);
  }, KEYGEN_TIMEOUT_MS);
});
