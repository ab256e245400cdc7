import type { MuxStream, StreamSink } from './mux-stream.js';
import {
  FORGOTTEN,
  isAttached,
  nextStreamState,
  type StreamEffect,
  type StreamEvent,
  type StreamRole,
  type StreamState,
} from './stream-lifecycle.js';
import type { Tunnel } from './tunnel.js';

/** One stream a side holds, and where. */
export interface StreamEntry<S extends StreamSink = StreamSink> {
  readonly id: number;
  readonly stream: MuxStream<S, Tunnel>;
  /** The tunnel holding the stream (5.1): attached to it, or with its RESUME outstanding there; null while detached. */
  tunnel: Tunnel | null;
  state: StreamState;
}

/**
 * The streams one side holds by id, with the tunnel holding each: the only
 * owner of that mapping. Tunnels find the stream a DATA or ACK is for
 * through `serve`, and every change of phase goes through `step`, which
 * applies the lifecycle and keeps the tunnel index in step with it.
 */
export class StreamTable<E extends StreamEntry> {
  private readonly entries = new Map<number, E>();
  private readonly byTunnel = new Map<Tunnel, Set<E>>();

  constructor(private readonly role: StreamRole) {}

  get size(): number {
    return this.entries.size;
  }

  get(id: number): E | undefined {
    return this.entries.get(id);
  }

  /** Deleting the entry being visited, as `step` does when a stream is forgotten, is safe. */
  values(): IterableIterator<E> {
    return this.entries.values();
  }

  /** The stream with this id if `tunnel` holds it: only such a tunnel's ACCEPT and CLOSE reach it at the agent. */
  heldOn(tunnel: Tunnel, id: number): E | undefined {
    const entry = this.entries.get(id);
    return entry !== undefined && entry.tunnel === tunnel ? entry : undefined;
  }

  /** The stream with this id if it is attached to `tunnel`: only there do its DATA, ACK and (hub) CLOSE count. */
  attachedTo(tunnel: Tunnel, id: number): E | undefined {
    const entry = this.entries.get(id);
    return entry !== undefined && entry.tunnel === tunnel && isAttached(entry.state) ? entry : undefined;
  }

  /** The streams `tunnel` holds, as a list that stays valid while they change. */
  heldBy(tunnel: Tunnel): E[] {
    const held = this.byTunnel.get(tunnel);
    return held === undefined ? [] : [...held];
  }

  heldCount(tunnel: Tunnel): number {
    return this.byTunnel.get(tunnel)?.size ?? 0;
  }

  /** A stream just opened on its tunnel. */
  add(entry: E): void {
    this.entries.set(entry.id, entry);
    this.index(entry);
  }

  /** Lets `tunnel` hand DATA and ACK to the streams attached to it, and to no other. */
  serve(tunnel: Tunnel): void {
    tunnel.routeStreams((id) => this.attachedTo(tunnel, id)?.stream);
  }

  /**
   * Moves the stream to the phase `event` leads to and returns what the
   * owner must do. `tunnel` is the tunnel of the event: the one a frame
   * came on or a RESUME goes out on; by default the one holding the stream.
   * A forgotten stream leaves the table at once.
   */
  step(entry: E, event: StreamEvent, tunnel: Tunnel | null = entry.tunnel): StreamEffect[] {
    const { state, effects } = nextStreamState(this.role, entry.state, event);
    entry.state = state;
    this.unindex(entry);
    if (state.phase === 'forgotten') {
      if (this.entries.get(entry.id) === entry) this.entries.delete(entry.id);
      entry.tunnel = null;
      return effects;
    }
    if (state.phase === 'detached' || state.phase === 'closing-detached') entry.tunnel = null;
    // Only an ACCEPTed resumption or a RESUME sent moves a stream onto the event's tunnel; a stale RESUME does not.
    else if (effects.some((effect) => effect.type === 'attach' || effect.type === 'send-resume')) entry.tunnel = tunnel;
    this.index(entry);
    return effects;
  }

  /** What to do about an event for a stream this side does not hold. */
  stepForgotten(event: StreamEvent): StreamEffect[] {
    return nextStreamState(this.role, FORGOTTEN, event).effects;
  }

  private index(entry: E): void {
    if (entry.tunnel === null) return;
    let held = this.byTunnel.get(entry.tunnel);
    if (held === undefined) {
      held = new Set();
      this.byTunnel.set(entry.tunnel, held);
    }
    held.add(entry);
  }

  private unindex(entry: E): void {
    if (entry.tunnel === null) return;
    const held = this.byTunnel.get(entry.tunnel);
    if (held === undefined) return;
    held.delete(entry);
    if (held.size === 0) this.byTunnel.delete(entry.tunnel);
  }
}
