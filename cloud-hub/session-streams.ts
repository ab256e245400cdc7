import type { Clock } from '../shared/clock.js';
import { type EndCode, EndCounts, receivedEndCode } from '../shared/end-reasons.js';
import { EdgemuxError } from '../shared/errors.js';
import { type CloseBody, FrameType, type OpenBody, type ResumeBody } from '../shared/frame-codec.js';
import type { Logger } from '../shared/logger.js';
import { MuxStream } from '../shared/mux-stream.js';
import { type CloseIntent, graceExpired, honoursResume, isDetached, OPENED, type StreamEvent } from '../shared/stream-lifecycle.js';
import type { StreamTable } from '../shared/stream-table.js';
import type { Tunnel } from '../shared/tunnel.js';
import { DeviceSession, type SessionEntry } from './device-session.js';
import type { HubCounters, RefusalReason } from './hub-counters.js';

/** The streams of one agent instance: ids are scoped to it, whichever of its tunnels carries them (docs/protocol.md 5.1). */
export interface AgentStreams {
  readonly agentId: string;
  readonly streams: StreamTable<SessionEntry>;
  /** The instance said GOODBYE: none of its streams will resume, each ends as its tunnel goes. */
  departed: boolean;
}

export interface SessionStreamsOptions<A extends AgentStreams> {
  streamWindow: number;
  maxPacketSize: number;
  maxQueuedBytes: number;
  resumeGraceMs: number;
  /** How long an attached stream may go without its CONNECT after OPEN. */
  connectTimeoutMs: number;
  /** Grace periods, CONNECT timeouts and broker keepalives count on it. */
  clock: Clock;
  /** Hub-wide totals the sessions add their traffic, drops and cut-offs to. */
  counters: HubCounters;
  log: Logger;
  /** A session was opened; its CONNECT is still to come. */
  opened(session: DeviceSession, agent: A): void;
  /** The stream's CONNECT arrived: refuse the session or connect it to a broker. */
  admit(session: DeviceSession, agent: A, open: OpenBody, connect: Buffer, log: Logger): void;
  /** The broker accepted the session's CONNECT: from here on it is a device the hub has carried. */
  admitted(session: DeviceSession): void;
  /** A session refused its device before any broker saw it; the hub counts and logs it. */
  refused(session: DeviceSession, reason: RefusalReason, detail: string): void;
  /** A RESUME named no session the hub holds. */
  resumeRefused(agent: A, streamId: number, clientId: string): void;
  /** A stream continued on another tunnel instead of ending. */
  resumed(session: DeviceSession): void;
  /** The stream is forgotten and its broker connection ended or ending. */
  closed(session: DeviceSession, agent: A): void;
}

/** An agent may ask for a large window, but the hub's replay memory per stream stays bounded. */
const MAX_STREAM_WINDOW = 16 * 1024 * 1024;

function capWindow(window: number): number {
  return Math.min(window, MAX_STREAM_WINDOW);
}

/** What an effect may need from the event that caused it. */
interface EventContext {
  resume?: ResumeBody;
  /** Detail for the log line of a session that ends. */
  reason?: string;
}

/**
 * The hub's streams: one session per OPEN, driven through the lifecycle
 * (RESUME, CLOSE, tunnel loss, grace, departures). The only place the hub
 * sends ACCEPT for a RESUME or CLOSE.
 */
export class SessionStreams<A extends AgentStreams> {
  /** Streams ended since start, by why. */
  readonly ends = new EndCounts();

  constructor(private readonly options: SessionStreamsOptions<A>) {}

  open(tunnel: Tunnel, agent: A, streamId: number, open: OpenBody, log: Logger): void {
    if (agent.streams.get(streamId) !== undefined || streamId % 2 === 0) {
      tunnel.close('protocol-error', `protocol violation: stream ${streamId} is in use or not an agent stream id`);
      return;
    }
    // Nothing is decided on OPEN: it is a label beside the CONNECT, and the
    // broker acts on the CONNECT. The session waits for it (`admit`).
    const session = new DeviceSession({
      clientId: open.clientId,
      agentId: agent.agentId,
      maxPacketSize: this.options.maxPacketSize,
      maxQueuedBytes: this.options.maxQueuedBytes,
      clock: this.options.clock,
      counters: this.options.counters,
      log,
      admit: (admitted, connect) => this.options.admit(admitted, agent, open, connect, log),
      onAdmitted: (admitted) => this.options.admitted(admitted),
      onRefused: (refused, reason, detail) => this.options.refused(refused, reason, detail),
      brokerEnded: (ended, close) => this.drive(agent, entry, entry.tunnel, { type: 'local-end', close }),
      refused: (refused, close) => this.drive(agent, entry, entry.tunnel, { type: 'refused', close }),
    });
    const stream = new MuxStream(streamId, tunnel, session, capWindow(open.window), this.options.streamWindow, this.options.maxPacketSize);
    const entry: SessionEntry = { id: streamId, stream, tunnel, state: OPENED };
    session.bind(entry);
    agent.streams.add(entry);
    this.options.opened(session, agent);
    tunnel.send({ type: FrameType.ACCEPT, streamId, body: { window: this.options.streamWindow, received: 0 } });
  }

  /** A RESUME names a stream of the agent instance, whichever tunnel it arrives on (5.1, 11.6). */
  resume(tunnel: Tunnel, agent: A, streamId: number, resume: ResumeBody, log: Logger): void {
    const entry = agent.streams.get(streamId);
    if (entry === undefined || entry.stream.sink.clientId !== resume.clientId) {
      this.options.resumeRefused(agent, streamId, resume.clientId);
      this.refuse(tunnel, agent, streamId, { type: 'resume-received', attempt: resume.attempt });
      return;
    }
    if (!honoursResume(entry.state, resume.attempt)) {
      log.debug({ streamId, attempt: resume.attempt }, 'stale RESUME ignored');
    } else if (!entry.stream.canResumeFrom(resume.received)) {
      throw new EdgemuxError('E_STREAM_PROTOCOL', `stream ${streamId}: RESUME reports ${resume.received} received, not an offset to replay from`);
    }
    this.drive(agent, entry, tunnel, { type: 'resume-received', attempt: resume.attempt }, { resume });
  }

