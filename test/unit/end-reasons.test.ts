import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { Packr } from 'msgpackr';
import { END_CODES, receivedEndCode } from '../../shared/end-reasons.js';
import { isEdgemuxError } from '../../shared/errors.js';
import { decodeControlBody, encodeControlFrame, FrameType } from '../../shared/frame-codec.js';

/** The codes in the first column of the table of docs/errors.md. */
function documentedCodes(): string[] {
  const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  return [...doc.matchAll(/^\| `([a-z-]+)` +\|/gm)].map((match) => match[1]);
}

describe('end reasons', () => {
  it('are documented in docs/errors.md, each once, and the doc names no other', () => {
    const documented = documentedCodes();
    expect(new Set(documented).size).toBe(documented.length);
    expect([...documented].sort()).toEqual([...END_CODES].sort());
  });

  it('take a code a peer sent only when this side knows it', () => {
    expect(receivedEndCode('broker-closed')).toBe('broker-closed');
    expect(receivedEndCode('from-the-future')).toBe('unspecified');
    expect(receivedEndCode(undefined)).toBe('unspecified');
  });

  it('travel in CLOSE beside the free-text reason, which older peers send alone (docs/protocol.md 5.3)', () => {
    const frame = encodeControlFrame({ type: FrameType.CLOSE, streamId: 7, body: { code: 'unknown-stream', reason: 'unknown stream', abrupt: false } });
    expect(frame.toString('hex')).toBe('060000000700000035de0003a4636f6465ae756e6b6e6f776e2d73747265616da6726561736f6eae756e6b6e6f776e2073747265616da6616272757074c2');
    const packr = new Packr({ useRecords: false });
    expect(decodeControlBody(FrameType.CLOSE, 7, packr.pack({ reason: 'bye', abrupt: true })).body).toEqual({ reason: 'bye', abrupt: true });
    let caught: unknown;
    try {
      decodeControlBody(FrameType.CLOSE, 7, packr.pack({ code: 3, reason: 'bye', abrupt: true }));
    } catch (err) {
      caught = err;
    }
    expect(isEdgemuxError(caught, 'E_FRAME_MALFORMED')).toBe(true);
  });
});
