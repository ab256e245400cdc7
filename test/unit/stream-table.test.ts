import { Duplex } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { quietLogger } from '../../shared/logger.js';
import { MuxStream, type StreamSink } from '../../shared/mux-stream.js';
import { OPENED } from '../../shared/stream-lifecycle.js';
import { type StreamEntry, StreamTable } from '../../shared/stream-table.js';
import { Tunnel } from '../../shared/tunnel.js';

const tunnels: Tunnel[] = [];

/** A tunnel over a socket that swallows every write: the table only needs its identity. */
function tunnel(): Tunnel {
  const socket = new Duplex({ read() {}, write: (_chunk, _encoding, done) => done() });
  const created = new Tunnel(socket, { maxFramePayload: 1024, heartbeatMs: 60_000, deadAfterMs: 120_000, highWaterBytes: 1 << 20, log: quietLogger('test') });
  tunnels.push(created);
  return created;
}

const sink: StreamSink = { data() {}, writable() {} };

function entry(id: number, on: Tunnel): StreamEntry {
  return { id, stream: new MuxStream(id, on, sink, 1024, 1024, 1024), tunnel: on, state: OPENED };
}

afterEach(() => {
  for (const open of tunnels.splice(0)) open.close('shutdown', 'test over');
});

describe('stream table', () => {
  it('holds a stream on its tunnel and hands DATA only to streams attached there', () => {
    const table = new StreamTable<StreamEntry>('hub');
    const a = tunnel();
    const b = tunnel();
    const one = entry(1, a);
    table.add(one);
    expect(table.attachedTo(a, 1)).toBe(one);
    expect(table.attachedTo(b, 1)).toBeUndefined();
    expect(table.heldBy(a)).toEqual([one]);
    table.step(one, { type: 'tunnel-lost', at: 0 });
    expect(one.tunnel).toBeNull();
    expect(table.attachedTo(a, 1)).toBeUndefined();
    expect(table.heldCount(a)).toBe(0);
  });

  it('moves a stream to the tunnel of an honoured RESUME, and not for a stale one (11.6)', () => {
    const table = new StreamTable<StreamEntry>('hub');
    const a = tunnel();
    const b = tunnel();
    const c = tunnel();
    const one = entry(1, a);
    table.add(one);
    table.step(one, { type: 'resume-received', attempt: 2 }, b);
    expect(one.tunnel).toBe(b);
    expect(table.heldBy(a)).toEqual([]);
    expect(table.heldBy(b)).toEqual([one]);
    expect(table.step(one, { type: 'resume-received', attempt: 1 }, c)).toEqual([]);
    expect(one.tunnel).toBe(b);
    expect(table.heldCount(c)).toBe(0);
  });

  it('holds an agent stream on the tunnel of its outstanding RESUME without attaching it there (5.1)', () => {
    const table = new StreamTable<StreamEntry>('agent');
    const a = tunnel();
    const b = tunnel();
    const one = entry(1, a);
    table.add(one);
    table.step(one, { type: 'tunnel-lost', at: 0 });
    table.step(one, { type: 'resume-sent' }, b);
    expect(table.heldOn(b, 1)).toBe(one);
    expect(table.attachedTo(b, 1)).toBeUndefined();
    table.step(one, { type: 'tunnel-lost', at: 5 });
    expect(table.heldOn(b, 1)).toBeUndefined();
  });

  it('lets a forgotten stream go from the table at once', () => {
    const table = new StreamTable<StreamEntry>('agent');
    const a = tunnel();
    const one = entry(1, a);
    table.add(one);
    table.step(one, { type: 'close-received', code: 'broker-closed' });
    expect(table.get(1)).toBeUndefined();
    expect(table.size).toBe(0);
    expect(table.heldCount(a)).toBe(0);
  });
});
