import { describe, expect, it } from 'vitest';
import type { EndCode } from '../../shared/end-reasons.js';
import { isEdgemuxError } from '../../shared/errors.js';
import {
  type CloseIntent,
  graceExpired,
  nextStreamState,
  type StreamEffect,
  type StreamEvent,
  type StreamPhase,
  type StreamRole,
  type StreamState,
} from '../../shared/stream-lifecycle.js';

/** The CLOSE each side sends when its own end finishes: the device at the agent, the broker at the hub. */
const LOCAL: Record<StreamRole, CloseIntent> = {
  agent: { code: 'device-lost', reason: 'device closed the connection', abrupt: true },
  hub: { code: 'broker-closed', reason: 'broker closed the session', abrupt: false },
};
/** The code of the peer's CLOSE as each side receives it. */
const PEER: Record<StreamRole, EndCode> = { agent: 'broker-closed', hub: 'device-lost' };
const REFUSED: CloseIntent = { code: 'refused', reason: 'client ID outside the namespace', abrupt: false };
const DETACHED_AT = 500;
const LOST_AT = 1000;

function sample(role: StreamRole, phase: StreamPhase): StreamState {
  const close = LOCAL[role];
  switch (phase) {
    case 'attached':
      return { phase, resumes: 1 };
    case 'detached':
      return { phase, resumes: 1, detachedAt: DETACHED_AT };
    case 'resuming':
      return { phase, resumes: 2, detachedAt: DETACHED_AT };
    case 'closing':
      return { phase, resumes: 1, close };
    case 'closing-detached':
      return { phase, resumes: 1, detachedAt: DETACHED_AT, close };
    case 'closing-resuming':
      return { phase, resumes: 2, detachedAt: DETACHED_AT, close };
    case 'forgotten':
      return { phase };
  }
}

type EventName = 'tunnel-lost' | 'resume-sent' | 'resume-received' | 'stale-resume-received' | 'accept-received' | 'resume-failed' | 'close-received' | 'local-end' | 'refused' | 'grace-expired' | 'abandon';

function event(role: StreamRole, name: EventName): StreamEvent {
  switch (name) {
    case 'tunnel-lost':
      return { type: name, at: LOST_AT };
    case 'resume-received':
      return { type: name, attempt: 3 };
    case 'stale-resume-received':
      // The samples honoured attempt 1 last.
      return { type: 'resume-received', attempt: 1 };
    case 'close-received':
      return { type: name, code: PEER[role] };
    case 'local-end':
      return { type: name, close: LOCAL[role] };
    case 'refused':
      return { type: name, close: REFUSED };
    case 'abandon':
      return { type: name, code: 'peer-departed' };
    default:
      return { type: name };
  }
}

/** Effects in a compact form: `send-close:code`, `end-local!` when it drops the connection. */
function show(effect: StreamEffect): string {
  switch (effect.type) {
    case 'send-close':
      return `send-close:${effect.close.code}`;
    case 'send-resume':
      return `send-resume:${effect.attempt}`;
    case 'end-local':
      return `end-local${effect.drop ? '!' : ''}:${effect.code}`;
    case 'forget':
      return `forget:${effect.code}`;
    default:
      return effect.type;
  }
}

type Row = [phase: StreamPhase, event: EventName, next: StreamPhase, effects: string[]];

