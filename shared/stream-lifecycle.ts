import type { EndCode } from './end-reasons.js';
import { EdgemuxError } from './errors.js';

/**
 * The life of one stream on one side, as docs/protocol.md defines it: OPEN
 * and ACCEPT (5.2), the close handshake (5.3) and resumption (11). Pure: it
 * takes a state and an event and returns the next state and what the side
 * must do, in order. Sockets, timers and devices stay with the caller.
 */

export type StreamRole = 'agent' | 'hub';

/** The CLOSE a side sends for its own reasons, or owes while its stream is detached. */
export interface CloseIntent {
  code: EndCode;
  /** Human-readable detail for the peer's logs. */
  reason: string;
  /** The MQTT connection ended without a DISCONNECT from the device (5.3). */
  abrupt: boolean;
}

/**
 * attached: on a tunnel, sending and receiving.
 * detached: its tunnel is gone (11.4); held for the grace period.
 * resuming (agent): detached, with a RESUME outstanding on a tunnel (11.5).
 * closing, closing-detached, closing-resuming: the same, after this side
 * sent (or, detached, owes) its CLOSE and before the peer's arrives (5.3).
 * forgotten: not held (5.3 rule 4); frames for it are answered as for a stream never opened.
 */
export type StreamPhase = 'attached' | 'detached' | 'resuming' | 'closing' | 'closing-detached' | 'closing-resuming' | 'forgotten';

/**
 * `resumes` counts RESUME attempts: at the agent the last one sent, at the
 * hub the last one honoured (11.5, 11.6); 0 from OPEN. `detachedAt` is
 * where the grace period counts from (11.10).
 */
export type StreamState =
  | { readonly phase: 'attached'; readonly resumes: number }
  | { readonly phase: 'detached' | 'resuming'; readonly resumes: number; readonly detachedAt: number }
  | { readonly phase: 'closing'; readonly resumes: number; readonly close: CloseIntent }
  | { readonly phase: 'closing-detached' | 'closing-resuming'; readonly resumes: number; readonly detachedAt: number; readonly close: CloseIntent }
  | { readonly phase: 'forgotten' };

export type StreamEvent =
  /** The tunnel holding the stream closed, or (hub) a RESUME moved the stream off it. */
  | { type: 'tunnel-lost'; at: number }
  /** Agent: a ready tunnel takes the stream's RESUME. */
  | { type: 'resume-sent' }
  /** Hub: a RESUME for the stream, with its `attempt`; on a stream not held, the refusal. */
  | { type: 'resume-received'; attempt: number }
  /** Agent: ACCEPT on a tunnel holding the stream; on one not holding it, the answer of 11.7. */
  | { type: 'accept-received' }
  /** Agent: the ACCEPT's `received` cannot be replayed from (11.8). */
  | { type: 'resume-failed' }
  /** The peer's CLOSE on a tunnel this side takes the stream's CLOSE from (5.3 rule 6), with the peer's code. */
  | { type: 'close-received'; code: EndCode }
  /** The local end finished: the device's connection (agent) or the broker's (hub). */
  | { type: 'local-end'; close: CloseIntent }
  /** Hub: the stream's CONNECT is refused or broke the rules; nothing is kept (5.3 rule 7). */
  | { type: 'refused'; close: CloseIntent }
  /** The grace period of a detached stream ran out (11.10). */
  | { type: 'grace-expired' }
  /** The peer or this process is going away (GOODBYE, an agent restart, a stop): the stream ends without CLOSE. */
  | { type: 'abandon'; code: EndCode };

export type StreamEffect =
  /** Send CLOSE on the tunnel of the event: the one holding the stream, or the one the frame came on. */
  | { type: 'send-close'; close: CloseIntent }
  | { type: 'send-resume'; attempt: number }
  | { type: 'send-accept' }
  /** The stream leaves its tunnel, keeping its writes for replay. */
  | { type: 'detach' }
  /** The stream continues on the event's tunnel, replaying what the peer lacks. */
  | { type: 'attach' }
  /** Agent: ACCEPT answering OPEN states the send window. */
  | { type: 'set-window' }
  /** End the device connection (agent) or the broker connection (hub); `drop` cuts it instead of letting it read what it has. */
  | { type: 'end-local'; code: EndCode; drop: boolean }
  /** Discard the stream and its replay buffer; `code` is why it ended. */
  | { type: 'forget'; code: EndCode };

