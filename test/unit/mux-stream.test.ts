import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type EdgemuxErrorCode, isEdgemuxError } from '../../shared/errors.js';
import { MuxStream, type StreamCarrier, type StreamSink } from '../../shared/mux-stream.js';

/** An in-memory carrier that records what the stream asks of its tunnel. */
class RecordingCarrier implements StreamCarrier {
  congested = false;
  peerMaxFramePayload = 1024 * 1024;
  readonly data: Array<{ streamId: number; payload: Buffer }> = [];
  readonly acks: Array<{ streamId: number; consumed: number }> = [];
  readonly drainWaiters: MuxStream[] = [];
  readonly ackRequests: MuxStream[] = [];

  sendData(streamId: number, payload: Buffer): Buffer {
    const copy = Buffer.from(payload);
    this.data.push({ streamId, payload: copy });
    return copy;
  }

  sendAck(streamId: number, consumed: number): void {
    this.acks.push({ streamId, consumed });
  }

  waitForDrain(stream: MuxStream): void {
    this.drainWaiters.push(stream);
  }

  scheduleAck(stream: MuxStream): void {
    this.ackRequests.push(stream);
  }

  /** What a real tunnel does once its socket drains. */
  drain(): void {
    this.congested = false;
    for (const stream of this.drainWaiters.splice(0)) stream.resumeWriting();
  }

  /** What a real tunnel does when its quiet-ACK timer fires. */
  flushScheduledAcks(): void {
    for (const stream of this.ackRequests.splice(0)) stream.flushAck();
  }
}

class RecordingSink implements StreamSink {
  readonly received: Buffer[] = [];
  writableCalls = 0;

  data(payload: Buffer): void {
    this.received.push(Buffer.from(payload));
  }

  writable(): void {
    this.writableCalls++;
  }
}

const WINDOW = 1000;
const MAX_FRAME = 300;

function makeStream(window = WINDOW, maxFrame = MAX_FRAME): { stream: MuxStream; carrier: RecordingCarrier; sink: RecordingSink } {
  const carrier = new RecordingCarrier();
  const sink = new RecordingSink();
  const stream = new MuxStream(7, carrier, sink, window, window, maxFrame);
  return { stream, carrier, sink };
}

function errorCodeOf(fn: () => unknown): EdgemuxErrorCode | 'no error' | 'not an EdgemuxError' {
  try {
    fn();
  } catch (err) {
    return isEdgemuxError(err) ? err.code : 'not an EdgemuxError';
  }
  return 'no error';
}

