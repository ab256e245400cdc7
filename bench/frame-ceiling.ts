/**
 * f. The ceiling: one connection carrying tunnel DATA frames with 64-byte
 *    payloads and nothing else, sender and receiver in separate processes.
 *    The sender uses the tunnel's own FrameWriter (frames gathered into 64 KiB
 *    writes) or one write() per frame; the receiver decodes with the tunnel's
 *    FrameDecoder and counts. Run this module twice: as receiver and sender.
 */
import net, { type AddressInfo } from 'node:net';
import tls from 'node:tls';
import { encodeFrame, FrameDecoder, FrameType } from '../shared/frame-codec.js';
import { FrameWriter } from '../shared/frame-writer.js';
import { serveRpc } from './rpc.js';

export interface CeilingTls {
  ca: string;
  cert: string;
  key: string;
}

export interface CeilingListen {
  host: string;
  tls: CeilingTls | null;
}

export interface CeilingSend {
  host: string;
  port: number;
  tls: CeilingTls | null;
  mode: 'batched' | 'per-frame';
  durationMs: number;
  payloadBytes: number;
}

/** Bytes queued in the socket above which the sender waits for 'drain'. */
const HIGH_WATER = 4 * 1024 * 1024;
const FRAMES_PER_ROUND = 1024;
const STREAMS = 1000;

let frames = 0;
let bytes = 0;

function receive(socket: net.Socket): void {
  const decoder = new FrameDecoder(1024 * 1024);
  const handler = {
    data: (): void => {
      frames++;
    },
    ack: (): void => undefined,
    control: (): void => undefined,
  };
  socket.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
    decoder.push(chunk, handler);
  });
  socket.on('error', () => socket.destroy());
}

function send(params: CeilingSend): Promise<{ frames: number }> {
  return new Promise((resolve, reject) => {
    const socket: net.Socket = params.tls
      ? tls.connect({ host: params.host, port: params.port, ...params.tls, minVersion: 'TLSv1.3', noDelay: true } as tls.ConnectionOptions)
      : net.connect({ host: params.host, port: params.port, noDelay: true });
    const payload = Buffer.alloc(params.payloadBytes, 0x5a);
    const writer = new FrameWriter(socket);
    let sent = 0;
    let end = 0;
    const pump = (): void => {
      while (socket.writableLength < HIGH_WATER && performance.now() < end) {
        for (let i = 0; i < FRAMES_PER_ROUND; i++) {
          const streamId = (sent++ % STREAMS) * 2 + 1;
          if (params.mode === 'batched') writer.data(streamId, payload);
          else socket.write(encodeFrame({ type: FrameType.DATA, streamId, payload }));
        }
        if (params.mode === 'batched') writer.flush();
      }
      if (performance.now() >= end) {
        socket.end();
        resolve({ frames: sent });
      } else if (socket.writableLength >= HIGH_WATER) {
        socket.once('drain', pump);
      } else {
        setImmediate(pump);
      }
    };
    socket.once(params.tls ? 'secureConnect' : 'connect', () => {
      end = performance.now() + params.durationMs;
      pump();
    });
    socket.on('error', reject);
  });
}

serveRpc({
  listen(params: CeilingListen): Promise<number> {
    const server = params.tls
      ? tls.createServer({ ...params.tls, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, receive)
      : net.createServer(receive);
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, params.host, () => resolve((server.address() as AddressInfo).port));
    });
  },
  count(): { frames: number; bytes: number } {
    return { frames, bytes };
  },
  send,
});