export interface Transition {
  state: StreamState;
  effects: StreamEffect[];
}

export const OPENED: StreamState = { phase: 'attached', resumes: 0 };
export const FORGOTTEN: StreamState = { phase: 'forgotten' };

/** The answer that confirms a peer's CLOSE (5.3 rule 2). */
export const CLOSE_ANSWER: CloseIntent = { code: 'closed', reason: 'closed', abrupt: false };
/** The hub's answer for a stream it does not hold (5.3 rule 5, 11.6). */
export const UNKNOWN_STREAM: CloseIntent = { code: 'unknown-stream', reason: 'unknown stream', abrupt: false };
/** The agent's answer to an ACCEPT for a stream it does not hold on that tunnel (11.7). */
export const NOT_HELD: CloseIntent = { code: 'not-held', reason: 'stream no longer held by the agent', abrupt: true };
const RESUME_FAILED: CloseIntent = { code: 'resume-failed', reason: 'resume failed', abrupt: true };
const GRACE_EXPIRED: CloseIntent = { code: 'grace-expired', reason: 'resume grace period expired', abrupt: true };

export function isClosing(state: StreamState): boolean {
  return state.phase === 'closing' || state.phase === 'closing-detached' || state.phase === 'closing-resuming';
}

/** Attached to a tunnel: DATA and ACK flow (5.1). */
export function isAttached(state: StreamState): boolean {
  return state.phase === 'attached' || state.phase === 'closing';
}

/** Detached, with or without a RESUME outstanding: the grace period runs. */
export function isDetached(state: StreamState): boolean {
  return 'detachedAt' in state;
}

/** A RESUME is outstanding on some tunnel (agent). */
export function isResuming(state: StreamState): boolean {
  return state.phase === 'resuming' || state.phase === 'closing-resuming';
}

/** Hub: a RESUME with this `attempt` is neither for a stream not held nor stale (11.6), so it is honoured. */
export function honoursResume(state: StreamState, attempt: number): boolean {
  return state.phase !== 'forgotten' && attempt > state.resumes;
}

export function graceExpired(state: StreamState, now: number, graceMs: number): boolean {
  return 'detachedAt' in state && now - state.detachedAt > graceMs;
}

/**
 * The next state of a stream and the effects to carry out, in order. An
 * event the spec does not allow in the state is a bug of the caller, not
 * bad input: the caller filters peer frames by tunnel first (5.1), and
 * frames for a stream not held arrive here as the `forgotten` state.
 */
export function nextStreamState(role: StreamRole, state: StreamState, event: StreamEvent): Transition {
  const next = transition(role, state, event);
  if (next === null) {
    throw new EdgemuxError('E_STREAM_LIFECYCLE', `${role} stream: event ${event.type} is not allowed while ${state.phase}`);
  }
  return next;
}