describe('MuxStream: sending within the peer window', () => {
  it('returns false once inFlight reaches the peer window, and sends the frame anyway', () => {
    const { stream, carrier, sink } = makeStream();
    expect(stream.write(Buffer.alloc(400))).toBe(true);
    expect(stream.write(Buffer.alloc(599))).toBe(true);
    expect(stream.inFlight).toBe(999);
    expect(stream.canWrite).toBe(true);
    expect(stream.write(Buffer.alloc(1))).toBe(false);
    expect(stream.inFlight).toBe(WINDOW);
    expect(stream.canWrite).toBe(false);
    expect(carrier.data.map((d) => d.payload.length)).toEqual([400, 599, 1]);
    expect(carrier.data.every((d) => d.streamId === 7)).toBe(true);
    expect(sink.writableCalls).toBe(0);
    // Waiting for credit is not waiting for the socket.
    expect(carrier.drainWaiters).toEqual([]);
  });

  it('lets one frame overshoot the window: the check is made before the frame, not after', () => {
    const { stream, carrier } = makeStream();
    expect(stream.write(Buffer.alloc(999))).toBe(true);
    expect(stream.write(Buffer.alloc(MAX_FRAME))).toBe(false);
    expect(stream.inFlight).toBe(999 + MAX_FRAME);
    expect(carrier.data.length).toBe(2);
  });

  it('an ACK that brings inFlight under the window calls sink.writable() once', () => {
    const { stream, sink } = makeStream();
    for (const size of [100, 100, 400]) expect(stream.write(Buffer.alloc(size))).toBe(true);
    expect(stream.write(Buffer.alloc(600))).toBe(false);
    expect(stream.canWrite).toBe(false);
    stream.onAck(100); // inFlight 1100: still no credit
    expect(sink.writableCalls).toBe(0);
    stream.onAck(200); // inFlight 1000: still none, the window is full
    expect(sink.writableCalls).toBe(0);
    stream.onAck(600); // inFlight 600
    expect(sink.writableCalls).toBe(1);
    expect(stream.canWrite).toBe(true);
    stream.onAck(1200);
    expect(sink.writableCalls).toBe(1);
    expect(stream.inFlight).toBe(0);
  });

  it('waits for the carrier to drain when credit returns while the carrier is congested', () => {
    const { stream, carrier, sink } = makeStream();
    stream.write(Buffer.alloc(WINDOW));
    carrier.congested = true;
    stream.onAck(WINDOW);
    expect(sink.writableCalls).toBe(0);
    expect(carrier.drainWaiters).toEqual([stream]);
    carrier.drain();
    expect(sink.writableCalls).toBe(1);
  });

  it('returns false on a congested carrier with credit left, and resumes on drain', () => {
    const { stream, carrier, sink } = makeStream();
    carrier.congested = true;
    expect(stream.write(Buffer.alloc(10))).toBe(false);
    expect(carrier.drainWaiters).toEqual([stream]);
    carrier.drain();
    expect(sink.writableCalls).toBe(1);
  });

  it('after a drain, keeps waiting for credit if the window is still full', () => {
    const { stream, carrier, sink } = makeStream();
    stream.write(Buffer.alloc(WINDOW));
    carrier.congested = true;
    stream.write(Buffer.alloc(10)); // waiting for credit
    carrier.waitForDrain(stream); // and for the socket (as the tunnel would record)
    carrier.drain();
    expect(sink.writableCalls).toBe(0);
    stream.onAck(WINDOW + 10);
    expect(sink.writableCalls).toBe(1);
  });

  it('a closed stream sends nothing and reports that it cannot write', () => {
    const { stream, carrier } = makeStream();
    stream.close();
    expect(stream.write(Buffer.alloc(10))).toBe(false);
    expect(carrier.data).toEqual([]);
  });
});

describe('MuxStream: acknowledging what the sink consumed', () => {
  it('sends an ACK once a quarter window has been consumed, with the cumulative offset', () => {
    const { stream, carrier } = makeStream();
    stream.onData(Buffer.alloc(600));
    stream.consume(100);
    stream.consume(149);
    expect(carrier.acks).toEqual([]);
    stream.consume(1); // 250 = WINDOW / 4
    expect(carrier.acks).toEqual([{ streamId: 7, consumed: 250 }]);
    stream.consume(249);
    expect(carrier.acks.length).toBe(1);
    stream.consume(1);
    expect(carrier.acks).toEqual([
      { streamId: 7, consumed: 250 },
      { streamId: 7, consumed: 500 },
    ]);
  });

  it('below a quarter window asks the carrier once for a quiet-stream ACK, which carries the total', () => {
    const { stream, carrier } = makeStream();
    stream.onData(Buffer.alloc(100));
    stream.consume(40);
    stream.consume(60);
    expect(carrier.acks).toEqual([]);
    expect(carrier.ackRequests).toEqual([stream]);
    carrier.flushScheduledAcks();
    expect(carrier.acks).toEqual([{ streamId: 7, consumed: 100 }]);
    // Nothing new consumed: a flush sends nothing.
    stream.flushAck();
    expect(carrier.acks.length).toBe(1);
  });

  it('does not acknowledge bytes the sink holds back', () => {
    const { stream, carrier } = makeStream();
    stream.onData(Buffer.alloc(WINDOW));
    carrier.flushScheduledAcks();
    expect(carrier.acks).toEqual([]);
    expect(carrier.ackRequests).toEqual([]);
  });

  it('sends no ACK once closed', () => {
    const { stream, carrier } = makeStream();
    stream.onData(Buffer.alloc(500));
    stream.close();
    stream.consume(500);
    stream.flushAck();
    expect(carrier.acks).toEqual([]);
  });
});