/** Every transition the spec allows the agent; anything else is an error. */
const AGENT: Row[] = [
  // 11.4: a lost tunnel detaches; 5.3 rule 1: a closing stream too. 11.5 rule 2: a RESUME lost with its tunnel is sent again.
  ['attached', 'tunnel-lost', 'detached', ['detach']],
  ['closing', 'tunnel-lost', 'closing-detached', ['detach']],
  ['resuming', 'tunnel-lost', 'detached', []],
  ['closing-resuming', 'tunnel-lost', 'closing-detached', []],
  // 11.5 rules 1 and 3: closing streams resume too; attempts count on.
  ['detached', 'resume-sent', 'resuming', ['send-resume:2']],
  ['closing-detached', 'resume-sent', 'closing-resuming', ['send-resume:2']],
  // 5.2: ACCEPT answering OPEN. 11.7: ACCEPT answering RESUME; step 5: the owed CLOSE follows the replay.
  ['attached', 'accept-received', 'attached', ['set-window']],
  ['closing', 'accept-received', 'closing', ['set-window']],
  ['resuming', 'accept-received', 'attached', ['attach']],
  ['closing-resuming', 'accept-received', 'closing', ['attach', 'send-close:device-lost']],
  ['forgotten', 'accept-received', 'forgotten', ['send-close:not-held']],
  // 11.8: the agent ends the stream alone.
  ['resuming', 'resume-failed', 'forgotten', ['send-close:resume-failed', 'end-local:resume-failed', 'forget:resume-failed']],
  ['closing-resuming', 'resume-failed', 'forgotten', ['send-close:resume-failed', 'forget:resume-failed']],
  // 5.3 rules 2, 3, 5; 11.7: the hub's refusal of a RESUME is answered like any CLOSE.
  ['attached', 'close-received', 'forgotten', ['send-close:closed', 'end-local:broker-closed', 'forget:broker-closed']],
  ['resuming', 'close-received', 'forgotten', ['send-close:closed', 'end-local:broker-closed', 'forget:broker-closed']],
  ['closing', 'close-received', 'forgotten', ['forget:device-lost']],
  ['closing-resuming', 'close-received', 'forgotten', ['forget:device-lost']],
  ['forgotten', 'close-received', 'forgotten', []],
  // 5.3: the device ended; 11.11 and 11.5 rule 4: owed while detached.
  ['attached', 'local-end', 'closing', ['send-close:device-lost']],
  ['detached', 'local-end', 'closing-detached', []],
  ['resuming', 'local-end', 'closing-resuming', []],
  ['forgotten', 'local-end', 'forgotten', []],
  // 11.10: a CLOSE follows an outstanding RESUME; 11.11: an owed CLOSE is never sent.
  ['detached', 'grace-expired', 'forgotten', ['end-local:grace-expired', 'forget:grace-expired']],
  ['resuming', 'grace-expired', 'forgotten', ['send-close:grace-expired', 'end-local:grace-expired', 'forget:grace-expired']],
  ['closing-detached', 'grace-expired', 'forgotten', ['forget:grace-expired']],
  ['closing-resuming', 'grace-expired', 'forgotten', ['send-close:grace-expired', 'forget:grace-expired']],
  // 10.1: the hub said goodbye: forgotten without CLOSE, the device closed unless it already went.
  ['attached', 'abandon', 'forgotten', ['end-local:peer-departed', 'forget:peer-departed']],
  ['detached', 'abandon', 'forgotten', ['end-local:peer-departed', 'forget:peer-departed']],
  ['resuming', 'abandon', 'forgotten', ['end-local:peer-departed', 'forget:peer-departed']],
  ['closing', 'abandon', 'forgotten', ['forget:peer-departed']],
  ['closing-detached', 'abandon', 'forgotten', ['forget:peer-departed']],
  ['closing-resuming', 'abandon', 'forgotten', ['forget:peer-departed']],
];

/** Every transition the spec allows the hub, which never has a RESUME outstanding. */
const HUB: Row[] = [
  ['attached', 'tunnel-lost', 'detached', ['detach']],
  ['closing', 'tunnel-lost', 'closing-detached', ['detach']],
  // 11.6: acceptance (step 1 leaves a tunnel the hub still believed in; step 7 sends the owed CLOSE again).
  ['attached', 'resume-received', 'attached', ['detach', 'send-accept', 'attach']],
  ['detached', 'resume-received', 'attached', ['send-accept', 'attach']],
  ['closing', 'resume-received', 'closing', ['detach', 'send-accept', 'attach', 'send-close:broker-closed']],
  ['closing-detached', 'resume-received', 'closing', ['send-accept', 'attach', 'send-close:broker-closed']],
  // 11.6: a stale RESUME changes nothing; refusal of a stream not held.
  ['attached', 'stale-resume-received', 'attached', []],
  ['detached', 'stale-resume-received', 'detached', []],
  ['closing', 'stale-resume-received', 'closing', []],
  ['closing-detached', 'stale-resume-received', 'closing-detached', []],
  ['forgotten', 'resume-received', 'forgotten', ['send-close:unknown-stream']],
  ['forgotten', 'stale-resume-received', 'forgotten', ['send-close:unknown-stream']],
  // 5.3 rules 2, 3 and 5.
  ['attached', 'close-received', 'forgotten', ['send-close:closed', 'end-local:device-lost', 'forget:device-lost']],
  ['closing', 'close-received', 'forgotten', ['forget:broker-closed']],
  ['forgotten', 'close-received', 'forgotten', ['send-close:unknown-stream']],
  // 5.3 and 11.12: the broker ended the session.
  ['attached', 'local-end', 'closing', ['send-close:broker-closed']],
  ['detached', 'local-end', 'closing-detached', []],
  ['forgotten', 'local-end', 'forgotten', []],
  // 5.2 and 5.3 rule 7: refused on the CONNECT, nothing kept.
  ['attached', 'refused', 'forgotten', ['send-close:refused', 'end-local!:refused', 'forget:refused']],
  // 11.10.
  ['detached', 'grace-expired', 'forgotten', ['end-local:grace-expired', 'forget:grace-expired']],
  ['closing-detached', 'grace-expired', 'forgotten', ['forget:grace-expired']],
  // 10.1 and 11.9: the agent said goodbye or restarted, or the hub stops.
  ['attached', 'abandon', 'forgotten', ['end-local:peer-departed', 'forget:peer-departed']],
  ['detached', 'abandon', 'forgotten', ['end-local:peer-departed', 'forget:peer-departed']],
  ['closing', 'abandon', 'forgotten', ['forget:peer-departed']],
  ['closing-detached', 'abandon', 'forgotten', ['forget:peer-departed']],
];