function transition(role: StreamRole, state: StreamState, event: StreamEvent): Transition | null {
  const agent = role === 'agent';
  switch (event.type) {
    case 'tunnel-lost':
      if (state.phase === 'attached') return to({ phase: 'detached', resumes: state.resumes, detachedAt: event.at }, { type: 'detach' });
      if (state.phase === 'closing') return to({ phase: 'closing-detached', resumes: state.resumes, detachedAt: event.at, close: state.close }, { type: 'detach' });
      // A RESUME lost with its tunnel does not restart the grace period (11.10).
      if (state.phase === 'resuming') return to({ phase: 'detached', resumes: state.resumes, detachedAt: state.detachedAt });
      if (state.phase === 'closing-resuming') return to({ ...state, phase: 'closing-detached' });
      return null;

    case 'resume-sent': {
      if (!agent || (state.phase !== 'detached' && state.phase !== 'closing-detached')) return null;
      // Never reset nor repeated over the stream's life (11.5 rule 3).
      const attempt = state.resumes + 1;
      const send: StreamEffect = { type: 'send-resume', attempt };
      if ('close' in state) return to({ ...state, phase: 'closing-resuming', resumes: attempt }, send);
      return to({ ...state, phase: 'resuming', resumes: attempt }, send);
    }

    case 'resume-received': {
      if (agent) return null;
      if (state.phase === 'forgotten') return to(state, { type: 'send-close', close: UNKNOWN_STREAM });
      if (state.phase === 'resuming' || state.phase === 'closing-resuming') return null;
      // Sent before a RESUME already honoured, over a tunnel the agent has since left (11.6).
      if (!honoursResume(state, event.attempt)) return to(state);
      // Still attached elsewhere: the hub had not noticed that tunnel die (11.6 step 1).
      const leave: StreamEffect[] = isAttached(state) ? [{ type: 'detach' }] : [];
      const resume: StreamEffect[] = [...leave, { type: 'send-accept' }, { type: 'attach' }];
      if ('close' in state) return to({ phase: 'closing', resumes: event.attempt, close: state.close }, ...resume, { type: 'send-close', close: state.close });
      return to({ phase: 'attached', resumes: event.attempt }, ...resume);
    }

    case 'accept-received':
      if (!agent) return null;
      if (state.phase === 'forgotten') return to(state, { type: 'send-close', close: NOT_HELD });
      // An ACCEPT answering OPEN; the stream may already be closing when it arrives.
      if (state.phase === 'attached' || state.phase === 'closing') return to(state, { type: 'set-window' });
      if (state.phase === 'resuming') return to({ phase: 'attached', resumes: state.resumes }, { type: 'attach' });
      if (state.phase === 'closing-resuming') {
        return to({ phase: 'closing', resumes: state.resumes, close: state.close }, { type: 'attach' }, { type: 'send-close', close: state.close });
      }
      return null;

    case 'resume-failed':
      if (!agent) return null;
      if (state.phase === 'resuming') return forget('resume-failed', { type: 'send-close', close: RESUME_FAILED }, endLocal('resume-failed'));
      if (state.phase === 'closing-resuming') return forget('resume-failed', { type: 'send-close', close: RESUME_FAILED });
      return null;

    case 'close-received':
      if (state.phase === 'forgotten') {
        // The agent never answers a CLOSE for a stream it does not hold: that ends every exchange (5.3 rule 5).
        return agent ? to(state) : to(state, { type: 'send-close', close: UNKNOWN_STREAM });
      }
      // The peer's CLOSE confirms this side's own, or crossed it (5.3 rule 3).
      if (state.phase === 'closing' || (agent && state.phase === 'closing-resuming')) return forget(state.close.code);
      if (state.phase === 'attached' || (agent && state.phase === 'resuming')) {
        return forget(event.code, { type: 'send-close', close: CLOSE_ANSWER }, endLocal(event.code));
      }
      return null;

    case 'local-end':
      if (state.phase === 'forgotten') return to(state);
      if (state.phase === 'attached') return to({ phase: 'closing', resumes: state.resumes, close: event.close }, { type: 'send-close', close: event.close });
      // Owed: sent after the replay once the stream resumes (11.11, 11.12).
      if (state.phase === 'detached') return to({ ...state, phase: 'closing-detached', close: event.close });
      if (state.phase === 'resuming') return to({ ...state, phase: 'closing-resuming', close: event.close });
      return null;

    case 'refused':
      if (agent || state.phase !== 'attached') return null;
      return forget(event.close.code, { type: 'send-close', close: event.close }, endLocal(event.close.code, true));

    case 'grace-expired':
      if (state.phase === 'detached') return forget('grace-expired', endLocal('grace-expired'));
      if (state.phase === 'closing-detached') return forget('grace-expired');
      // The RESUME may yet be honoured: a CLOSE behind it ends the session there (11.10).
      if (state.phase === 'resuming') return forget('grace-expired', { type: 'send-close', close: GRACE_EXPIRED }, endLocal('grace-expired'));
      if (state.phase === 'closing-resuming') return forget('grace-expired', { type: 'send-close', close: GRACE_EXPIRED });
      return null;

    case 'abandon':
      if (state.phase === 'forgotten') return null;
      if (isClosing(state)) return forget(event.code);
      return forget(event.code, endLocal(event.code));
  }
}

function to(state: StreamState, ...effects: StreamEffect[]): Transition {
  return { state, effects };
}

function forget(code: EndCode, ...effects: StreamEffect[]): Transition {
  return { state: FORGOTTEN, effects: [...effects, { type: 'forget', code }] };
}

function endLocal(code: EndCode, drop = false): StreamEffect {
  return { type: 'end-local', code, drop };
}