describe('MuxStream: a peer breaking the protocol', () => {
  it('accepts up to window + maxFramePayload unacknowledged bytes and refuses one more', () => {
    const { stream, sink } = makeStream();
    stream.onData(Buffer.alloc(WINDOW - 1));
    stream.onData(Buffer.alloc(MAX_FRAME + 1)); // exactly WINDOW + MAX_FRAME
    expect(sink.received.length).toBe(2);
    expect(errorCodeOf(() => stream.onData(Buffer.alloc(1)))).toBe('E_STREAM_PROTOCOL');
    expect(sink.received.length).toBe(2);
  });

  it('measures the overrun from the last ACK sent, not from what was received', () => {
    const { stream, carrier } = makeStream();
    stream.onData(Buffer.alloc(WINDOW + MAX_FRAME));
    stream.consume(WINDOW); // ACK 1000 goes out
    expect(carrier.acks.at(-1)).toEqual({ streamId: 7, consumed: WINDOW });
    stream.onData(Buffer.alloc(WINDOW)); // unacknowledged: 300 + 1000 = window + max frame
    expect(errorCodeOf(() => stream.onData(Buffer.alloc(1)))).toBe('E_STREAM_PROTOCOL');
  });

  it('consumed-but-unacknowledged bytes still count against the peer', () => {
    const { stream } = makeStream();
    stream.onData(Buffer.alloc(WINDOW + MAX_FRAME));
    stream.consume(100); // below a quarter window: no ACK yet, so the peer has no new credit
    expect(errorCodeOf(() => stream.onData(Buffer.alloc(1)))).toBe('E_STREAM_PROTOCOL');
  });

  it('refuses an ACK beyond what was sent', () => {
    const { stream } = makeStream();
    stream.write(Buffer.alloc(100));
    expect(errorCodeOf(() => stream.onAck(101))).toBe('E_STREAM_PROTOCOL');
    expect(errorCodeOf(() => makeStream().stream.onAck(1))).toBe('E_STREAM_PROTOCOL');
  });

  it('refuses an ACK that goes backwards, and accepts a repeated one', () => {
    const { stream } = makeStream();
    stream.write(Buffer.alloc(60));
    stream.write(Buffer.alloc(40));
    stream.onAck(60);
    expect(errorCodeOf(() => stream.onAck(60))).toBe('no error');
    expect(errorCodeOf(() => stream.onAck(59))).toBe('E_STREAM_PROTOCOL');
    expect(errorCodeOf(() => stream.onAck(100))).toBe('no error');
  });

  it('accepts every ACK at a payload boundary inside [peerConsumed, sent] and refuses every one outside', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 300 }), { maxLength: 20 }),
        fc.nat(),
        fc.nat(),
        fc.integer({ min: -10, max: 7000 }),
        (sizes, firstPick, secondPick, outside) => {
          const { stream } = makeStream(1 << 20);
          const boundaries = [0];
          for (const size of sizes) {
            stream.write(Buffer.alloc(size));
            boundaries.push(boundaries[boundaries.length - 1] + size);
          }
          const sent = boundaries[boundaries.length - 1];
          const first = boundaries[firstPick % boundaries.length];
          stream.onAck(first);
          const later = boundaries.filter((b) => b >= first);
          expect(errorCodeOf(() => stream.onAck(later[secondPick % later.length]))).toBe('no error');
          const peerConsumed = later[secondPick % later.length];
          if (outside < peerConsumed || outside > sent) {
            expect(errorCodeOf(() => stream.onAck(outside))).toBe('E_STREAM_PROTOCOL');
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  // docs/protocol.md, "The ACK rule": receivers acknowledge whole DATA payloads in the
  // order they arrived, so an ACK always ends on a payload boundary; the sender's
  // replay buffer relies on it and treats anything else as a protocol error.
  it('refuses an in-range ACK that falls inside a DATA payload', () => {
    const { stream } = makeStream();
    stream.write(Buffer.alloc(100));
    stream.write(Buffer.alloc(30));
    expect(errorCodeOf(() => stream.onAck(30))).toBe('E_STREAM_PROTOCOL');
    expect(errorCodeOf(() => stream.onAck(100))).toBe('no error');
  });
});