const PHASES: Record<StreamRole, StreamPhase[]> = {
  agent: ['attached', 'detached', 'resuming', 'closing', 'closing-detached', 'closing-resuming', 'forgotten'],
  hub: ['attached', 'detached', 'closing', 'closing-detached', 'forgotten'],
};
const EVENTS: EventName[] = [
  'tunnel-lost',
  'resume-sent',
  'resume-received',
  'stale-resume-received',
  'accept-received',
  'resume-failed',
  'close-received',
  'local-end',
  'refused',
  'grace-expired',
  'abandon',
];

describe.each([
  ['agent', AGENT],
  ['hub', HUB],
] as const)('%s stream lifecycle', (role, rows) => {
  it.each(rows)('%s + %s → %s %j', (phase, name, next, effects) => {
    const result = nextStreamState(role, sample(role, phase), event(role, name));
    expect(result.state.phase).toBe(next);
    expect(result.effects.map(show)).toEqual(effects);
  });

  it('refuses every other event as an illegal transition', () => {
    const allowed = new Set(rows.map(([phase, name]) => `${phase} ${name}`));
    let illegal = 0;
    for (const phase of PHASES[role]) {
      for (const name of EVENTS) {
        if (allowed.has(`${phase} ${name}`)) continue;
        illegal++;
        let caught: unknown;
        try {
          nextStreamState(role, sample(role, phase), event(role, name));
        } catch (err) {
          caught = err;
        }
        expect(isEdgemuxError(caught, 'E_STREAM_LIFECYCLE'), `${phase} + ${name}`).toBe(true);
      }
    }
    expect(illegal).toBeGreaterThan(0);
  });
});

describe('stream lifecycle details', () => {
  it('keeps the first detachment as the agent’s grace start when a RESUME is lost (11.10)', () => {
    const detached = nextStreamState('agent', { phase: 'attached', resumes: 0 }, { type: 'tunnel-lost', at: 100 }).state;
    const resuming = nextStreamState('agent', detached, { type: 'resume-sent' }).state;
    const again = nextStreamState('agent', resuming, { type: 'tunnel-lost', at: 900 }).state;
    expect(again).toEqual({ phase: 'detached', resumes: 1, detachedAt: 100 });
    expect(graceExpired(again, 1100, 1000)).toBe(false);
    expect(graceExpired(again, 1101, 1000)).toBe(true);
  });

  it('counts the hub’s grace from the latest detachment (11.10)', () => {
    let state: StreamState = { phase: 'attached', resumes: 0 };
    state = nextStreamState('hub', state, { type: 'tunnel-lost', at: 100 }).state;
    state = nextStreamState('hub', state, { type: 'resume-received', attempt: 1 }).state;
    state = nextStreamState('hub', state, { type: 'tunnel-lost', at: 900 }).state;
    expect(state).toEqual({ phase: 'detached', resumes: 1, detachedAt: 900 });
    expect(graceExpired(state, 1500, 1000)).toBe(false);
  });

  it('numbers RESUMEs 1, 2, 3 over the stream’s life, whether answered or lost (11.5 rule 3)', () => {
    const attempts: number[] = [];
    let state: StreamState = { phase: 'attached', resumes: 0 };
    const step = (e: StreamEvent): void => {
      const result = nextStreamState('agent', state, e);
      for (const effect of result.effects) if (effect.type === 'send-resume') attempts.push(effect.attempt);
      state = result.state;
    };
    step({ type: 'tunnel-lost', at: 1 });
    step({ type: 'resume-sent' });
    step({ type: 'tunnel-lost', at: 2 });
    step({ type: 'resume-sent' });
    step({ type: 'accept-received' });
    step({ type: 'tunnel-lost', at: 3 });
    step({ type: 'resume-sent' });
    expect(attempts).toEqual([1, 2, 3]);
  });

  it('carries the CLOSE owed while detached to the ACCEPT that ends the detachment (11.11, 11.12)', () => {
    const owed: CloseIntent = { code: 'device-disconnected', reason: 'device sent DISCONNECT', abrupt: false };
    let state = nextStreamState('agent', { phase: 'detached', resumes: 0, detachedAt: 0 }, { type: 'local-end', close: owed }).state;
    state = nextStreamState('agent', state, { type: 'resume-sent' }).state;
    const accepted = nextStreamState('agent', state, { type: 'accept-received' });
    expect(accepted.effects).toEqual([{ type: 'attach' }, { type: 'send-close', close: owed }]);
  });

  it('is not fooled into attaching by a stale RESUME on a forgotten stream: it refuses', () => {
    const result = nextStreamState('hub', { phase: 'forgotten' }, { type: 'resume-received', attempt: 0 });
    expect(result.effects.map(show)).toEqual(['send-close:unknown-stream']);
  });
});