  /** The hub takes a stream's CLOSE only from the tunnel it is attached to (5.3 rule 6). */
  closeReceived(tunnel: Tunnel, agent: A, streamId: number, close: CloseBody): void {
    const event: StreamEvent = { type: 'close-received', code: receivedEndCode(close.code) };
    const entry = agent.streams.get(streamId);
    if (entry === undefined) {
      // Answer, so an agent waiting to hear its CLOSE confirmed can let go.
      this.refuse(tunnel, agent, streamId, event);
      return;
    }
    if (agent.streams.attachedTo(tunnel, streamId) !== entry) return;
    this.drive(agent, entry, tunnel, event, { reason: close.reason });
  }

  /**
   * A tunnel of the agent closed: its streams wait for a RESUME, or, once the
   * agent said goodbye, end (its GOODBYE came behind this tunnel's last
   * frames, a DISCONNECT among them perhaps, so the broker has them all).
   */
  tunnelClosed(tunnel: Tunnel, agent: A): void {
    const now = this.options.clock.now();
    for (const entry of agent.streams.heldBy(tunnel)) {
      this.drive(agent, entry, tunnel, agent.departed ? { type: 'abandon', code: 'peer-departed' } : { type: 'tunnel-lost', at: now });
    }
  }

  /** The agent said goodbye: detached sessions end now; the attached ones end with their tunnels (10.1). */
  departed(agent: A, reason: string): void {
    agent.departed = true;
    for (const entry of agent.streams.values()) {
      if (isDetached(entry.state)) this.drive(agent, entry, null, { type: 'abandon', code: 'peer-departed' }, { reason });
    }
  }

  /** Every session of the agent instance ends as an abrupt disconnect, without CLOSE (11.9, 10.1). */
  endAll(agent: A, code: EndCode, reason: string): void {
    for (const entry of agent.streams.values()) this.drive(agent, entry, entry.tunnel, { type: 'abandon', code }, { reason });
  }

  /** Grace periods, CONNECT timeouts and broker keepalives of the agent's sessions. */
  sweep(agent: A, now: number): void {
    for (const entry of agent.streams.values()) {
      const session = entry.stream.sink;
      if (graceExpired(entry.state, now, this.options.resumeGraceMs)) {
        this.drive(agent, entry, null, { type: 'grace-expired' });
      } else if (session.awaitingConnect && entry.state.phase === 'attached' && now - session.openedAt > this.options.connectTimeoutMs) {
        // The agent sends the CONNECT right behind the OPEN; a stream without one only holds memory.
        session.refuse('connect-timeout', 'no CONNECT in time', null);
      } else {
        session.keepBrokerAlive(now);
      }
    }
  }

  /** The answer for a stream the hub does not hold. */
  private refuse(tunnel: Tunnel, agent: A, streamId: number, event: StreamEvent): void {
    for (const effect of agent.streams.stepForgotten(event)) {
      if (effect.type === 'send-close') this.sendClose(tunnel, streamId, effect.close);
    }
  }

  /** Runs one lifecycle event and carries out its effects, in order. */
  private drive(agent: A, entry: SessionEntry, tunnel: Tunnel | null, event: StreamEvent, context: EventContext = {}): void {
    const effects = agent.streams.step(entry, event, tunnel);
    const session = entry.stream.sink;
    for (const effect of effects) {
      switch (effect.type) {
        case 'send-close':
          if (tunnel !== null) this.sendClose(tunnel, entry.id, effect.close);
          break;
        case 'send-accept':
          tunnel!.send({ type: FrameType.ACCEPT, streamId: entry.id, body: { window: this.options.streamWindow, received: entry.stream.receivedOffset } });
          break;
        case 'detach':
          entry.stream.detach();
          break;
        case 'attach':
          entry.stream.attach(tunnel!, context.resume!.received, capWindow(context.resume!.window));
          this.options.resumed(session);
          this.options.log.debug({ streamId: entry.id, clientId: session.clientId }, 'stream resumed');
          break;
        case 'end-local':
          session.ended(effect.code, context.reason ?? effect.code);
          this.logEnd(agent, entry, effect.code, context.reason);
          if (effect.drop) session.dropBroker();
          else session.endBroker();
          break;
        case 'forget':
          session.ended(effect.code, context.reason ?? effect.code);
          this.ends.add(effect.code);
          entry.stream.close();
          session.released();
          this.options.closed(session, agent);
          break;
        case 'send-resume':
        case 'set-window':
          throw new EdgemuxError('E_STREAM_LIFECYCLE', `the hub never has a ${effect.type} to do`);
      }
    }
  }

  private sendClose(tunnel: Tunnel, streamId: number, close: CloseIntent): void {
    tunnel.send({ type: FrameType.CLOSE, streamId, body: { code: close.code, reason: close.reason, abrupt: close.abrupt } });
  }

  private logEnd(agent: A, entry: SessionEntry, code: EndCode, detail: string | undefined): void {
    const fields = { clientId: entry.stream.sink.clientId, agentId: agent.agentId, streamId: entry.id, reason: code, detail };
    // The hub's rate-limited 'device disconnected' line says it at info; a storm of ends must not write a line each.
    this.options.log.debug(fields, 'device session ending');
  }
}