describe('MuxStream: two ends over an in-memory link', () => {
  /**
   * A sender that honours write()'s answer and a receiver that consumes whole
   * payloads at random moments, with DATA and ACK delivered in order but at random times.
   * The receiver must never see an overrun, every byte must arrive in order,
   * and the sender must never stay paused once the receiver has caught up.
   */
  it('keeps the sender within the window and delivers every byte in order', () => {
    const step = fc.constantFrom('write', 'deliver-data', 'consume', 'deliver-ack', 'quiet-ack');
    fc.assert(
      fc.property(
        fc.integer({ min: 4, max: 2000 }),
        fc.integer({ min: 1, max: 400 }),
        fc.array(fc.integer({ min: 1, max: 400 }), { minLength: 1, maxLength: 60 }),
        fc.array(step, { maxLength: 300 }),
        fc.array(fc.nat({ max: 7 }), { minLength: 1, maxLength: 20 }),
        (window, maxFrame, sizes, steps, consumeAmounts) => {
          const payloads = sizes.map((size, i) => Buffer.alloc(Math.min(size, maxFrame), i & 0xff));
          const senderCarrier = new RecordingCarrier();
          const receiverCarrier = new RecordingCarrier();
          let paused = false;
          const senderSink: StreamSink = {
            data: () => expect.fail('the receiver sends no data'),
            writable: () => {
              paused = false;
            },
          };
          const delivered: Buffer[] = [];
          // Sizes of delivered payloads the receiver's sink has not passed on yet, oldest first.
          const unconsumed: number[] = [];
          const receiverSink: StreamSink = {
            data: (payload) => {
              delivered.push(Buffer.from(payload));
              unconsumed.push(payload.length);
            },
            writable: () => {},
          };
          const sender = new MuxStream(1, senderCarrier, senderSink, window, window, maxFrame);
          const receiver = new MuxStream(1, receiverCarrier, receiverSink, window, window, maxFrame);
          let next = 0;
          let dataCursor = 0;
          let ackCursor = 0;
          let consumeTurn = 0;

          const actions = {
            write: (): void => {
              while (!paused && next < payloads.length) {
                if (!sender.write(payloads[next++])) paused = true;
                expect(sender.inFlight).toBeLessThanOrEqual(window - 1 + maxFrame);
              }
            },
            'deliver-data': (): void => {
              if (dataCursor < senderCarrier.data.length) receiver.onData(senderCarrier.data[dataCursor++].payload);
            },
            consume: (): void => {
              // Whole payloads, in order, as the device socket and broker link pass them on.
              const count = consumeAmounts[consumeTurn++ % consumeAmounts.length] % 4;
              let bytes = 0;
              for (const size of unconsumed.splice(0, count)) bytes += size;
              receiver.consume(bytes);
            },
            'deliver-ack': (): void => {
              if (ackCursor < receiverCarrier.acks.length) sender.onAck(receiverCarrier.acks[ackCursor++].consumed);
            },
            'quiet-ack': (): void => receiverCarrier.flushScheduledAcks(),
          };

          for (const s of steps) actions[s]();
          // Then let everything settle, as the tunnels would.
          for (let round = 0; round < 10_000; round++) {
            actions.write();
            while (dataCursor < senderCarrier.data.length) actions['deliver-data']();
            receiver.consume(unconsumed.splice(0).reduce((sum, size) => sum + size, 0));
            receiverCarrier.flushScheduledAcks();
            while (ackCursor < receiverCarrier.acks.length) actions['deliver-ack']();
            if (next === payloads.length && !paused) break;
            if (next === payloads.length && sender.inFlight === 0) break;
          }
          expect(next).toBe(payloads.length);
          expect(sender.inFlight).toBe(0);
          expect(Buffer.concat(delivered).equals(Buffer.concat(payloads))).toBe(true);
        },
      ),
      { numRuns: 200 },
    );
  });
});
